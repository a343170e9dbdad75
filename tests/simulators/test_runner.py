import json
import shutil

import numpy as np
import pytest

from cosmosbi.simulators import BoxUniform, as_simulator, make_simulator
from cosmosbi.simulators.runner import run_simulations, simulation_seeds
from cosmosbi.simulators.store import DatasetError, SimulationDataset

PRIOR = BoxUniform(["mu", "sigma"], [-1.0, 0.1], [1.0, 1.0])


def gaussian_draws(theta, rng):
    return theta[0] + theta[1] * rng.standard_normal(4)


def field_sim():
    return make_simulator("gaussian_field", {"n_pixels": 8})


def test_dataset_round_trip_and_per_index_seeding(tmp_path):
    sim = as_simulator(gaussian_draws, prior=PRIOR)
    summary = run_simulations(sim, 50, tmp_path / "ds", seed=11, batch_size=7, progress=False)
    assert (summary.simulated, summary.failed, summary.status) == (50, 0, "complete")
    ds = SimulationDataset(tmp_path / "ds")
    assert len(ds) == 50 and ds.parameter_names == ("mu", "sigma")
    np.testing.assert_array_equal(ds.index, np.arange(50))
    # simulation i is reproducible from SeedSequence([seed, i]) alone
    theta_seq, noise_seq = simulation_seeds(11, 17)
    theta17 = PRIOR.sample(1, np.random.default_rng(theta_seq))[0]
    np.testing.assert_array_equal(ds.theta[17], theta17)
    np.testing.assert_array_equal(ds.read("x")[17], gaussian_draws(theta17, np.random.default_rng(noise_seq)))
    item = ds[17]
    np.testing.assert_array_equal(item["x"], ds.read("x")[17])
    np.testing.assert_array_equal(ds.read("x", rows=np.array([3, 17])), ds.read("x")[[3, 17]])
    batches = list(ds.iter_batches(20))
    assert [len(b["index"]) for b in batches] == [20, 20, 10]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), ds.read("x"))


def test_dataset_does_not_depend_on_batch_size(tmp_path):
    a = run_simulations(field_sim(), 30, tmp_path / "a", seed=1, batch_size=30, progress=False)
    b = run_simulations(field_sim(), 30, tmp_path / "b", seed=1, batch_size=4, progress=False)
    da, db = SimulationDataset(a.path), SimulationDataset(b.path)
    np.testing.assert_array_equal(da.theta, db.theta)
    np.testing.assert_array_equal(da.read("field"), db.read("field"))


def test_chunks_of_a_job_array_merge_into_the_serial_dataset(tmp_path):
    serial = SimulationDataset(
        run_simulations(field_sim(), 31, tmp_path / "serial", seed=5, batch_size=4, progress=False).path
    )
    chunked = tmp_path / "chunked"
    for k in (2, 0):  # chunks finish in any order; chunk 1 never ran (a failed array task)
        summary = run_simulations(field_sim(), 31, chunked, seed=5, batch_size=4, progress=False, chunk=(k, 3))
        assert (summary.n, summary.new_this_run) == (len(np.array_split(np.arange(31), 3)[k]), summary.n)
        assert "not merged" in summary.status
    with pytest.raises(DatasetError):
        SimulationDataset(chunked)  # not merged yet: refused
    merged = run_simulations(field_sim(), 31, chunked, seed=5, batch_size=4, progress=False)
    assert (merged.status, merged.new_this_run) == ("complete", 10)  # chunk 1 (indices 11-20), simulated by the merge
    dataset = SimulationDataset(chunked)
    np.testing.assert_array_equal(dataset.theta, serial.theta)
    np.testing.assert_array_equal(dataset.read("field"), serial.read("field"))
    with pytest.raises(ValueError, match="chunk must be"):
        run_simulations(field_sim(), 31, tmp_path / "bad", seed=5, progress=False, chunk=(3, 3))


def test_fixed_theta_and_extension(tmp_path):
    theta = np.tile([0.2, 0.5], (10, 1))
    run_simulations(
        as_simulator(gaussian_draws, prior=PRIOR), 10, tmp_path / "fid", seed=0, theta=theta, progress=False
    )
    ds = SimulationDataset(tmp_path / "fid")
    np.testing.assert_array_equal(ds.theta, theta)
    # a larger n on the same dataset simulates only the new indices
    sim = field_sim()
    run_simulations(sim, 20, tmp_path / "ext", seed=4, progress=False)
    first = SimulationDataset(tmp_path / "ext").read("field")
    summary = run_simulations(sim, 35, tmp_path / "ext", seed=4, progress=False)
    assert summary.new_this_run == 15 and summary.simulated == 35
    np.testing.assert_array_equal(SimulationDataset(tmp_path / "ext").read("field")[:20], first)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_clean_dataset(tmp_path):
    clean = run_simulations(field_sim(), 40, tmp_path / "clean", seed=5, batch_size=6, progress=False)

    class Flaky:
        """Wraps the field simulator and dies on its third batch, like a killed job."""

        def __init__(self):
            self.inner, self.calls = field_sim(), 0
            self.parameter_names, self.prior, self.output_spec = (
                self.inner.parameter_names,
                self.inner.prior,
                self.inner.output_spec,
            )
            self.description = self.inner.description

        def simulate(self, theta, rng):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return self.inner.simulate(theta, rng)

    with pytest.raises(KeyboardInterrupt):
        run_simulations(Flaky(), 40, tmp_path / "resumed", seed=5, batch_size=6, progress=False)
    with pytest.raises(DatasetError, match="interrupted"):
        SimulationDataset(tmp_path / "resumed")
    assert len(SimulationDataset(tmp_path / "resumed", allow_incomplete=True)) == 0  # parts not merged yet
    summary = run_simulations(field_sim(), 40, tmp_path / "resumed", seed=5, batch_size=6, progress=False)
    assert summary.new_this_run == 40 - 12 and summary.status == "complete"
    a, b = SimulationDataset(clean.path), SimulationDataset(summary.path)
    np.testing.assert_array_equal(a.theta, b.theta)
    np.testing.assert_array_equal(a.read("field"), b.read("field"))
    assert not (tmp_path / "resumed" / "parts").exists()


def test_failures_are_recorded_not_stored(tmp_path):
    def fragile(theta, rng):
        if theta[0] > 0.6:
            raise RuntimeError("diverged")
        x = theta[0] + rng.standard_normal(3)
        if theta[0] < -0.6:
            x[1] = np.nan
        return x

    summary = run_simulations(
        as_simulator(fragile, prior=PRIOR), 60, tmp_path / "ds", seed=2, batch_size=8, progress=False
    )
    ds = SimulationDataset(tmp_path / "ds")
    theta_all = np.stack([PRIOR.sample(1, np.random.default_rng(simulation_seeds(2, i)[0]))[0] for i in range(60)])
    bad = (theta_all[:, 0] > 0.6) | (theta_all[:, 0] < -0.6)
    assert summary.failed == bad.sum() > 0 and len(ds) == 60 - bad.sum()
    np.testing.assert_array_equal(ds.index, np.nonzero(~bad)[0])
    assert np.all(np.isfinite(ds.read("x")))
    messages = {f["index"]: f["message"] for f in ds.failures}
    assert set(messages) == set(np.nonzero(bad)[0].tolist())
    assert all(("diverged" in m) == (theta_all[i, 0] > 0.6) for i, m in messages.items())
    assert all(f["seed"] == 2 for f in ds.failures)
    assert ds.manifest["counts"] == {"simulated": int((~bad).sum()), "failed": int(bad.sum()), "missing": 0}
    # a rerun does not retry recorded failures
    assert (
        run_simulations(as_simulator(fragile, prior=PRIOR), 60, tmp_path / "ds", seed=2, progress=False).new_this_run
        == 0
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": -5}, "positive integer"),
        ({"n": 2.5}, "positive integer"),
        ({"seed": -1}, "non-negative integer"),
        ({"batch_size": 0}, "batch_size"),
        ({"theta": np.array([[0.0, 5.0]] * 10)}, "sigma=5.0, outside the prior"),
        ({"theta": np.zeros((3, 2)) + 0.5}, "3 rows but n=10"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, message):
    args = {"n": 10, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        run_simulations(as_simulator(gaussian_draws, prior=PRIOR), out_dir=tmp_path / "ds", progress=False, **args)


def test_directory_with_another_dataset_is_refused_and_kept(tmp_path):
    run_simulations(field_sim(), 10, tmp_path / "ds", seed=1, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}
    with pytest.raises(ValueError, match="different seed"):
        run_simulations(field_sim(), 10, tmp_path / "ds", seed=2, progress=False)
    with pytest.raises(ValueError, match="different simulator"):
        run_simulations(make_simulator("gaussian_field", {"n_pixels": 16}), 10, tmp_path / "ds", seed=1, progress=False)
    with pytest.raises(ValueError, match="n=10 simulations; asked for n=5"):
        run_simulations(field_sim(), 5, tmp_path / "ds", seed=1, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        run_simulations(field_sim(), 10, tmp_path / "other", seed=1, progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_truncated_shard_is_reported_and_left_alone(tmp_path):
    run_simulations(field_sim(), 50, tmp_path / "ds", seed=1, progress=False)
    shard = tmp_path / "ds" / "shard-00000.h5"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="shard-00000.h5.*truncated or corrupt"):
        SimulationDataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match="shard-00000.h5.*truncated or corrupt"):
        run_simulations(field_sim(), 50, tmp_path / "ds", seed=1, progress=False)
    assert shard.read_bytes() == data[: len(data) // 2]


def test_manifest_and_shards_must_agree(tmp_path):
    run_simulations(field_sim(), 20, tmp_path / "ds", seed=1, progress=False)
    manifest_path = tmp_path / "ds" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"]["shard-00000.h5"] = 19
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="holds 20 rows but the manifest says 19"):
        SimulationDataset(tmp_path / "ds")
    shutil.copy(tmp_path / "ds" / "shard-00000.h5", tmp_path / "ds" / "shard-00001.h5")
    with pytest.raises(DatasetError, match="directory holds"):
        SimulationDataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match="no manifest.json"):
        SimulationDataset(tmp_path)


def test_dataset_feeds_a_torch_dataloader_with_workers(tmp_path):
    import torch

    run_simulations(field_sim(), 24, tmp_path / "ds", seed=1, progress=False)
    ds = SimulationDataset(tmp_path / "ds")
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    batches = list(loader)
    assert batches[0]["field"].shape == (8, 8, 8) and batches[0]["theta"].shape == (8, 2)
    np.testing.assert_array_equal(torch.cat([b["field"] for b in batches]).numpy(), ds.read("field"))


def test_an_edited_function_is_not_taken_for_the_old_one(tmp_path, monkeypatch):
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "my_model.py"
    module.write_text("def model(theta, rng):\n    return theta[0] + rng.standard_normal(3)\n")
    run_simulations(
        as_simulator(importlib.import_module("my_model").model, prior=PRIOR),
        10,
        tmp_path / "ds",
        seed=1,
        progress=False,
    )
    before = SimulationDataset(tmp_path / "ds").read("x")
    sys.modules.pop("my_model")
    module.write_text("def model(theta, rng):\n    return theta[0] + 10 * rng.standard_normal(3)\n")
    edited = as_simulator(importlib.import_module("my_model").model, prior=PRIOR)
    sys.modules.pop("my_model")
    with pytest.raises(ValueError, match="different simulator.*not reused.*overwrite=True"):
        run_simulations(edited, 10, tmp_path / "ds", seed=1, progress=False)
    np.testing.assert_array_equal(SimulationDataset(tmp_path / "ds").read("x"), before)  # refused and kept
    summary = run_simulations(edited, 10, tmp_path / "ds", seed=1, progress=False, overwrite=True)
    assert (summary.new_this_run, summary.status) == (10, "complete")
    after = SimulationDataset(tmp_path / "ds").read("x")
    theta = SimulationDataset(tmp_path / "ds").theta
    np.testing.assert_allclose(after - theta[:, :1], 10 * (before - theta[:, :1]))

    # two lambdas share the name '<lambda>' but not their code
    run_simulations(
        as_simulator(lambda t, rng: t[0] + rng.normal(size=2), prior=PRIOR), 5, tmp_path / "lam", seed=1, progress=False
    )
    with pytest.raises(ValueError, match="different simulator"):
        run_simulations(
            as_simulator(lambda t, rng: t[1] + rng.normal(size=2), prior=PRIOR),
            5,
            tmp_path / "lam",
            seed=1,
            progress=False,
        )


def test_merge_is_linear_keeps_the_first_copy_and_sorts_by_index(tmp_path):
    from cosmosbi.simulators.store import merge_files, write_rows

    rng = np.random.default_rng(0)
    rows = {i: rng.normal(size=3) for i in range(30)}

    def part(name, index):
        index = np.asarray(index)
        write_rows(
            tmp_path / name,
            np.c_[index, index] / 100.0,
            index,
            7,
            {"x": np.stack([rows[i] for i in index])},
            [],
            ["mu", "sigma"],
        )
        return tmp_path / name

    legacy = part("legacy.h5", [12, 3, 29, 0])  # written unsorted, as shards of earlier versions were
    with_dupes = part("dupes.h5", [3, 4, 5, 12])
    other = part("other.h5", list(range(6, 12)))
    import h5py

    with h5py.File(legacy, "r+") as f:  # make the legacy file's rows unsorted on disk
        order = np.array([2, 0, 3, 1])
        for key in ("theta", "index", "x/x"):
            f[key][...] = f[key][:][order]
        f["x/x"][0] = 99.0  # index 12, also in the second source: the first copy is kept
    empty = tmp_path / "empty.h5"  # a part whose simulations all failed
    failure = {"index": 40, "seed": 7, "message": "RuntimeError: diverged"}
    write_rows(empty, np.zeros((0, 2)), np.zeros(0, np.int64), 7, {"x": np.zeros((0, 3))}, [failure], ["mu", "sigma"])
    merge_files([empty, legacy, with_dupes, other], tmp_path / "merged.h5", 7, ["mu", "sigma"], block_bytes=200)
    with h5py.File(tmp_path / "merged.h5", "r") as f:
        index, x, theta = f["index"][:], f["x/x"][:], f["theta"][:]
        assert json.loads(f.attrs["failures"]) == [failure]
    expected = sorted({0, 3, 12, 29, 4, 5, *range(6, 12)})
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(theta[:, 0], np.array(expected) / 100.0)
    rows[12] = np.full(3, 99.0)
    np.testing.assert_array_equal(x, np.stack([rows[i] for i in expected]))

    wrong = tmp_path / "wrong.h5"
    write_rows(wrong, np.zeros((1, 2)), np.array([40]), 7, {"x": np.zeros((1, 4))}, [], ["mu", "sigma"])
    with pytest.raises(DatasetError, match="wrong.h5: outputs x \\(4,\\) float64 differ from x \\(3,\\) float64"):
        merge_files([other, wrong], tmp_path / "bad.h5", 7, ["mu", "sigma"])
    assert not (tmp_path / "bad.h5").exists()


def test_orphan_temporary_files_of_a_killed_run_are_removed(tmp_path):
    import subprocess
    import sys

    sim = as_simulator(gaussian_draws, prior=PRIOR)
    run_simulations(sim, 10, tmp_path / "ds", seed=1, progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphans = [tmp_path / "ds" / f".shard-00000.h5.{dead.pid}.tmp", tmp_path / "ds" / f".manifest.json.{dead.pid}.tmp"]
    (tmp_path / "ds" / "parts").mkdir()
    orphans.append(tmp_path / "ds" / "parts" / f".part-r00000-0000000010.h5.{dead.pid}.tmp")
    alive = tmp_path / "ds" / ".shard-00000.h5.1.tmp"  # pid 1 is alive: a run in progress elsewhere, kept
    for path in [*orphans, alive]:
        path.write_bytes(b"\0" * 1000)
    assert run_simulations(sim, 10, tmp_path / "ds", seed=1, progress=False).new_this_run == 0
    assert not any(path.exists() for path in orphans) and alive.exists()
    assert not (tmp_path / "ds" / "parts").exists()


def test_simulation_seeds_are_the_children_of_the_root_and_index():
    for seed, index in [(0, 0), (11, 17), (2**40, 10**6)]:
        expected = np.random.SeedSequence([seed, index]).spawn(2)
        for got, want in zip(simulation_seeds(seed, index), expected):
            np.testing.assert_array_equal(got.generate_state(8), want.generate_state(8))


def test_a_built_in_simulator_whose_model_changed_is_not_reused(tmp_path):
    """A built-in simulator's ``model_version`` is part of its identity: old-model rows are refused."""
    from cosmosbi.simulators import make_simulator

    old = make_simulator("gaussian_field", {"n_pixels": 8})
    run_simulations(old, 4, tmp_path / "ds", seed=1, progress=False)
    new = make_simulator("gaussian_field", {"n_pixels": 8})
    new.model_version = 2
    with pytest.raises(ValueError, match="different simulator"):
        run_simulations(new, 4, tmp_path / "ds", seed=1, progress=False)
    assert run_simulations(old, 4, tmp_path / "ds", seed=1, progress=False).new_this_run == 0
