"""``cosmosbi tune``: search compressor and estimator settings with Optuna.

The config's ``tune`` section (:class:`cosmosbi.config.TuneConfig`) names the settings to search
and how many trials to run. Each trial is an ordinary staged run (:func:`cosmosbi.pipeline.run_pipeline`)
of the config with the trial's settings, in its own run directory ``RUN_DIR/tune/trial-K``, up to
the estimator (the validation, baseline and sample stages are left out). The trials share the
simulations of the parent run: ``trial-K/sims/NAME`` is a link to ``RUN_DIR/sims/NAME`` and the
parent's ``simulate`` stage records are copied beside it, so a trial's simulate stages are
skipped and never write to the parent's data (a parent dataset redone since makes the trial's
later stages rerun; a damaged one stops the trial).

A trial's score is the best validation loss of its estimator (the mean over the members of an
ensemble), the negative log posterior density of the held-out parameters, which compares
trials across compressor settings too; a config without an estimator is scored by the
compressor's best validation loss. Both losses are kept with each trial.

::

    RUN_DIR/tune/
      study.journal        the Optuna study (a journal file: processes share it, a rerun resumes it)
      trial-K/             run directory of trial K (config in run.json, stages, compressor/, estimator/)
      results.csv, results.json   one row per trial: state, score, settings, both losses, seconds
      best.yaml            the config with the best trial's settings (no tune section)
      tune.png             score per trial (with the running best) and score against each setting

The search runs ``parallel`` trials at once: ``cosmosbi tune`` starts ``parallel - 1`` worker
processes (``cosmosbi tune CONFIG --worker K``) beside itself, and ``cosmosbi slurm submit``
runs them as a job array; every worker holds the parent run directory shared (never beside a
``cosmosbi run`` of it) and its trial's directory exclusively. A rerun does not redo finished
trials; a trial whose process was killed is failed and its settings queued again. Trial 0 of
a new study runs the settings the config runs with (its own values, else the defaults), where
they lie inside the search space, so the best is never worse than them. The study
keeps the hash of the settings it searches around: changing anything else (datasets, the
simulator, untuned estimator settings) stops the rerun with a message, since earlier scores
would no longer compare.
"""

from __future__ import annotations

import csv
import io
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from cosmosbi.config import SimulateConfig, TuneConfig, with_setting
from cosmosbi.files import atomic_path, atomic_write_json, config_hash, read_json
from cosmosbi.layout import RunLayout
from cosmosbi.lock import pid_alive, run_lock
from cosmosbi.pipeline import run_pipeline

__all__ = [
    "STUDY_NAME",
    "trial_config",
    "best_config",
    "config_settings",
    "trial_scores",
    "open_study",
    "run_trials",
    "tune",
    "write_report",
    "link_simulations",
]

STUDY_NAME = "cosmosbi-tune"
TRIAL_STAGES = ["simulate", "compress", "estimate"]


def _section(config) -> TuneConfig:
    if config.tune is None:
        raise ValueError("the config has no tune section: add tune: {trials: N, space: {SETTING: [CHOICES], ...}}")
    return config.tune


def _base_dump(config) -> dict:
    """The config as data without its tune section."""
    return {k: v for k, v in config.model_dump(mode="json").items() if k != "tune"}


def best_config(config, params: dict) -> dict:
    """The config (as data, without its tune section) with the settings ``params`` ({dotted key: value})."""
    dump = _base_dump(config)
    for key, value in params.items():
        dump = with_setting(dump, key, value)
    return dump


def trial_config(config, params: dict, run_dir: str | Path) -> SimulateConfig:
    """The config of one trial: ``params`` applied, run directory ``run_dir``, only the datasets
    the compressor and estimator read, and no validation, baseline or observations."""
    dump = best_config(config, params)
    needed = [(dump["compressor"] or {}).get("train_on"), (dump["estimator"] or {}).get("dataset")]
    needed = list(dict.fromkeys(n for n in needed if n is not None))
    dump.update(
        run_dir=str(run_dir),
        validation=None,
        baseline=None,
        observations=None,
        datasets={n: dump["datasets"][n] for n in needed},
    )
    if dump["compressor"] is not None:
        estimator = dump["estimator"]
        dump["compressor"]["apply_to"] = [estimator["dataset"] if estimator else dump["compressor"]["train_on"]]
    return SimulateConfig.model_validate(dump)


def _study_hash(config) -> str:
    """Hash of what the trials share: a trial's config without the tuned settings' values and the run directory."""
    dump = trial_config(config, {}, "trial").model_dump(mode="json")
    for key in _section(config).space:
        dump = with_setting(dump, key, None)
    return config_hash({k: v for k, v in dump.items() if k != "run_dir"})


def link_simulations(trial: SimulateConfig, parent: RunLayout) -> None:
    """Point the trial's ``sims/NAME`` at the parent's and copy the parent's simulate records.

    Raises ValueError when a dataset of the parent is not simulated yet.
    """
    layout = RunLayout(trial.run_dir)
    for name in trial.datasets:
        source = parent.stage_record(f"simulate-{name}")
        record = read_json(source) if source.is_file() else None
        if not record or record.get("status") != "done":
            raise ValueError(
                f"{parent.root}: dataset {name!r} is not simulated yet (run `cosmosbi tune` without "
                "--worker, or `cosmosbi run CONFIG --stage simulate`)"
            )
        link = layout.sims(name)
        link.parent.mkdir(parents=True, exist_ok=True)
        target = Path(os.path.relpath(parent.sims(name).resolve(), link.parent.resolve()))
        if link.is_symlink() and Path(os.readlink(link)) != target:
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
        atomic_write_json(layout.stage_record(f"simulate-{name}"), record)


def _estimator_loss(directory: Path) -> float | None:
    meta_path = directory / "estimator.json"
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    if "ensemble" in meta:
        losses = [_estimator_loss(directory / m) for m in meta["ensemble"]["members"]]
        return float(np.mean(losses)) if losses and None not in losses else None
    summary = meta.get("summary") or {}
    return float(summary["best_validation_loss"]) if "best_validation_loss" in summary else None


def trial_scores(run_dir: str | Path) -> dict:
    """The best validation losses of a trial's compressor and estimator (None where absent)."""
    layout = RunLayout(run_dir)
    history = layout.compressor / "history.json"
    compressor = min((h["val_loss"] for h in read_json(history)), default=None) if history.is_file() else None
    return {"compressor_val_loss": compressor, "estimator_val_loss": _estimator_loss(layout.estimator)}


def _default_setting(config, key: str):
    """The value a setting the config leaves out takes (None if unknown): the estimator's flow
    and training defaults, the compressor network's constructor defaults."""
    import inspect

    section, _, name = key.rpartition(".")
    if section in ("estimator.flow", "estimator.training") and config.estimator is not None:
        from cosmosbi.estimators.nle import NLE
        from cosmosbi.estimators.npe import NPE

        cls = NPE if config.estimator.kind == "npe" else NLE
        defaults = cls.default_flow if section == "estimator.flow" else cls.default_training
        return getattr(defaults, name, None)
    if section == "compressor.network" and config.compressor is not None:
        from cosmosbi.compressors.networks import network_options

        parameter = network_options(config.compressor.network["kind"]).get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return None


def config_settings(config) -> dict:
    """The values the config runs with of the searched settings (its own, else their defaults),
    those that lie in the search space ({dotted key: value})."""
    dump = _base_dump(config)
    found = {}
    for key, spec in _section(config).space.items():
        value = dump
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            value = _default_setting(config, key)
        if isinstance(spec, list):
            inside = value is not None and value in spec
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            inside = number and spec.low <= value <= spec.high
        if inside:
            found[key] = value
    return found


def _suggest(trial, key: str, spec):
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    if isinstance(spec.low, int) and isinstance(spec.high, int):
        return trial.suggest_int(key, spec.low, spec.high, log=spec.log)
    return trial.suggest_float(key, float(spec.low), float(spec.high), log=spec.log)


def open_study(config, *, worker: int = 0):
    """The config's Optuna study (created on first use) in ``RUN_DIR/tune/study.journal``, and its storage.

    Raises ValueError when the study was started for other shared settings.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    section = _section(config)
    layout = RunLayout(config.run_dir)
    layout.tune.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(layout.tune / "study.journal")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="minimize", load_if_exists=True)
    seed = int(np.random.SeedSequence([section.seed, worker, len(study.trials)]).generate_state(1)[0])
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    study.sampler = samplers[section.sampler](seed=seed)
    shared = _study_hash(config)
    recorded = study.user_attrs.get("shared_settings")
    if recorded is None:
        study.set_user_attr("shared_settings", shared)
        settings = config_settings(config)
        if settings:  # trial 0: the config's own settings, so the best is never worse than them
            study.enqueue_trial(settings)
    elif recorded != shared:
        raise ValueError(
            f"{layout.tune}: the study was started with other settings besides the searched ones (datasets, simulator "
            "or untuned compressor/estimator settings changed), so its scores would not compare; move that folder "
            "away to start a new search"
        )
    return study, storage


def _counted(study) -> int:
    """Trials that count towards ``trials``: finished or running, not those failed by an interruption."""
    from optuna.trial import TrialState

    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))
        for t in study.trials
    )


def _requeue_interrupted(study, storage) -> int:
    """Fail the running trials whose process (on this host) is gone, and queue the settings of
    every interrupted trial again (once). Returns how many were queued."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(STUDY_NAME)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if pid_alive(t.user_attrs.get("pid"), t.user_attrs.get("host")) is False:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
    done = set(study.user_attrs.get("requeued", []))
    again = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.user_attrs.get("interrupted") and t.number not in done
    ]
    for t in again:
        study.enqueue_trial(t.params, skip_if_exists=False)
    if again:
        study.set_user_attr("requeued", sorted(done | {t.number for t in again}))
    return len(again)


def _objective(config, source: str, progress: bool, echo):
    section = _section(config)
    parent = RunLayout(config.run_dir)

    def objective(trial) -> float:
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        params = {key: _suggest(trial, key, spec) for key, spec in section.space.items()}
        run_dir = parent.tune / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            settings = trial_config(config, params, run_dir)
            link_simulations(settings, parent)
            run_pipeline(
                settings,
                f"{source} (trial {trial.number})",
                only=TRIAL_STAGES,
                progress=progress,
                echo=lambda line: echo(f"trial {trial.number}: {line}"),
            )
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except (ValueError, RuntimeError, ArithmeticError) as err:
            trial.set_user_attr("error", str(err))
            echo(f"trial {trial.number}: failed: {err}")
            raise
        scores = trial_scores(run_dir)
        for name, value in scores.items():
            trial.set_user_attr(name, value)
        score = scores["estimator_val_loss"] if config.estimator is not None else scores["compressor_val_loss"]
        if score is None or not math.isfinite(score):
            raise ValueError(f"trial {trial.number}: no finite validation loss in {run_dir}")
        echo(f"trial {trial.number}: validation loss {score:.6g} with {params}")
        return score

    return objective


def run_trials(config, source: str = "config", *, worker: int = 0, progress: bool = False, echo=print) -> int:
    """Run trials of the config's study until ``tune.trials`` count; returns how many this call ran."""
    section = _section(config)
    study, _ = open_study(config, worker=worker)
    objective = _objective(config, source, progress, echo)
    ran = 0
    while _counted(study) < section.trials:
        study.optimize(objective, n_trials=1, catch=(ValueError, RuntimeError, ArithmeticError))
        ran += 1
    return ran


def _worker_command(source: str, run_dir: str, worker: int) -> list[str]:
    return [sys.executable, "-m", "cosmosbi", "tune", source, "--run-dir", run_dir, "--worker", str(worker), "--quiet"]


def tune(config, source: str, *, progress: bool = True, echo=print, wait_s: float = 0.0) -> dict:
    """Simulate the parent run's datasets, run the search (``parallel`` processes) and write the report.

    ``source`` is the config file (worker processes read it). Returns the report (see :func:`write_report`).
    """
    section = _section(config)
    parent = RunLayout(config.run_dir)
    run_pipeline(config, source, only=["simulate"], progress=progress, echo=echo, wait_s=wait_s)
    with run_lock(parent.locks, shared=True, wait_s=wait_s):
        study, storage = open_study(config)
        requeued = _requeue_interrupted(study, storage)
        if requeued:
            echo(f"{requeued} interrupted trial(s) queued again")
        workers = [
            subprocess.Popen(_worker_command(source, config.run_dir, k))
            for k in range(1, section.parallel)
            if _counted(study) + k < section.trials
        ]
        try:
            run_trials(config, source, worker=0, progress=progress, echo=echo)
        finally:
            codes = [w.wait() for w in workers]
        failed = [k + 1 for k, code in enumerate(codes) if code != 0]
        if failed:
            raise RuntimeError(
                f"tune worker(s) {failed} failed (exit codes {[codes[k - 1] for k in failed]}); "
                f"rerun `cosmosbi tune {source}` to resume"
            )
        return write_report(config)


def write_report(config) -> dict:
    """Write results.csv, results.json, best.yaml and tune.png to ``RUN_DIR/tune``; returns the
    results ({"trials": rows, "best": best row or None})."""
    from optuna.trial import TrialState

    layout = RunLayout(config.run_dir)
    study, _ = open_study(config)
    keys = list(_section(config).space)
    rows = []
    for t in study.trials:
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "score": t.value,
                **{k: t.params.get(k) for k in keys},
                "compressor_val_loss": t.user_attrs.get("compressor_val_loss"),
                "estimator_val_loss": t.user_attrs.get("estimator_val_loss"),
                "seconds": None if t.duration is None else round(t.duration.total_seconds(), 2),
                "run_dir": t.user_attrs.get("run_dir"),
                "error": t.user_attrs.get("error"),
            }
        )
    complete = [r for r in rows if r["state"] == TrialState.COMPLETE.name.lower()]
    best = min(complete, key=lambda r: r["score"]) if complete else None
    objective = "estimator validation loss" if config.estimator is not None else "compressor validation loss"
    results = {"objective": objective, "best": best, "trials": rows}
    atomic_write_json(layout.tune / "results.json", results)
    with atomic_path(layout.tune / "results.csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
            writer.writeheader()
            writer.writerows(rows)
    if best is not None:
        text = io.StringIO()
        text.write(
            f"# best of {len(complete)} tune trial(s): trial {best['trial']}, {results['objective']} "
            f"{best['score']:.6g}\n"
        )
        yaml.safe_dump(best_config(config, {k: best[k] for k in keys}), text, sort_keys=False)
        with atomic_path(layout.tune / "best.yaml") as tmp:
            tmp.write_text(text.getvalue())
        plot_trials(complete, keys, layout.tune / "tune.png", results["objective"])
    return results


def plot_trials(rows: list[dict], keys: list[str], path: Path, objective: str) -> None:
    """Score against trial number (with the running best) and against each searched setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(3.6 * (1 + len(keys)), 3.2), squeeze=False)
    numbers = [r["trial"] for r in rows]
    scores = [r["score"] for r in rows]
    ax = axes[0, 0]
    ax.plot(numbers, scores, "o", label="trial")
    ax.step(numbers, np.minimum.accumulate(scores), where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.legend()
    for ax, key in zip(axes[0, 1:], keys):
        values = [r[key] for r in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            ax.plot(values, scores, "o")
        else:
            labels = sorted({str(v) for v in values})
            ax.plot([labels.index(str(v)) for v in values], scores, "o")
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
