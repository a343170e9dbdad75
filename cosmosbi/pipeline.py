"""``cosmosbi run``: an analysis as stages that are skipped when their inputs have not changed.

The stages of a config, in order (each only when its config section is present), are declared
by the modules of :mod:`cosmosbi.stages` (see the table there); this module plans them (keys)
and runs those that are not done.

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
from pathlib import Path
from typing import Callable

from cosmosbi.files import atomic_write_json, config_hash, provenance, read_json
from cosmosbi.layout import RunLayout
from cosmosbi.stages import STAGE_KINDS, STAGE_TYPES, Stage

__all__ = ["STAGE_KINDS", "Stage", "plan_stages", "run_pipeline", "stage_status", "format_status", "run_record"]

log = logging.getLogger("cosmosbi.pipeline")


def plan_stages(config, layout: RunLayout | None = None) -> list[Stage]:
    """The stages of ``config`` in the order they run, with their keys (paths under ``layout``,
    default: the config's run directory)."""
    layout = layout or RunLayout(config.run_dir)
    dump = config.model_dump(mode="json")
    stages: dict[str, Stage] = {}
    for stage_type in STAGE_TYPES:
        for d in stage_type.declare(config, dump, layout):
            needs = tuple(dict.fromkeys(d.needs))
            full = {"stage": stage_type.kind, **d.part, "needs": {n: stages[n].key for n in needs}}
            stages[d.name] = Stage(d.name, stage_type.kind, config_hash(full), full, tuple(d.paths), needs, stage_type)
    return list(stages.values())


# ----------------------------------------------------------------------------- records


def _read_record(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _archive(layout: RunLayout, stage: Stage, record: dict | None) -> Path | None:
    """Move the stage's artifacts (and record) to stages/previous/STAGE-KEY; returns where."""
    present = [p for p in stage.paths if p.exists()]
    if not present and record is None:
        return None
    label = record["key"] if record is not None else "unrecorded-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = layout.archive(stage.file_name, label)
    if target.exists():  # an older archive of the same key: the newer artifacts replace it
        shutil.rmtree(target)
    for path in present:
        (target / layout.relative(path)).parent.mkdir(parents=True, exist_ok=True)
        path.rename(target / layout.relative(path))
    target.mkdir(parents=True, exist_ok=True)
    if record is not None:
        layout.stage_record(stage.file_name).rename(target / "stage.json")
    log.info("%s: settings changed; previous artifacts moved to %s", stage.name, target)
    return target


def _restore(layout: RunLayout, stage: Stage) -> dict | None:
    """Bring back archived artifacts with this stage's key; returns their record (None if none)."""
    source = layout.archive(stage.file_name, stage.key)
    if not (source / "stage.json").is_file():
        return None
    for path in stage.paths:
        archived = source / layout.relative(path)
        if archived.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            archived.rename(path)
    record = read_json(source / "stage.json")
    atomic_write_json(layout.stage_record(stage.file_name), record)
    shutil.rmtree(source)
    log.info("%s: artifacts of an earlier run with the same settings restored from %s", stage.name, source)
    return record


def _extends(record: dict, stage: Stage) -> bool:
    """Whether a simulate stage only raised n: its simulations are kept and the missing ones added."""
    if stage.kind != "simulate" or record.get("kind") != "simulate":
        return False
    old, new = record.get("part", {}), stage.part
    return {k: v for k, v in old.items() if k != "n"} == {k: v for k, v in new.items() if k != "n"} and new[
        "n"
    ] >= old.get("n", 0)


def _prepare(layout: RunLayout, stage: Stage) -> str:
    """Decide whether ``stage`` runs ("run") or is skipped ("skip"); archive stale artifacts.

    Writes the ``running`` record of a stage that runs.
    """
    record = _read_record(layout.stage_record(stage.file_name))
    if record is not None and record["key"] == stage.key:
        if record["status"] == "done" and all(p.exists() for p in stage.paths):
            return "skip"
    elif record is not None and _extends(record, stage):
        pass
    elif record is not None or stage.kind != "simulate":
        # a simulate stage without a record (e.g. after `cosmosbi simulate`) resumes its
        # dataset when it matches; the runner refuses one that does not
        _archive(layout, stage, record)
        restored = _restore(layout, stage)
        if restored is not None and restored["status"] == "done":
            return "skip"
    _write_record(layout, stage, "running", started=time.time())
    return "run"


def _write_record(
    layout: RunLayout,
    stage: Stage,
    status: str,
    *,
    started: float,
    seconds: float | None = None,
    message: str | None = None,
) -> None:
    atomic_write_json(
        layout.stage_record(stage.file_name),
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


def _update_run_record(layout: RunLayout, config, source: str, invocation: dict) -> None:
    previous = _read_record(layout.run_record) or {}
    atomic_write_json(
        layout.run_record,
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
    path = RunLayout(run_dir).run_record
    if not path.is_file():
        raise ValueError(f"{run_dir}: not a `cosmosbi run` directory (no {path.name})")
    return read_json(path)


# ----------------------------------------------------------------------------- running


def run_pipeline(
    config,
    source: str = "config",
    *,
    only: list[str] | None = None,
    comm=None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[dict]:
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
    layout = RunLayout(config.run_dir)
    stages = plan_stages(config, layout)
    by_name = {s.name: s for s in stages}
    selected = [s for s in stages if only is None or s.kind in only]
    if only is not None and not selected:
        raise ValueError(
            f"{source}: the config has no {' or '.join(only)} stage; its stages are {[s.name for s in stages]}"
        )
    outcomes: list[dict] = []
    started_all = time.time()
    for stage in selected:
        decision = None
        if rank == 0:
            try:
                missing = [n for n in stage.needs if by_name[n] not in selected and not _is_done(layout, by_name[n])]
                if missing:
                    raise ValueError(
                        f"stage {stage.name} needs {', '.join(missing)}, which is not done "
                        f"(run `cosmosbi run {source}` or that stage first)"
                    )
                layout.root.mkdir(parents=True, exist_ok=True)
                decision = _prepare(layout, stage)
            except (ValueError, OSError) as err:
                decision = f"error: {err}"
        decision = comm.bcast(decision, root=0)
        if decision.startswith("error: "):
            raise ValueError(decision[len("error: ") :])
        if decision == "skip":
            record = _read_record(layout.stage_record(stage.file_name)) if rank == 0 else {}
            outcomes.append(
                {"stage": stage.name, "action": "skipped", "seconds": 0.0, "message": (record or {}).get("message")}
            )
            if rank == 0:
                echo(f"[{stage.name}] done earlier with these settings (key {stage.key}); skipped")
            continue
        if rank == 0:
            echo(f"[{stage.name}] running (key {stage.key})")
        started = time.time()
        message = ""
        if stage.type.all_ranks or rank == 0:
            message = stage.type.run(stage, config, layout, source, comm=comm, progress=progress)
        comm.barrier()
        seconds = time.time() - started
        if rank == 0:
            _write_record(layout, stage, "done", started=started, seconds=seconds, message=message)
            echo(f"[{stage.name}] {message} ({seconds:.1f} s)")
        outcomes.append({"stage": stage.name, "action": "ran", "seconds": round(seconds, 2), "message": message})
    if rank == 0:
        invocation = {
            **provenance(),
            "n_ranks": comm.Get_size(),
            "only": only,
            "seconds": round(time.time() - started_all, 2),
            "stages": {o["stage"]: {"action": o["action"], "seconds": o["seconds"]} for o in outcomes},
        }
        _update_run_record(layout, config, source, invocation)
    return outcomes


def _is_done(layout: RunLayout, stage: Stage) -> bool:
    record = _read_record(layout.stage_record(stage.file_name))
    return record is not None and record["key"] == stage.key and record["status"] == "done"


# ----------------------------------------------------------------------------- status


def stage_status(run_dir: str | Path, config=None) -> list[dict]:
    """State of every stage of a run directory, for ``cosmosbi status``.

    ``config`` (default: the one recorded in ``RUN_DIR/run.json``) gives the stages and keys;
    with a changed config, stages whose key differs show as ``stale`` (they would rerun).
    Each row: {"stage", "state" (done | running | interrupted | stale | pending), "key",
    "finished", "seconds", "message", "progress"}.
    """
    layout = RunLayout(run_dir)
    if config is None:
        from cosmosbi.config import SimulateConfig

        config = SimulateConfig.model_validate(run_record(run_dir)["config"])
    rows = []
    for stage in plan_stages(config, layout):
        record = _read_record(layout.stage_record(stage.file_name))
        if record is None:
            state = "pending"
        elif record["key"] != stage.key:
            state = "stale"
        elif record["status"] == "done":
            state = "done"
        else:
            state = "running" if _looks_alive(record) else "interrupted"
        progress = stage.type.progress(stage, layout) if state != "done" and stage.type.progress is not None else None
        rows.append(
            {
                "stage": stage.name,
                "state": state,
                "key": stage.key,
                "finished": (record or {}).get("finished"),
                "seconds": (record or {}).get("seconds"),
                "message": (record or {}).get("message"),
                "progress": progress,
            }
        )
    return rows


def _looks_alive(record: dict) -> bool:
    """Whether the process that wrote a ``running`` record is still alive (on another host: assumed so)."""
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


def format_status(rows: list[dict]) -> str:
    """A table of :func:`stage_status` rows."""
    lines = [f"{'stage':<22} {'state':<12} {'key':<17} {'seconds':>8}  details"]
    for row in rows:
        details = row["message"] if row["state"] == "done" else (row["progress"] or "")
        if row["state"] == "interrupted":
            details = "started, not finished (running now, or killed: rerun to resume)" + (
                f"; {details}" if details else ""
            )
        if row["state"] == "stale":
            details = "settings changed: would rerun"
        seconds = f"{row['seconds']:.1f}" if row["seconds"] is not None else "-"
        lines.append(f"{row['stage']:<22} {row['state']:<12} {row['key']:<17} {seconds:>8}  {details or ''}")
    return "\n".join(lines)
