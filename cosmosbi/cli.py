"""The ``cosmosbi`` command line.

cosmosbi run [CONFIG.yaml]        every stage of the analysis, skipping what is done (works under MPI)
cosmosbi status RUN_DIR           the state of each stage of a run
cosmosbi simulate [CONFIG.yaml]   simulate the config's datasets (works under mpiexec / srun)
cosmosbi compress CONFIG.yaml     train the compressor, write the summaries of the datasets
cosmosbi info PATH                what a run directory or dataset holds
cosmosbi simulators               the registered simulators and their options
cosmosbi train CONFIG.yaml        fit the config's estimator (NPE / NLE) on its dataset
cosmosbi sample CONFIG.yaml --obs FILE   posterior samples for observations in FILE
cosmosbi validate CONFIG.yaml     SBC, coverage, TARP, exact comparison, domain shift -> report
cosmosbi tune CONFIG.yaml         search compressor and estimator settings -> RUN_DIR/tune/best.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from cosmosbi import __version__

log = logging.getLogger("cosmosbi")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosmosbi",
        description="Simulation-based inference for galaxy surveys: simulate, compress, estimate, validate.",
        epilog="Run `cosmosbi COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"cosmosbi {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages; show an error's traceback")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run every stage of an analysis: simulate, compress, estimate, validate, baseline, sample",
        description=(
            "Run the stages of CONFIG in order (simulate -> compress -> estimate -> validate -> baseline -> sample), "
            "each only when its config section is present. A stage whose settings (and inputs) are "
            "unchanged since it finished is skipped; an interrupted one resumes; a changed setting "
            "reruns that stage and those after it, keeping the old artifacts under "
            "RUN_DIR/stages/previous/. Without CONFIG: the quick-start analysis of the Gaussian-field "
            "reference problem. Under `mpiexec` or `srun` the simulations use every rank, and with "
            "MASTER_ADDR and MASTER_PORT set the compressor trains data-parallel on every rank. "
            "A config whose simulator is named `module:function` runs that code: the stages import the "
            "module and call the function, so run only configs you trust, as you would a Python script "
            "(`cosmosbi status --config` and `cosmosbi slurm submit --dry-run` only read a config)."
        ),
    )
    run.add_argument("config", nargs="?", help="YAML config (default: the built-in quick-start analysis)")
    run.add_argument(
        "--stage",
        action="append",
        metavar="STAGE",
        help=(
            "run only stages of this kind (simulate, compress, estimate, validate, baseline, sample; repeatable); "
            "earlier stages must be done"
        ),
    )
    _add_run_dir(run)
    _add_quiet(run)
    _add_lock_options(run)

    status = commands.add_parser(
        "status",
        help="show the state of each stage of a run directory",
        description=(
            "List the stages of the analysis recorded in RUN_DIR/run.json with their state (done, "
            "running, interrupted, stale, pending), key, time and result. With --config, compare "
            "against that config instead: stages whose settings changed show as stale."
        ),
    )
    status.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of a `cosmosbi run`")
    status.add_argument("--config", metavar="CONFIG", help="compare against this config (what would rerun)")

    simulate = commands.add_parser(
        "simulate",
        help="simulate the datasets a config names",
        description=(
            "Simulate every dataset of CONFIG (or those given with --dataset) into "
            "RUN_DIR/sims/NAME/. Rerunning after a kill finishes only what is missing. Under "
            "`mpiexec -n N` or `srun` the simulations are split over the MPI ranks, and the "
            "dataset is identical to a one-process run."
        ),
    )
    simulate.add_argument("config", nargs="?", help="YAML config (default: the built-in Gaussian-field example)")
    simulate.add_argument("--dataset", action="append", metavar="NAME", help="simulate only this dataset (repeatable)")
    _add_run_dir(simulate)
    _add_quiet(simulate)
    _add_lock_options(simulate)
    simulate.add_argument(
        "--chunk",
        metavar="K/N",
        help="simulate only chunk K of N (0 <= K < N) and leave it unmerged, "
        "as one task of a job array; a later run without --chunk merges",
    )

    slurm = commands.add_parser(
        "slurm",
        help="run an analysis as a chain of SLURM batch jobs",
        description="Write the batch scripts of CONFIG's analysis and submit them to SLURM.",
    )
    slurm_commands = slurm.add_subparsers(dest="slurm_command", metavar="ACTION", required=True)
    submit = slurm_commands.add_parser(
        "submit",
        help="write the batch scripts of an analysis and submit them as a chain",
        description=(
            "Write one batch script per stage kind of CONFIG (simulate as an MPI job or a job array, "
            "then compress, estimate, validate, sample) to RUN_DIR/slurm/ and submit them, each "
            "with --dependency=afterok on the previous one. Each job runs `cosmosbi run CONFIG "
            "--stage KIND`, so resubmitting skips finished work. A config with a tune section gets the "
            "simulate job, a job array of `cosmosbi tune --worker` tasks and a job that writes the results "
            "instead. Resources, partition, account, modules and setup lines come from the config's slurm section."
        ),
    )
    submit.add_argument("config", help="YAML config of the analysis")
    submit.add_argument("--dry-run", action="store_true", help="print the scripts; write and submit nothing")
    _add_run_dir(submit)

    info = commands.add_parser(
        "info",
        help="describe a run directory or a dataset",
        description="Show what each dataset holds (parameters, outputs, counts), its failures and its provenance.",
    )
    info.add_argument("path", help="a run directory (RUN_DIR) or one dataset directory (RUN_DIR/sims/NAME)")
    info.add_argument(
        "--failures", type=int, default=10, metavar="K", help="list at most K failed simulations (default 10)"
    )

    compress = commands.add_parser(
        "compress",
        help="train the config's compressor and compress its datasets",
        description=(
            "Train the compressor of CONFIG on its train_on dataset (resuming from RUN_DIR/compressor/"
            "checkpoint.pt after a kill), then write the summaries t of every dataset in apply_to to "
            "RUN_DIR/summaries/NAME/. Run `cosmosbi simulate CONFIG` first. Started by torchrun, or by "
            "srun or mpiexec with MASTER_ADDR and MASTER_PORT set, the training is data-parallel over the processes."
        ),
    )
    compress.add_argument("config", help="YAML config with a compressor section")
    _add_run_dir(compress)
    _add_quiet(compress)
    _add_lock_options(compress)

    commands.add_parser("simulators", help="list the registered simulators and their options")
    _add_estimator_commands(commands)

    validate = commands.add_parser(
        "validate",
        help="validate the trained estimator and write the HTML report",
        description=(
            "Run SBC, HPD coverage, TARP, the exact-posterior comparison (where the simulator has "
            "one) and the domain-shift checks of CONFIG's validation section on its test dataset; "
            "write RUN_DIR/validation/metrics.json and report.html. Run `cosmosbi train CONFIG` first."
        ),
    )
    validate.add_argument("config", help="YAML config with estimator and validation sections")
    _add_run_dir(validate)
    _add_lock_options(validate)

    tune = commands.add_parser(
        "tune",
        help="search compressor and estimator settings (Optuna); write the best as a config",
        description=(
            "Simulate CONFIG's datasets, then run the trials of its tune section: each trial is the config "
            "with the trial's settings, run up to the estimator in RUN_DIR/tune/trial-K on the shared "
            "simulations and scored by the estimator's validation loss (the compressor's without an "
            "estimator). `parallel` trials run at once. Writes RUN_DIR/tune/results.csv, results.json, "
            "tune.png and best.yaml (the config with the best settings). A rerun resumes the search."
        ),
    )
    tune.add_argument("config", help="YAML config with a tune section")
    tune.add_argument(
        "--worker",
        type=int,
        metavar="K",
        help="only run trials, as worker K of a parallel search (the simulations must be done)",
    )
    tune.add_argument("--report", action="store_true", help="only write the results, best.yaml and the plot")
    _add_run_dir(tune)
    _add_quiet(tune)
    _add_lock_options(tune)
    return parser


def _add_run_dir(parser) -> None:
    parser.add_argument("--run-dir", metavar="DIR", help="override the config's run_dir")


def _add_quiet(parser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_lock_options(parser) -> None:
    from cosmosbi.lock import DEFAULT_STALE_AFTER_S

    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when another process holds the run directory, wait up to SECONDS for it (default: stop at once)",
    )
    parser.add_argument(
        "--stale-lock-after",
        type=float,
        default=DEFAULT_STALE_AFTER_S,
        metavar="SECONDS",
        help="take over a lock of another host not refreshed for SECONDS "
        f"(default {DEFAULT_STALE_AFTER_S:g}; on this host a lock whose process is gone is taken over at once)",
    )


def _locked(args, config, comm=None, *, shared: bool = False):
    """The run directory of ``config`` held for this command (see :mod:`cosmosbi.lock`); ``comm``
    None: this process alone (commands that run on rank 0 only)."""
    from cosmosbi.layout import RunLayout
    from cosmosbi.lock import run_lock

    return run_lock(
        RunLayout(config.run_dir).locks, shared=shared, wait_s=args.wait, stale_after_s=args.stale_lock_after, comm=comm
    )


def _add_estimator_commands(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train the config's estimator on its simulations",
        description=(
            "Fit the NPE or NLE (or ensemble) of CONFIG's estimator section on the simulations of "
            "its dataset (run `cosmosbi simulate` first) and save it to RUN_DIR/estimator/."
        ),
    )
    train.add_argument("config", help="YAML config with an estimator section")
    _add_run_dir(train)
    _add_quiet(train)
    _add_lock_options(train)
    sample = commands.add_parser(
        "sample",
        help="sample the trained estimator's posterior for observations",
        description=(
            "Load RUN_DIR/estimator/, summarise the observation(s) in FILE like the training data "
            "and write posterior samples as HDF5 (OUT.h5) and GetDist chains (OUT.txt, or OUT_<m>.txt "
            "for a batch of observations)."
        ),
    )
    sample.add_argument("config", help="YAML config with an estimator section")
    sample.add_argument(
        "--obs", required=True, metavar="FILE", help="observation(s): .npy, .npz or .h5 (one output or a batch)"
    )
    sample.add_argument("--obs-key", metavar="KEY", help="array name inside a .npz / .h5 file (h5 default: x)")
    sample.add_argument(
        "--out", metavar="OUT", help="output path without extension (default RUN_DIR/posterior/samples)"
    )
    sample.add_argument(
        "-n", "--n-samples", type=int, metavar="N", help="samples per observation (default: the config's)"
    )
    _add_run_dir(sample)
    _add_lock_options(sample)


def _load_config(args):
    """The validated config of ``args.config`` (the built-in default when absent), with --run-dir applied."""
    from cosmosbi.config import load_config

    config = load_config(_source(args))
    if args.run_dir:
        config = config.model_copy(update={"run_dir": args.run_dir})
    return config


def _source(args) -> str:
    """The config's path: the one given, or the built-in default of the command."""
    from cosmosbi.config import default_config_path

    if getattr(args, "config", None):
        return str(args.config)
    return str(default_config_path("quickstart" if args.command == "run" else "default"))


def _run(args, comm) -> int:
    from cosmosbi.pipeline import run_pipeline

    config = _load_config(args)
    outcomes = run_pipeline(
        config,
        _source(args),
        only=args.stage,
        comm=comm,
        progress=not args.quiet,
        wait_s=args.wait,
        stale_after_s=args.stale_lock_after,
    )
    if comm.Get_rank() == 0:
        ran = sum(o["action"] == "ran" for o in outcomes)
        print(f"{ran} stage(s) run, {len(outcomes) - ran} skipped; state: cosmosbi status {config.run_dir}")
    return 0


def _slurm(args, comm) -> int:
    if comm.Get_rank() != 0:
        return 0
    from cosmosbi.slurm import batch_jobs, submit_jobs

    config = _load_config(args)
    jobs = batch_jobs(config, args.config, run_dir=args.run_dir)
    if args.dry_run:
        for k, job in enumerate(jobs):
            dependency = f" (sbatch --dependency=afterok:<job id of {jobs[k - 1].name}>)" if k else ""
            print(f"# ---- {job.file_name}{dependency}\n{job.script}")
        return 0
    from cosmosbi.layout import RunLayout

    slurm_dir = RunLayout(config.run_dir).slurm
    ids = submit_jobs(jobs, slurm_dir)
    for job, job_id in zip(jobs, ids):
        print(f"{job.name}: job {job_id}")
    print(
        f"scripts and job ids in {slurm_dir}; follow with: squeue -j {','.join(ids)}; cosmosbi status {config.run_dir}"
    )
    return 0


def _status(args, comm) -> int:
    if comm.Get_rank() != 0:
        return 0
    from cosmosbi.config import load_config
    from cosmosbi.layout import RunLayout
    from cosmosbi.lock import describe_holder, lock_holders
    from cosmosbi.pipeline import format_status, run_record, stage_status

    record = run_record(args.run_dir)
    config = load_config(args.config) if args.config else None
    if config is not None:
        config = config.model_copy(update={"run_dir": args.run_dir})
    print(
        f"run {args.run_dir} (config {record['config_source']}, "
        f"created {record['created']['time']} on {record['created']['host']})"
    )
    print(format_status(stage_status(args.run_dir, config)))
    last = record["invocations"][-1] if record.get("invocations") else None
    if last:
        took = f"{last['seconds']} s" if last.get("seconds") is not None else "not finished"
        print(f"last invocation {last['time']} on {last['host']} ({last['n_ranks']} rank(s)), {took}")
    for path, holder in lock_holders(RunLayout(args.run_dir).locks):
        print(f"held by {describe_holder(holder)} ({path})")
    return 0


def _train(args, comm) -> int:
    if comm.Get_rank() != 0:
        return 0
    from cosmosbi.layout import RunLayout
    from cosmosbi.stages.estimate import estimate

    config = _load_config(args)
    with _locked(args, config):
        print(estimate(config, RunLayout(config.run_dir), _source(args), progress=not args.quiet))
    return 0


def _sample(args, comm) -> int:
    if comm.Get_rank() != 0:
        return 0
    from cosmosbi.layout import RunLayout
    from cosmosbi.stages.sample import sample_file

    config = _load_config(args)
    with _locked(args, config):
        written = sample_file(
            config,
            RunLayout(config.run_dir),
            args.obs,
            args.out,
            n_samples=args.n_samples,
            obs_key=args.obs_key,
            source=_source(args),
        )
    print(
        f"{written['n_samples']} samples for {written['n_observations']} observation(s) -> {written['hdf5']} "
        f"and GetDist chain(s) {', '.join(str(c) for c in written['chains'][:3])}"
        f"{' ...' if len(written['chains']) > 3 else ''}"
    )
    return 0


def _tune(args, comm) -> int:
    if comm.Get_rank() != 0:
        return 0
    from cosmosbi import tune
    from cosmosbi.layout import RunLayout

    config = _load_config(args)
    if args.worker is not None or args.report:
        with _locked(args, config, shared=True):  # beside the other workers, never beside `cosmosbi run`
            if args.worker is not None:
                ran = tune.run_trials(config, _source(args), worker=args.worker, progress=not args.quiet)
                print(f"worker {args.worker}: {ran} trial(s) run")
            results = tune.write_report(config) if args.report else None
    else:
        results = tune.tune(config, _source(args), progress=not args.quiet, wait_s=args.wait)
    if results is not None:
        best = results["best"]
        where = RunLayout(config.run_dir).tune
        if best is None:
            print(f"no trial finished; see {where / 'results.csv'}")
        else:
            print(
                f"best of {len(results['trials'])} trial(s): trial {best['trial']}, {results['objective']} "
                f"{best['score']:.6g}; settings in {where / 'best.yaml'}, table in {where / 'results.csv'}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 0
    handler = {
        "run": _run,
        "status": _status,
        "slurm": _slurm,
        "simulate": _simulate,
        "compress": _compress,
        "info": _info,
        "simulators": _simulators,
        "train": _train,
        "sample": _sample,
        "validate": _validate,
        "tune": _tune,
    }[args.command]
    from cosmosbi.simulators.mpi import get_comm

    comm = get_comm()
    if comm.Get_size() == 1:  # not MPI: a torchrun launch of several processes coordinates over torch.distributed
        from cosmosbi.compressors.distributed import TorchComm, launch_of

        launch = launch_of()
        if launch.distributed:
            comm = TorchComm(launch)
    try:
        return handler(args, comm)
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 (every error becomes one line; -v shows the traceback)
        if comm.Get_rank() == 0 or comm.Get_size() > 1:
            rank = f" (rank {comm.Get_rank()})" if comm.Get_size() > 1 else ""
            print(f"cosmosbi {args.command}{rank}: error: {error_message(err)}", file=sys.stderr)
            if args.verbose:
                traceback.print_exc()
        if comm.Get_size() > 1:
            comm.Abort(2)
        return 130 if isinstance(err, KeyboardInterrupt) else 2


def error_message(err: BaseException) -> str:
    """One line for an error: the message of the errors cosmosbi raises (ValueError and its
    ConfigError, OSError, KeyError, RuntimeError), the class and first line of any other."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    text = str(err)
    if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str):
        text = err.args[0] if " " in err.args[0] else f"missing key {err.args[0]!r}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(err, (ValueError, OSError, KeyError, RuntimeError)) and lines:
        return " ".join(lines) if len(lines) <= 3 else lines[0] + " ..."
    first = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return f"{first}{' ...' if len(lines) > 1 else ''} (rerun with `cosmosbi -v` for the traceback)"


def _simulate(args, comm) -> int:
    from cosmosbi.layout import RunLayout
    from cosmosbi.stages.simulate import simulate_datasets

    config = _load_config(args)
    chunk = _chunk(args.chunk)
    with _locked(args, config, comm, shared=chunk is not None):  # the chunks of a job array run side by side
        message = simulate_datasets(
            config,
            RunLayout(config.run_dir),
            args.dataset,
            _source(args),
            comm=comm,
            progress=not args.quiet,
            chunk=chunk,
        )
    if comm.Get_rank() == 0:
        print(message.replace("; ", "\n"))
        print(f"inspect with: cosmosbi info {config.run_dir}")
    return 0


def _chunk(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--chunk: expected K/N with integers 0 <= K < N, got {text!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"--chunk: expected K/N with 0 <= K < N, got {text!r}")
    return k, n


def _compress(args, comm) -> int:
    from cosmosbi.compressors.distributed import launch_of

    # a data-parallel launch trains on every rank, and rank 0 writes the summaries; else rank 0 alone
    parallel = launch_of().distributed and comm.Get_size() > 1
    rank = comm.Get_rank()
    if rank != 0 and not parallel:
        return 0
    from cosmosbi.layout import RunLayout
    from cosmosbi.stages.compress import compress

    config = _load_config(args)
    with _locked(args, config, comm if parallel else None):
        message = compress(
            config, RunLayout(config.run_dir), _source(args), progress=not args.quiet and rank == 0, summaries=rank == 0
        )
        if rank == 0:
            print(message)
    return 0


def _validate(args, comm) -> int:
    if comm.Get_rank() != 0:
        return 0
    from cosmosbi.layout import RunLayout
    from cosmosbi.stages.validate import validate

    config = _load_config(args)
    with _locked(args, config):
        print(validate(config, RunLayout(config.run_dir), _source(args)).replace("; ", "\n"))
    return 0


def _info(args, comm) -> int:
    if comm.Get_rank() != 0:
        return 0
    from cosmosbi.layout import RunLayout
    from cosmosbi.simulators.store import MANIFEST

    path = Path(args.path)
    if (path / MANIFEST).is_file():
        datasets = [path]
    else:
        datasets = RunLayout(path).datasets(MANIFEST)
        if not datasets:
            raise ValueError(
                f"{path}: neither a dataset directory (no {MANIFEST}) nor a run directory (no sims/*/{MANIFEST})"
            )
    for k, dataset in enumerate(datasets):
        if k:
            print()
        print(_describe_dataset(dataset, args.failures))
    return 0


def _describe_dataset(path: Path, max_failures: int) -> str:
    from cosmosbi.simulators.store import SimulationDataset

    ds = SimulationDataset(path, allow_incomplete=True)
    m = ds.manifest
    identity = m["identity"]
    counts = m["counts"]
    lines = [
        f"dataset   {path}",
        f"status    {m['status']}: {counts['simulated']} simulated, {counts['failed']} failed, "
        f"{counts['missing']} missing of n={m['n']}",
    ]
    if "compressed_from" in identity:
        network = identity["compressor"]["network"]
        lines.append(
            f"summaries of {identity['compressed_from']} by a {network['kind']} compressor "
            f"(loss {identity['compressor']['loss']})"
        )
    else:
        lines += [
            f"simulator {identity['simulator'].get('name')} {identity['simulator'].get('options', {})}",
            f"seed      {m['seed']} (simulation i uses SeedSequence([{m['seed']}, i]))"
            + ("; theta fixed by the caller" if identity.get("theta") else "; theta drawn from the prior"),
        ]
    lines.append("parameters:")
    theta = ds.theta
    for j, name in enumerate(ds.parameter_names):
        spread = f"min {theta[:, j].min():.4g}  max {theta[:, j].max():.4g}" if len(theta) else "no rows"
        prior = identity.get("prior", {}).get(name)
        lines.append(f"  {name:<12} {f'prior {prior}  ' if prior else ''}{spread}")
    lines.append("outputs:")
    for name, spec in ds.output_spec.items():
        lines.append(f"  {name:<12} shape {tuple(spec['shape'])}  {spec['dtype']}")
    lines.append(f"shards    {', '.join(f'{k} ({v} rows)' for k, v in m['shards'].items()) or 'none'}")
    if ds.failures:
        lines.append(f"failures  ({len(ds.failures)}):")
        for record in ds.failures[:max_failures]:
            lines.append(f"  index {record['index']} (seed {record['seed']}): {record['message']}")
        if len(ds.failures) > max_failures:
            lines.append(f"  ... {len(ds.failures) - max_failures} more")
    created = m.get("created", {})
    lines.append(f"created   {created.get('time')} on {created.get('host')}; versions {created.get('versions')}")
    for run in m.get("runs", []):
        lines.append(
            f"  run {run['time']}: {run['new_simulations']} simulations on {run['n_ranks']} rank(s) "
            f"in {run['seconds']} s"
        )
    return "\n".join(lines)


def _simulators(args, comm) -> int:
    if comm.Get_rank() != 0:
        return 0
    from cosmosbi.simulators.base import simulator_names, simulator_options, simulator_summary

    for name in simulator_names():
        print(f"{name}: {simulator_summary(name)}")
        for option, param in simulator_options(name).items():
            default = "required" if param.default is param.empty else f"default {param.default!r}"
            print(f"    {option} ({default})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
