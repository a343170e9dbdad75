"""``cosmosbi run``: an analysis as stages that are skipped when their inputs have not changed.

The stages of a config, in order (each only when its section is present):

=================  ======================================  ==================================
stage              writes (under RUN_DIR)                  depends on
=================  ======================================  ==================================
``simulate:NAME``  ``sims/NAME``                           simulator, prior, datasets.NAME
``compress``       ``compressor``                          compressor + its training dataset
``summarise:NAME`` ``summaries/NAME``                      the compressor + dataset NAME
``estimate``       ``estimator``                           estimator + its training data
``validate``       ``validation`` (metrics + HTML report)  validation + estimator + test data
``baseline``       ``baseline`` (metrics + triangle plot)  baseline + estimator + its datasets
``sample``         ``posterior``                           observations + estimator
=================  ======================================  ==================================

Each stage has a **key**: the hash of the config part it depends on and of the keys of the
stages it reads. ``RUN_DIR/stages/STAGE.json`` records the key, the status (``running`` or
``done``), the times and the seconds spent. Rerunning skips a stage whose key is unchanged and
done, and resumes one that was interrupted (simulations from their part files, the
compressor from its checkpoint). When a key changes, the stage's previous artifacts are moved
to ``RUN_DIR/stages/previous/STAGE-KEY/`` (nothing is deleted) and the stage reruns, and so
does every stage downstream of it; a later config whose key matches an archived one gets
those artifacts back instead of recomputing them. Raising a dataset's ``n`` keeps its
simulations and adds the missing ones.

``RUN_DIR/run.json`` keeps the provenance: the config, its source file, the seeds, the
package versions, the host and, for every invocation, which stages ran and how long each took.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cosmosbi.files import atomic_write_json, config_hash, provenance, read_json

__all__ = ["STAGE_KINDS", "Stage", "plan_stages", "run_pipeline", "stage_status", "run_record"]

log = logging.getLogger("cosmosbi.pipeline")

STAGE_KINDS = ("simulate", "compress", "estimate", "validate", "baseline", "sample")
RUN_RECORD = "run.json"
# settings that change where or how fast a stage runs, not what it computes
_NOT_HASHED = {"device", "num_workers", "num_threads", "mixed_precision", "in_memory_bytes"}


@dataclass(frozen=True)
class Stage:
    """One stage of an analysis: its name (``simulate:train``, ``compress``, ...), kind, key,
    the config part the key hashes, its artifact paths (relative to RUN_DIR) and the stages it needs."""

    name: str
    kind: str
    key: str
    part: dict = field(repr=False)
    paths: tuple[str, ...]
    needs: tuple[str, ...]

    @property
    def file_name(self) -> str:
        return self.name.replace(":", "-")


def _without(data: dict, keys) -> dict:
    return {k: (_without(v, keys) if isinstance(v, dict) else v) for k, v in data.items() if k not in keys}


def _file_digest(path: str) -> str | None:
    """Hash of a file's bytes (observations are inputs like any config value), None if absent."""
    import hashlib

    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None


def plan_stages(config) -> list[Stage]:
    """The stages of ``config`` in the order they run, with their keys."""
    dump = config.model_dump(mode="json")
    stages: dict[str, Stage] = {}

    def add(name: str, kind: str, part: dict, paths: list[str], needs: list[str]) -> None:
        needs = list(dict.fromkeys(needs))
        full = {"stage": kind, **part, "needs": {n: stages[n].key for n in needs}}
        stages[name] = Stage(name, kind, config_hash(full), full, tuple(paths), tuple(needs))

    for name, dataset in dump["datasets"].items():
        part = {"simulator": dataset["simulator"] or dump["simulator"], "prior": dump["prior"], **_without(dataset, {"simulator"})}
        add(f"simulate:{name}", "simulate", part, [f"sims/{name}"], [])

    uses_summaries = config.estimator is not None and config.estimator.summary == "compressor"

    def data_stages(names: list[str]) -> list[str]:
        """The stages that make datasets ``names`` as the estimator reads them."""
        return [f"{'summarise' if uses_summaries else 'simulate'}:{n}" for n in names]

    if config.compressor is not None:
        section = config.compressor
        add("compress", "compress", {"compressor": _without(dump["compressor"], _NOT_HASHED | {"apply_to"})},
            ["compressor"], [f"simulate:{section.train_on}"])
        targets = list(section.apply_to or config.datasets)
        if uses_summaries:
            v = config.validation
            targets += [config.estimator.dataset, *([v.test, *v.shift, *([v.exact_on] if v.exact_on else [])] if v is not None else [])]
            targets += [config.baseline.test] if config.baseline is not None else []
        for name in dict.fromkeys(targets):
            add(f"summarise:{name}", "compress", {}, [f"summaries/{name}"], ["compress", f"simulate:{name}"])
    if config.estimator is not None:
        section = config.estimator
        add("estimate", "estimate", {"estimator": _without(dump["estimator"], _NOT_HASHED | {"n_samples"})},
            ["estimator"], data_stages([section.dataset]))
        if config.validation is not None:
            v = config.validation
            shifted = [section.dataset, *v.shift] if v.shift else []
            shown = [v.exact_on] if v.exact_on else []
            add("validate", "validate", {"validation": dump["validation"]}, ["validation"],
                ["estimate", *data_stages([v.test, *shifted, *shown]), *(f"simulate:{n}" for n in [v.test, *shown] if uses_summaries)])
        if config.baseline is not None:
            b = config.baseline
            add("baseline", "baseline", {"baseline": dump["baseline"]}, ["baseline"],
                ["estimate", *data_stages([b.test]), *(f"simulate:{n}" for n in (b.fiducial, b.mean_dataset, b.test))])
        if config.observations:
            observations = {}
            for name, obs in dump["observations"].items():
                observations[name] = {**obs, "file_digest": _file_digest(obs["file"]) if obs["file"] else None}
            from_datasets = [o.dataset for o in config.observations.values() if o.dataset is not None]
            add("sample", "sample", {"observations": observations, "n_samples": section.n_samples}, ["posterior"],
                ["estimate", *(f"simulate:{n}" for n in from_datasets)])
    return list(stages.values())


# ----------------------------------------------------------------------------- records


def _record_path(run_dir: Path, stage: Stage) -> Path:
    return run_dir / "stages" / f"{stage.file_name}.json"


def _read_record(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _archive(run_dir: Path, stage: Stage, record: dict | None) -> Path | None:
    """Move the stage's artifacts (and record) to stages/previous/STAGE-KEY; returns where."""
    present = [p for p in stage.paths if (run_dir / p).exists()]
    if not present and record is None:
        return None
    label = record["key"] if record is not None else "unrecorded-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = run_dir / "stages" / "previous" / f"{stage.file_name}-{label}"
    if target.exists():  # an older archive of the same key: the newer artifacts replace it
        shutil.rmtree(target)
    for rel in present:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).rename(target / rel)
    target.mkdir(parents=True, exist_ok=True)
    if record is not None:
        _record_path(run_dir, stage).rename(target / "stage.json")
    log.info("%s: settings changed; previous artifacts moved to %s", stage.name, target)
    return target


def _restore(run_dir: Path, stage: Stage) -> dict | None:
    """Bring back archived artifacts with this stage's key; returns their record (None if none)."""
    source = run_dir / "stages" / "previous" / f"{stage.file_name}-{stage.key}"
    if not (source / "stage.json").is_file():
        return None
    for rel in stage.paths:
        if (source / rel).exists():
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (source / rel).rename(run_dir / rel)
    record = read_json(source / "stage.json")
    atomic_write_json(_record_path(run_dir, stage), record)
    shutil.rmtree(source)
    log.info("%s: artifacts of an earlier run with the same settings restored from %s", stage.name, source)
    return record


def _extends(record: dict, stage: Stage) -> bool:
    """Whether a simulate stage only raised n: its simulations are kept and the missing ones added."""
    if stage.kind != "simulate" or record.get("kind") != "simulate":
        return False
    old, new = record.get("part", {}), stage.part
    return _without(old, {"n"}) == _without(new, {"n"}) and new["n"] >= old.get("n", 0)


def _prepare(run_dir: Path, stage: Stage) -> str:
    """Decide whether ``stage`` runs ("run") or is skipped ("skip"); archive stale artifacts.

    Writes the ``running`` record of a stage that runs.
    """
    path = _record_path(run_dir, stage)
    record = _read_record(path)
    if record is not None and record["key"] == stage.key:
        if record["status"] == "done" and all((run_dir / p).exists() for p in stage.paths):
            return "skip"
    elif record is not None and _extends(record, stage):
        pass
    elif record is not None or stage.kind != "simulate":
        # a simulate stage without a record (e.g. after `cosmosbi simulate`) resumes its
        # dataset when it matches; the runner refuses one that does not
        _archive(run_dir, stage, record)
        restored = _restore(run_dir, stage)
        if restored is not None and restored["status"] == "done":
            return "skip"
    _write_record(run_dir, stage, "running", started=time.time())
    return "run"


def _write_record(run_dir: Path, stage: Stage, status: str, *, started: float, seconds: float | None = None, message: str | None = None) -> None:
    atomic_write_json(
        _record_path(run_dir, stage),
        {
            "stage": stage.name,
            "kind": stage.kind,
            "key": stage.key,
            "status": status,
            "started": _iso(started),
            "finished": _iso(time.time()) if status == "done" else None,
            "seconds": None if seconds is None else round(seconds, 2),
            "message": message,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "needs": {n: stage.part["needs"][n] for n in stage.needs},
            "part": stage.part,
        },
    )


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _seeds(config) -> dict:
    seeds = {f"datasets.{n}": d.seed for n, d in config.datasets.items()}
    if config.compressor is not None:
        seeds["compressor.train"] = config.compressor.train.seed
    if config.estimator is not None:
        seeds["estimator"] = config.estimator.seed
    if config.validation is not None:
        seeds["validation"] = config.validation.seed
    return seeds


def _update_run_record(run_dir: Path, config, source: str, invocation: dict) -> None:
    path = run_dir / RUN_RECORD
    previous = _read_record(path) or {}
    atomic_write_json(
        path,
        {
            "config_source": source,
            "config": config.model_dump(mode="json"),
            "config_hash": config_hash(config.model_dump(mode="json")),
            "seeds": _seeds(config),
            "created": previous.get("created") or provenance(),
            "invocations": [*previous.get("invocations", []), invocation],
        },
    )


def run_record(run_dir: str | Path) -> dict:
    """The provenance record ``RUN_DIR/run.json`` of a run directory."""
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        raise ValueError(f"{run_dir}: not a `cosmosbi run` directory (no {RUN_RECORD})")
    return read_json(path)


# ----------------------------------------------------------------------------- running


def _run_stage(stage: Stage, config, source: str, comm, progress: bool) -> str:
    """Run one stage; returns a one-line description of what it produced."""
    from cosmosbi import stages

    if stage.kind == "simulate":
        return stages.simulate(config, [stage.name.split(":", 1)[1]], source, comm=comm, progress=progress)
    if comm.Get_rank() != 0:
        return ""
    if stage.name.startswith("summarise:"):
        return stages.summarise(config, stage.name.split(":", 1)[1], source)
    if stage.kind == "compress":
        return stages.compress(config, source, progress=progress, summaries=False)
    return {"estimate": stages.estimate, "validate": stages.validate, "baseline": stages.baseline,
            "sample": stages.sample}[stage.kind](config, source, progress=progress)


def run_pipeline(config, source: str = "config", *, only: list[str] | None = None, comm=None, progress: bool = True,
                 echo: Callable[[str], None] = print) -> list[dict]:
    """Run the stages of ``config`` that are not done (all, or those of the kinds in ``only``).

    Under MPI every rank calls it: the simulate stages use every rank, the later stages run on
    rank 0 while the others wait. Stages named in ``only`` need their upstream stages done.
    Returns, per stage considered, {"stage", "action" ("ran" | "skipped"), "seconds", "message"}.
    """
    from cosmosbi.simulators.mpi import get_comm

    comm = get_comm(comm)
    rank = comm.Get_rank()
    unknown = sorted(set(only or []) - set(STAGE_KINDS))
    if unknown:
        raise ValueError(f"--stage: unknown stage {unknown[0]!r}; stages are {list(STAGE_KINDS)}")
    stages = plan_stages(config)
    by_name = {s.name: s for s in stages}
    selected = [s for s in stages if only is None or s.kind in only]
    if only is not None and not selected:
        raise ValueError(f"{source}: the config has no {' or '.join(only)} stage; its stages are {[s.name for s in stages]}")
    run_dir = Path(config.run_dir)
    outcomes: list[dict] = []
    started_all = time.time()
    for stage in selected:
        decision = None
        if rank == 0:
            try:
                missing = [n for n in stage.needs if by_name[n] not in selected and not _is_done(run_dir, by_name[n])]
                if missing:
                    raise ValueError(f"stage {stage.name} needs {', '.join(missing)}, which is not done (run `cosmosbi run {source}` or that stage first)")
                run_dir.mkdir(parents=True, exist_ok=True)
                decision = _prepare(run_dir, stage)
            except (ValueError, OSError) as err:
                decision = f"error: {err}"
        decision = comm.bcast(decision, root=0)
        if decision.startswith("error: "):
            raise ValueError(decision[len("error: "):])
        if decision == "skip":
            record = _read_record(_record_path(run_dir, stage)) if rank == 0 else {}
            outcomes.append({"stage": stage.name, "action": "skipped", "seconds": 0.0, "message": (record or {}).get("message")})
            if rank == 0:
                echo(f"[{stage.name}] done earlier with these settings (key {stage.key}); skipped")
            continue
        if rank == 0:
            echo(f"[{stage.name}] running (key {stage.key})")
        started = time.time()
        message = _run_stage(stage, config, source, comm, progress)
        comm.barrier()
        seconds = time.time() - started
        if rank == 0:
            _write_record(run_dir, stage, "done", started=started, seconds=seconds, message=message)
            echo(f"[{stage.name}] {message} ({seconds:.1f} s)")
        outcomes.append({"stage": stage.name, "action": "ran", "seconds": round(seconds, 2), "message": message})
    if rank == 0:
        invocation = {**provenance(), "n_ranks": comm.Get_size(), "only": only, "seconds": round(time.time() - started_all, 2),
                      "stages": {o["stage"]: {"action": o["action"], "seconds": o["seconds"]} for o in outcomes}}
        _update_run_record(run_dir, config, source, invocation)
    return outcomes


def _is_done(run_dir: Path, stage: Stage) -> bool:
    record = _read_record(_record_path(run_dir, stage))
    return record is not None and record["key"] == stage.key and record["status"] == "done"


# ----------------------------------------------------------------------------- status


def stage_status(run_dir: str | Path, config=None) -> list[dict]:
    """State of every stage of a run directory, for ``cosmosbi status``.

    ``config`` (default: the one recorded in ``RUN_DIR/run.json``) gives the stages and keys;
    with a changed config, stages whose key differs show as ``stale`` (they would rerun).
    Each row: {"stage", "state" (done | running | interrupted | stale | pending), "key",
    "finished", "seconds", "message", "progress"}.
    """
    run_dir = Path(run_dir)
    if config is None:
        from cosmosbi.config import SimulateConfig

        config = SimulateConfig.model_validate(run_record(run_dir)["config"])
    rows = []
    for stage in plan_stages(config):
        record = _read_record(_record_path(run_dir, stage))
        if record is None:
            state = "pending"
        elif record["key"] != stage.key:
            state = "stale"
        elif record["status"] == "done":
            state = "done"
        else:
            state = "running" if _looks_alive(record) else "interrupted"
        rows.append({
            "stage": stage.name, "state": state, "key": stage.key,
            "finished": (record or {}).get("finished"), "seconds": (record or {}).get("seconds"),
            "message": (record or {}).get("message"), "progress": _progress(run_dir, stage) if state != "done" else None,
        })
    return rows


def _looks_alive(record: dict) -> bool:
    """Whether the process that wrote a ``running`` record is still alive (on another host: assumed so)."""
    import os
    import socket

    pid, host = record.get("pid"), record.get("host")
    if pid is None or host != socket.gethostname():
        return host is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _progress(run_dir: Path, stage: Stage) -> str | None:
    """What an unfinished stage has: simulations stored, or compressor epochs checkpointed."""
    if stage.kind == "simulate":
        sims = run_dir / stage.paths[0]
        parts = list((sims / "parts").glob("part-*.h5")) if (sims / "parts").is_dir() else []
        manifest = sims / "manifest.json"
        if manifest.is_file():
            counts = read_json(manifest).get("counts", {})
            return f"{counts.get('simulated', 0)} simulated, {counts.get('failed', 0)} failed, {counts.get('missing', '?')} missing; {len(parts)} part file(s) not merged yet"
        return None
    if stage.kind == "compress":
        history = run_dir / "compressor" / "history.json"
        if history.is_file():
            return f"{len(read_json(history))} epoch(s) checkpointed"
    return None


def format_status(rows: list[dict]) -> str:
    """A table of :func:`stage_status` rows."""
    lines = [f"{'stage':<22} {'state':<12} {'key':<17} {'seconds':>8}  details"]
    for row in rows:
        details = row["message"] if row["state"] == "done" else (row["progress"] or "")
        if row["state"] == "interrupted":
            details = "started, not finished (running now, or killed: rerun to resume)" + (f"; {details}" if details else "")
        if row["state"] == "stale":
            details = "settings changed: would rerun"
        seconds = f"{row['seconds']:.1f}" if row["seconds"] is not None else "-"
        lines.append(f"{row['stage']:<22} {row['state']:<12} {row['key']:<17} {seconds:>8}  {details or ''}")
    return "\n".join(lines)
