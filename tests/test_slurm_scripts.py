"""The batch scripts of `cosmosbi slurm submit` (no SLURM needed)."""

import sys
from pathlib import Path

import pytest

from cosmosbi.cli import main
from cosmosbi.config import SimulateConfig
from cosmosbi.slurm import batch_jobs, submit_jobs

ANALYSIS = {
    "run_dir": "runs/a",
    "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
    "datasets": {"train": {"n": 100, "seed": 1}, "test": {"n": 20, "seed": 2}},
    "compressor": {"input": "field", "network": {"kind": "mlp"}},
    "estimator": {"summary": "compressor"},
    "validation": {},
    "slurm": {
        "partition": "cpu",
        "account": "cosmo",
        "modules": ["python/3.11", "openmpi"],
        "setup": ["source venv/bin/activate"],
        "sbatch_options": ["--qos=normal"],
        "jobs": {
            "simulate": {"ntasks": 64, "time": "04:00:00"},
            "compress": {"gpus": 1, "partition": "gpu", "cpus_per_task": 8},
        },
    },
}


def test_one_job_per_stage_kind_with_the_configured_resources(tmp_path):
    jobs = batch_jobs(SimulateConfig.model_validate(ANALYSIS), tmp_path / "a.yaml", workdir=tmp_path)
    assert [j.name for j in jobs] == ["simulate", "compress", "estimate", "validate"]
    simulate, compress = jobs[0].script, jobs[1].script
    for line in (
        "#SBATCH --ntasks=64",
        "#SBATCH --time=04:00:00",
        "#SBATCH --partition=cpu",
        "#SBATCH --account=cosmo",
        "#SBATCH --qos=normal",
        "module load openmpi",
        "source venv/bin/activate",
        f"cd {tmp_path}",
        f"srun --mpi=pmi2 python -m cosmosbi run {tmp_path / 'a.yaml'} --stage simulate --quiet",
        f"#SBATCH --output={tmp_path / 'runs/a/slurm/simulate-%j.out'}",
    ):
        assert line in simulate.splitlines(), line
    for line in (
        "#SBATCH --gpus=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --cpus-per-task=8",
        f"python -m cosmosbi run {tmp_path / 'a.yaml'} --stage compress --quiet",
    ):
        assert line in compress.splitlines(), line
    assert "srun" not in compress and "--ntasks" not in compress


def test_job_array_simulation_adds_a_merge_job(tmp_path):
    data = {**ANALYSIS, "slurm": {"jobs": {"simulate": {"array": 16}}}}
    jobs = batch_jobs(SimulateConfig.model_validate(data), "a.yaml", run_dir="/scratch/r", workdir=tmp_path)
    assert [j.name for j in jobs][:2] == ["simulate-array", "simulate-merge"]
    assert "#SBATCH --array=0-15" in jobs[0].script
    assert "--chunk $SLURM_ARRAY_TASK_ID/16" in jobs[0].script and "--run-dir /scratch/r" in jobs[0].script
    assert "#SBATCH --output=/scratch/r/slurm/simulate-array-%A_%a.out" in jobs[0].script
    assert "--stage simulate" in jobs[1].script and "--array" not in jobs[1].script


def test_a_tune_section_makes_a_worker_array_and_a_report_job(tmp_path):
    tune = {"trials": 20, "parallel": 4, "space": {"compressor.network.hidden": [16, 32]}}
    data = {**ANALYSIS, "tune": tune, "slurm": {"jobs": {"tune": {"gpus": 1, "time": "01:00:00"}}}}
    jobs = batch_jobs(SimulateConfig.model_validate(data), tmp_path / "a.yaml", workdir=tmp_path)
    assert [j.name for j in jobs] == ["simulate", "tune-array", "tune-report"]
    worker, report = jobs[1].script.splitlines(), jobs[2].script.splitlines()
    for line in (
        "#SBATCH --array=0-3",
        "#SBATCH --gpus=1",
        "#SBATCH --time=01:00:00",
        f"python -m cosmosbi tune {tmp_path / 'a.yaml'} --worker $SLURM_ARRAY_TASK_ID --quiet",
        f"#SBATCH --output={tmp_path / 'runs/a/slurm/tune-array-%A_%a.out'}",
    ):
        assert line in worker, line
    assert f"python -m cosmosbi tune {tmp_path / 'a.yaml'} --report" in report
    assert not any(line.startswith(("#SBATCH --array", "#SBATCH --gpus")) for line in report)
    with pytest.raises(ValueError, match="slurm.jobs.tune"):
        batch_jobs(SimulateConfig.model_validate({**data, "slurm": {"jobs": {"tune": {"ntasks": 2}}}}), "a.yaml")


def test_bad_settings_are_named(tmp_path):
    data = {**ANALYSIS, "slurm": {"jobs": {"estimate": {"ntasks": 4}}}}
    with pytest.raises(ValueError, match="slurm.jobs.estimate.ntasks"):
        batch_jobs(SimulateConfig.model_validate(data), "a.yaml")
    with pytest.raises(Exception, match="jobs.train"):
        SimulateConfig.model_validate({**ANALYSIS, "slurm": {"jobs": {"train": {}}}})


def test_dry_run_prints_the_chain_and_submits_nothing(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(ANALYSIS))
    assert main(["slurm", "submit", "--dry-run", "a.yaml"]) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 4 and "afterok:<job id of compress>" in out
    assert not (tmp_path / "runs").exists()


def test_submission_chains_jobs_with_afterok(tmp_path):
    """A fake sbatch that records its arguments stands in for SLURM."""
    fake = tmp_path / "sbatch"
    fake.write_text(
        f"#!{sys.executable}\nimport sys, pathlib\nlog = pathlib.Path({str(tmp_path / 'calls')!r})\n"
        "n = len(log.read_text().splitlines()) if log.exists() else 0\n"
        "log.open('a').write(' '.join(sys.argv[1:]) + '\\n')\nprint(f'{100 + n};cluster')\n"
    )
    fake.chmod(0o755)
    jobs = batch_jobs(SimulateConfig.model_validate(ANALYSIS), "a.yaml", workdir=tmp_path)
    ids = submit_jobs(jobs, tmp_path / "scripts", sbatch=str(fake))
    assert ids == ["100", "101", "102", "103"]
    calls = (tmp_path / "calls").read_text().splitlines()
    assert "--dependency" not in calls[0]
    assert all(f"--dependency=afterok:{ids[k]}" in calls[k + 1] for k in range(3))
    assert sorted(p.name for p in (tmp_path / "scripts").glob("*.sbatch")) == [j.file_name for j in jobs]
    with pytest.raises(RuntimeError, match="not found"):
        submit_jobs(jobs, tmp_path / "scripts", sbatch=str(tmp_path / "missing-sbatch"))


@pytest.mark.parametrize(
    "template", ["simulate.sbatch", "simulate_array.sbatch", "train_gpu.sbatch", "validate.sbatch"]
)
def test_hand_templates_are_valid_bash_that_runs_cosmosbi(template):
    import subprocess

    path = Path(__file__).parents[1] / "slurm" / template
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    text = path.read_text()
    assert "#SBATCH --job-name=cosmosbi-" in text and "python -m cosmosbi" in text
    # without a config argument the script refuses with its usage line
    done = subprocess.run(
        ["bash", str(path)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0"}
    )
    assert done.returncode == 2 and "usage: sbatch" in done.stderr


def test_compress_job_over_several_processes_runs_srun_with_a_rendezvous(tmp_path):
    data = {**ANALYSIS, "slurm": {"jobs": {"compress": {"nodes": 2, "ntasks": 8, "gpus": 8, "cpus_per_task": 4}}}}
    jobs = batch_jobs(SimulateConfig.model_validate(data), tmp_path / "a.yaml", workdir=tmp_path)
    lines = jobs[1].script.splitlines()
    assert jobs[1].name == "compress"
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks=8",
        "#SBATCH --gpus=8",
        "#SBATCH --cpus-per-task=4",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR",
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        f"srun --mpi=pmi2 python -m cosmosbi run {tmp_path / 'a.yaml'} --stage compress --quiet",
    ):
        assert line in lines, line
    # the rendezvous is exported before the training processes start
    assert lines.index("export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))") < lines.index(lines[-1])
    assert "MASTER_ADDR" not in jobs[0].script and "MASTER_ADDR" not in jobs[2].script
