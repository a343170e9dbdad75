"""Tests of the core count and the default thread settings (affinity, cgroup quota, MPI)."""

import os
import subprocess
import sys

import pytest

from cosmosbi import cores


@pytest.fixture
def no_mpi(monkeypatch):
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS"):
        monkeypatch.delenv(name, raising=False)


def test_cores_follow_affinity_and_cgroup_quota(monkeypatch, tmp_path, no_mpi):
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(cores, "_CGROUP_V1_QUOTA", (tmp_path / "none", tmp_path / "none"))
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(cores, "_CGROUP_V2_QUOTA", quota)
    assert cores.available_cores() == 6  # no cgroup file: the affinity
    quota.write_text("max 100000\n")
    assert cores.available_cores() == 6
    quota.write_text("150000 100000\n")  # 1.5 CPUs: two threads may run
    assert cores.available_cores() == 2 and cores.default_threads() == 2
    quota.write_text("20000 100000\n")
    assert cores.available_cores() == 1
    quota.write_text("garbage\n")
    assert cores.available_cores() == 6


def test_one_thread_per_rank_under_mpi(monkeypatch, no_mpi):
    assert cores.mpi_world_size() == 1
    monkeypatch.setenv("PMI_SIZE", "4")
    assert cores.mpi_world_size() == 4 and cores.default_threads() == 1
    monkeypatch.setenv("PMI_SIZE", "1")
    assert cores.default_threads() == cores.available_cores()


def test_import_sets_passive_wait_policy_unless_given_and_limits_threads_under_mpi():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "PMI_SIZE")}

    def settings_after_import(**extra):
        code = "import os, cosmosbi; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OMP_NUM_THREADS'))"
        run = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True)
        return run.stdout.split()

    assert settings_after_import()[0] == "PASSIVE"
    assert settings_after_import(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="3") == ["ACTIVE", "3"]  # the user's win
    if cores.available_cores() > 1:
        assert settings_after_import(PMI_SIZE="2") == ["PASSIVE", "1"]
