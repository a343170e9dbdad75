"""One run at a time per run directory: the lock of `cosmosbi run`, its waiting, stale locks and shared holders."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cosmosbi.cli import main
from cosmosbi.files import read_json
from cosmosbi.lock import RunLocked, lock_holders, run_lock
from cosmosbi.pipeline import stage_status

HOLD = (
    "import sys, time; from cosmosbi.lock import run_lock\n"
    "with run_lock(sys.argv[1], shared=sys.argv[2] == 'shared'):\n"
    "    print('held', flush=True); time.sleep(float(sys.argv[3]))\n"
)


def hold(locks: Path, seconds: float, shared: bool = False) -> subprocess.Popen:
    """Another process holding ``locks`` for ``seconds`` (returns once it holds it)."""
    kind = "shared" if shared else "exclusive"
    command = [sys.executable, "-c", HOLD, str(locks), kind, str(seconds)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_held_directory_is_refused_naming_the_holder_or_waited_for(tmp_path):
    locks = tmp_path / "run" / "locks"
    holder = hold(locks, 3.0)
    with pytest.raises(RunLocked, match=rf"in use by pid {holder.pid} on host {socket.gethostname()} since .*--wait"):
        with run_lock(locks):
            pass
    started = time.time()
    with run_lock(locks, wait_s=60):  # waits for the holder to end
        assert time.time() - started > 1.0
        assert [h["pid"] for _, h in lock_holders(locks)] == [os.getpid()]
        with run_lock(locks):  # the same process may take it again (a command calling the planner)
            pass
        assert (locks / "run.json").is_file()
    assert lock_holders(locks) == []
    holder.wait(timeout=60)


def test_stale_locks_are_taken_over_and_live_ones_of_other_hosts_respected(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir()
    record = {"pid": dead_pid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00Z", "command": "run"}
    (locks / "run.json").write_text(json.dumps(record))
    with run_lock(locks):  # a dead process on this host
        assert read_json(locks / "run.json")["pid"] == os.getpid()
    other = {"pid": 1, "host": "elsewhere.example", "since": "2026-01-01T00:00:00Z", "command": "cosmosbi run"}
    (locks / "run.json").write_text(json.dumps(other))
    with pytest.raises(RunLocked, match="pid 1 on host elsewhere.example"):
        with run_lock(locks, stale_after_s=3600):
            pass
    old = time.time() - 7200
    os.utime(locks / "run.json", (old, old))  # not refreshed for two hours: taken to be dead
    with run_lock(locks, stale_after_s=3600):
        assert read_json(locks / "run.json")["host"] == socket.gethostname()


def test_chunks_share_the_directory_but_never_with_an_exclusive_holder(tmp_path):
    locks = tmp_path / "locks"
    chunk = hold(locks, 30.0, shared=True)
    try:
        with run_lock(locks, shared=True):  # another chunk of the job array
            assert len(lock_holders(locks)) == 2
        with pytest.raises(RunLocked, match=f"pid {chunk.pid}"):
            with run_lock(locks):
                pass
        assert [h["pid"] for _, h in lock_holders(locks)] == [chunk.pid]  # the refused one left nothing
    finally:
        chunk.kill()
        chunk.wait()
    exclusive = hold(locks, 30.0)
    try:
        with pytest.raises(RunLocked, match=f"pid {exclusive.pid}"):
            with run_lock(locks, shared=True):
                pass
    finally:
        exclusive.kill()
        exclusive.wait()


@pytest.mark.slow
def test_two_runs_on_one_directory_one_refuses_one_waits_and_the_result_is_one_run(tmp_path, capsys):
    config = {
        "run_dir": str(tmp_path / "run"),
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
        "prior": {"A": {"uniform": [0.5, 2.0]}, "B": {"uniform": [1.0, 3.0]}},
        "datasets": {"train": {"n": 1000, "seed": 1}, "test": {"n": 20, "seed": 2}},
        "batch_size": 50,
        "estimator": {"kind": "npe", "summary": "power_spectrum", "training": {"max_epochs": 3}, "n_samples": 50},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    first = subprocess.Popen(
        [sys.executable, "-m", "cosmosbi", "run", "-q", str(path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    locks = tmp_path / "run" / "locks"
    deadline = time.time() + 120
    while not lock_holders(locks) and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert main(["run", "-q", str(path)]) == 2
    assert f"in use by pid {first.pid}" in capsys.readouterr().err
    assert main(["run", "-q", "--wait", "600", str(path)]) == 0
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert "3 stage(s) run, 0 skipped" in out
    assert "0 stage(s) run, 3 skipped" in capsys.readouterr().out  # the second found everything done
    assert [r["state"] for r in stage_status(tmp_path / "run")] == ["done"] * 3
    train = read_json(tmp_path / "run" / "sims" / "train" / "manifest.json")
    assert len(train["runs"]) == 1 and train["counts"]["simulated"] == 1000
    assert lock_holders(locks) == []


def test_the_commands_that_write_take_the_lock(tmp_path, capsys):
    config = {
        "run_dir": str(tmp_path / "run"),
        "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
        "datasets": {"train": {"n": 10, "seed": 1}},
        "estimator": {"kind": "npe"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    locks = tmp_path / "run" / "locks"
    holder = hold(locks, 60.0)
    try:
        commands = (["simulate", "-q"], ["simulate", "-q", "--chunk", "0/2"], ["train"], ["compress"], ["validate"])
        for command in commands:
            assert main([*command, str(path)]) == 2
            assert f"in use by pid {holder.pid}" in capsys.readouterr().err, command
    finally:
        holder.kill()
        holder.wait()
    chunk = hold(locks, 60.0, shared=True)
    try:  # another task of the same job array
        assert main(["simulate", "-q", "--chunk", "1/2", str(path)]) == 0
    finally:
        chunk.kill()
        chunk.wait()
    assert main(["simulate", "-q", str(path)]) == 0  # the killed chunk's lock is stale: taken over
    assert "took over the stale lock" in capsys.readouterr().err
