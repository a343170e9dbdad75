"""``cosmosbi slurm submit``: an analysis as a chain of SLURM batch jobs.

One job per kind of stage the config has, in order, each started only when the previous one
succeeded (``--dependency=afterok``):

- ``simulate``: one MPI job, ``srun`` over ``slurm.jobs.simulate.ntasks`` tasks; or, with
  ``slurm.jobs.simulate.array: K``, a job array of K independent chunks followed by a
  one-task job that merges them (and simulates whatever a failed chunk left);
- ``compress`` (the GPU job when ``gpus`` is set): one task, or with ``slurm.jobs.compress.ntasks``
  above one, ``srun`` over that many data-parallel training processes (torch.distributed, see
  :mod:`cosmosbi.compressors.distributed`; the script exports ``MASTER_ADDR`` and ``MASTER_PORT``);
- ``estimate``, ``validate``, ``baseline``, ``sample``: one task each.

A config with a ``tune`` section is searched instead (see :mod:`cosmosbi.tune`): the simulate
job(s), then a job array of ``tune.parallel`` tasks, each ``cosmosbi tune CONFIG --worker K``
(resources from ``slurm.jobs.tune``), then a one-task job that writes the results and
``RUN_DIR/tune/best.yaml``; submit ``best.yaml`` for the analysis with the best settings.

Every job runs ``cosmosbi run CONFIG --stage KIND``, so a chain resubmitted after a failure or a
time-out skips what is done and resumes the rest, exactly like ``cosmosbi run``. The config's
``slurm`` section sets partition, account, modules, setup lines, the interpreter and per-job
resources (see :class:`cosmosbi.config.SlurmConfig`)::

    slurm:
      partition: gpu
      account: my-project
      modules: [python/3.11, openmpi]
      setup: ["source ~/venvs/cosmosbi/bin/activate"]
      jobs:
        simulate: {ntasks: 64, time: "04:00:00"}
        compress: {nodes: 2, ntasks: 8, gpus: 8, time: "02:00:00", cpus_per_task: 8}

The scripts are written to ``RUN_DIR/slurm/`` and the submitted job ids to
``RUN_DIR/slurm/jobs.json``.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cosmosbi.files import atomic_path, atomic_write_json, provenance
from cosmosbi.layout import RunLayout

__all__ = ["BatchJob", "batch_jobs", "submit_jobs"]


@dataclass(frozen=True)
class BatchJob:
    """One batch script of the chain: its name, file name and text."""

    name: str
    file_name: str
    script: str


def _shell_join(words: list[str]) -> str:
    return " ".join(w if w.startswith("$") else shlex.quote(w) for w in words)


# the first node of the job is the rendezvous of the training processes; the port follows the job id
RENDEZVOUS = [
    'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
    "export MASTER_ADDR",
    "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
]


def _script(
    name: str,
    config,
    settings,
    job,
    command: list[str],
    log_dir: Path,
    workdir: Path,
    *,
    srun: bool = False,
    array: int | None = None,
    rendezvous: bool = False,
) -> str:
    options = [f"--job-name=cosmosbi-{name}", f"--output={log_dir / (name + ('-%A_%a' if array else '-%j') + '.out')}"]
    partition = job.partition or settings.partition
    for flag, value in (
        ("partition", partition),
        ("account", settings.account),
        ("time", job.time),
        ("nodes", job.nodes),
        ("ntasks", job.ntasks),
        ("cpus-per-task", job.cpus_per_task),
        ("mem", job.mem),
        ("gpus", job.gpus),
    ):
        if value is not None:
            options.append(f"--{flag}={value}")
    if array:
        options.append(f"--array=0-{array - 1}")
    options += settings.sbatch_options
    lines = [
        "#!/bin/bash",
        f"# cosmosbi {name} job of the analysis in {config.run_dir}",
        *(f"#SBATCH {o}" for o in options),
        "set -euo pipefail",
    ]
    lines += [f"module load {m}" for m in settings.modules]
    lines += list(settings.setup)
    lines += [f"cd {shlex.quote(str(workdir))}", "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}"]
    lines += RENDEZVOUS if rendezvous else []
    launcher = ["srun", f"--mpi={settings.mpi}"] if srun else []
    lines.append(_shell_join([*launcher, settings.python, "-m", "cosmosbi", *command]))
    return "\n".join(lines) + "\n"


def batch_jobs(
    config, config_path: str | Path, *, run_dir: str | None = None, workdir: str | Path | None = None
) -> list[BatchJob]:
    """The batch scripts of ``config``'s analysis, in submission order.

    Args:
        config: a validated config (its ``slurm`` section sets the resources).
        config_path: the config file the jobs run (made absolute).
        run_dir: a ``--run-dir`` override passed on to every job.
        workdir: the directory the jobs run in (default: the current one); relative paths in
            the config are relative to it.
    """
    from cosmosbi.pipeline import plan_stages

    settings = config.slurm
    workdir = Path(workdir or Path.cwd()).resolve()
    run_path = Path(run_dir or config.run_dir)
    log_dir = RunLayout(run_path if run_path.is_absolute() else workdir / run_path).slurm
    base = [str(Path(config_path).resolve())] + (["--run-dir", str(run_dir)] if run_dir else [])
    kinds = list(dict.fromkeys(s.kind for s in plan_stages(config)))
    if config.tune is not None:
        kinds = [k for k in kinds if k == "simulate"]
    jobs = []
    for kind in kinds:
        job = settings.jobs.get(kind)
        if job is None:
            from cosmosbi.config import SlurmJobConfig

            job = SlurmJobConfig()
        stage = ["run", *base, "--stage", kind, "--quiet"]
        if kind == "simulate" and job.array:
            chunk = ["simulate", *base, "--quiet", "--chunk", f"$SLURM_ARRAY_TASK_ID/{job.array}"]
            single = job.model_copy(update={"ntasks": 1, "array": None})
            jobs.append(
                BatchJob(
                    "simulate-array",
                    f"{len(jobs):02d}-simulate-array.sbatch",
                    _script("simulate-array", config, settings, single, chunk, log_dir, workdir, array=job.array),
                )
            )
            jobs.append(
                BatchJob(
                    "simulate-merge",
                    f"{len(jobs):02d}-simulate-merge.sbatch",
                    _script("simulate-merge", config, settings, single, stage, log_dir, workdir),
                )
            )
            continue
        if kind not in ("simulate", "compress") and job.ntasks not in (None, 1):
            raise ValueError(
                f"slurm.jobs.{kind}.ntasks: only the simulate and compress jobs run several tasks; got {job.ntasks}"
            )
        parallel = kind == "compress" and (job.ntasks or 1) > 1
        jobs.append(
            BatchJob(
                kind,
                f"{len(jobs):02d}-{kind}.sbatch",
                _script(
                    kind,
                    config,
                    settings,
                    job,
                    stage,
                    log_dir,
                    workdir,
                    srun=kind == "simulate" or parallel,
                    rendezvous=parallel,
                ),
            )
        )
    if config.tune is not None:
        jobs += _tune_jobs(config, settings, base, log_dir, workdir, first=len(jobs))
    return jobs


def _tune_jobs(config, settings, base: list[str], log_dir: Path, workdir: Path, first: int) -> list[BatchJob]:
    """The job array of tune workers and the job that writes the search's results."""
    from cosmosbi.config import SlurmJobConfig

    job = settings.jobs.get("tune") or SlurmJobConfig()
    if job.ntasks not in (None, 1) or job.array is not None:
        raise ValueError(
            "slurm.jobs.tune: each array task is one process (set tune.parallel for more tasks); "
            f"got ntasks={job.ntasks}, array={job.array}"
        )
    worker = ["tune", *base, "--worker", "$SLURM_ARRAY_TASK_ID", "--quiet"]
    report = ["tune", *base, "--report"]
    single = job.model_copy(update={"gpus": None})
    return [
        BatchJob(
            "tune-array",
            f"{first:02d}-tune-array.sbatch",
            _script("tune-array", config, settings, job, worker, log_dir, workdir, array=config.tune.parallel),
        ),
        BatchJob(
            "tune-report",
            f"{first + 1:02d}-tune-report.sbatch",
            _script("tune-report", config, settings, single, report, log_dir, workdir),
        ),
    ]


def submit_jobs(
    jobs: list[BatchJob], out_dir: str | Path, *, sbatch: str = "sbatch", env: dict | None = None
) -> list[str]:
    """Write the scripts to ``out_dir`` and submit them as a chain (each ``afterok`` the previous).

    Returns the job ids; ``out_dir/jobs.json`` records them. A failed submission raises
    ``RuntimeError`` with sbatch's message (jobs submitted before it stay queued and are listed).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    record = {"submitted": provenance(), "jobs": []}
    for job in jobs:
        path = out_dir / job.file_name
        with atomic_path(path) as tmp:
            tmp.write_text(job.script)
        command = (
            [sbatch, "--parsable"]
            + ([f"--dependency=afterok:{ids[-1]}", "--kill-on-invalid-dep=yes"] if ids else [])
            + [str(path)]
        )
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env)
        except FileNotFoundError:
            raise RuntimeError(
                f"{sbatch!r} not found: is SLURM installed here? Use --dry-run to only write the scripts"
            ) from None
        if done.returncode != 0:
            raise RuntimeError(
                f"sbatch {path} failed ({done.stderr.strip() or done.stdout.strip()}); "
                f"already submitted: {ids or 'none'}"
            )
        ids.append(done.stdout.strip().split(";")[0])
        record["jobs"].append({"name": job.name, "script": str(path), "job_id": ids[-1]})
        atomic_write_json(out_dir / "jobs.json", record)
    return ids
