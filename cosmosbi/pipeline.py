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
import uuid
from pathlib import Path
from typing import Callable

from cosmosbi.artifacts import changed_files, fingerprint
from cosmosbi.files import atomic_write_json, config_hash, provenance, read_json
from cosmosbi.layout import RunLayout
from cosmosbi.lock import DEFAULT_STALE_AFTER_S, pid_alive, run_lock
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


def _load_record(path: Path) -> tuple[dict | None, str | None]:
    """A stage record and, for a record that cannot be used, why (it then counts as absent)."""
    if not path.is_file():
        return None, None
    try:
        record = read_json(path)
    except (ValueError, OSError) as err:
        return None, f"{path}: not a readable stage record ({err}); treated as not done"
    usable = (
        isinstance(record, dict) and isinstance(record.get("key"), str) and record.get("status") in ("running", "done")
    )
    if not usable:
        return None, f"{path}: malformed stage record (no key or status); treated as not done"
    return record, None


def _read_record(path: Path) -> dict | None:
    return _load_record(path)[0]


def _archive(layout: RunLayout, stage: Stage, record: dict | None, label: str | None = None) -> Path | None:
    """Move the stage's artifacts (and record) to stages/previous/STAGE-LABEL (default label: the
    record's key, which a later config with that key restores); returns where."""
    present = [p for p in stage.paths if p.exists()]
    if not present and record is None:
        return None
    if label is None:
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
    log.info("%s: previous artifacts moved to %s", stage.name, target)
    return target


def _restore(layout: RunLayout, stage: Stage) -> dict | None:
    """Bring back archived artifacts with this stage's key; returns their record (None if none)."""
    source = layout.archive(stage.file_name, stage.key)
    record, _ = _load_record(source / "stage.json")
    if record is None:
        return None
    for path in stage.paths:
        archived = source / layout.relative(path)
        if archived.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            archived.rename(path)
    atomic_write_json(layout.stage_record(stage.file_name), record)
    shutil.rmtree(source)
    log.info("%s: artifacts of an earlier run with the same settings restored from %s", stage.name, source)
    return record


def _extends(record: dict, stage: Stage) -> bool:
    """Whether a simulate stage only raised n: its simulations are kept and the missing ones added."""
    if stage.kind != "simulate" or record.get("kind") != "simulate":
        return False
    old, new = record.get("part", {}), stage.part
    same = {k: v for k, v in old.items() if k != "n"} == {k: v for k, v in new.items() if k != "n"}
    return same and new["n"] >= old.get("n", 0)


def _changes(layout: RunLayout, stage: Stage, record: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """What happened since a done stage finished: its artifacts changed [(file, what)] and the
    stages it needs that were redone since (their records carry another ``done_id``). Records
    without fingerprints (made before they existed) report nothing."""
    changed = changed_files(record.get("artifacts") or {}, layout.root)
    redone = []
    for name, done_id in (record.get("needs_done") or {}).items():
        need, _ = _load_record(layout.stage_record(name.replace(":", "-")))
        if done_id is not None and need is not None and need.get("done_id") not in (None, done_id):
            redone.append(name)
    return changed, redone


def _damage_message(stage: Stage, layout: RunLayout, changed: list[tuple[str, str]]) -> str:
    files = "; ".join(f"{layout.root / name}: {what}" for name, what in changed[:5])
    more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
    return f"{files}{more} since stage {stage.name} finished"


def _prepare(layout: RunLayout, stage: Stage) -> tuple[str, str | None]:
    """Decide whether ``stage`` runs ("run") or is skipped ("skip"); archive stale artifacts.

    Writes the ``running`` record of a stage that runs. Returns (decision, a note for the user
    or None). A done stage whose artifacts changed reruns, or raises ValueError naming the file
    when its kind refuses damaged artifacts (simulations).
    """
    record, note = _load_record(layout.stage_record(stage.file_name))
    if record is not None and record["key"] == stage.key:
        if record["status"] == "done" and all(p.exists() for p in stage.paths):
            changed, redone = _changes(layout, stage, record)
            if not changed and not redone:
                return "skip", None
            if changed and stage.type.refuse_damaged:
                where = ", ".join(str(p) for p in stage.paths)
                raise ValueError(
                    f"{_damage_message(stage, layout, changed)}: its data can no longer be trusted; "
                    f"move {where} away (or delete it) and rerun to redo the stage"
                )
            reason = (
                _damage_message(stage, layout, changed) if changed else f"{', '.join(redone)} redone since it finished"
            )
            label = (
                f"{stage.key}-{'damaged' if changed else 'superseded'}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
            )
            target = _archive(layout, stage, None, label=label)
            note = f"{reason}; rerunning (the previous artifacts are in {target})"
    elif record is not None and _extends(record, stage):
        pass
    elif record is not None or stage.kind != "simulate":
        # a simulate stage without a record (e.g. after `cosmosbi simulate`) resumes its
        # dataset when it matches; the runner refuses one that does not
        _archive(layout, stage, record)
        restored = _restore(layout, stage)
        if restored is not None and restored["status"] == "done":
            return "skip", note
    _write_record(layout, stage, "running", started=time.time())
    return "run", note


def _write_record(
    layout: RunLayout,
    stage: Stage,
    status: str,
    *,
    started: float,
    seconds: float | None = None,
    message: str | None = None,
) -> None:
    record = {
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
    }
    if status == "done":
        # which completion of each input this one used, and what it wrote (see cosmosbi.artifacts)
        record["done_id"] = uuid.uuid4().hex[:16]
        record["needs_done"] = {
            n: (_read_record(layout.stage_record(n.replace(":", "-"))) or {}).get("done_id") for n in stage.needs
        }
        record["artifacts"] = fingerprint(stage.paths, layout.root, stage.type.unchecked)
    atomic_write_json(layout.stage_record(stage.file_name), record)


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


def _write_run_record(layout: RunLayout, config, source: str, invocation: dict, *, new: bool) -> None:
    """Write ``run.json`` with ``invocation`` appended (``new``) or replacing the last one."""
    previous = read_json(layout.run_record) if layout.run_record.is_file() else {}
    invocations = previous.get("invocations", [])
    invocations = [*invocations, invocation] if new or not invocations else [*invocations[:-1], invocation]
    atomic_write_json(
        layout.run_record,
        {
            "config_source": source,
            "config": config.model_dump(mode="json"),
            "config_hash": config_hash(config.model_dump(mode="json")),
            "seeds": _seeds(config),
            "created": previous.get("created") or provenance(),
            "invocations": invocations,
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
    wait_s: float = 0.0,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
) -> list[dict]:
    """Run the stages of ``config`` that are not done (all, or those of the kinds in ``only``).

    Under MPI every rank calls it: the simulate stages use every rank, the later stages run on
    rank 0 while the others wait. Stages named in ``only`` need their upstream stages done.
    The run directory is held exclusively meanwhile (:mod:`cosmosbi.lock`): another holder
    makes it wait up to ``wait_s`` seconds, then raise :class:`~cosmosbi.lock.RunLocked`.
    Returns, per stage considered, {"stage", "action" ("ran" | "skipped"), "seconds", "message"}.
    """
    from cosmosbi.simulators.mpi import get_comm

    comm = get_comm(comm)
    unknown = sorted(set(only or []) - set(STAGE_KINDS))
    if unknown:
        raise ValueError(f"--stage: unknown stage {unknown[0]!r}; stages are {list(STAGE_KINDS)}")
    layout = RunLayout(config.run_dir)
    stages = plan_stages(config, layout)
    selected = [s for s in stages if only is None or s.kind in only]
    if only is not None and not selected:
        raise ValueError(
            f"{source}: the config has no {' or '.join(only)} stage; its stages are {[s.name for s in stages]}"
        )
    with run_lock(layout.locks, wait_s=wait_s, stale_after_s=stale_after_s, comm=comm) as lock:
        return _run_stages(config, source, layout, stages, selected, only, comm, progress, echo, lock)


def _run_stages(config, source, layout, stages, selected, only, comm, progress, echo, lock) -> list[dict]:
    rank = comm.Get_rank()
    by_name = {s.name: s for s in stages}
    outcomes: list[dict] = []
    started_all = time.time()
    invocation = {
        **provenance(),
        "n_ranks": comm.Get_size(),
        "only": only,
        "seconds": None,
        "finished": None,
        "stages": {},
    }
    if rank == 0:  # run.json from the start, so that `cosmosbi status` works at any moment
        _write_run_record(layout, config, source, invocation, new=True)
    for stage in selected:
        decision = None
        if rank == 0:
            lock.refresh()
            try:
                missing = [n for n in stage.needs if by_name[n] not in selected and not _is_done(layout, by_name[n])]
                if missing:
                    raise ValueError(
                        f"stage {stage.name} needs {', '.join(missing)}, which is not done "
                        f"(run `cosmosbi run {source}` or that stage first)"
                    )
                decision, note = _prepare(layout, stage)
                if note:
                    echo(f"[{stage.name}] {note}")
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
        outcomes.append({"stage": stage.name, "action": "ran", "seconds": round(seconds, 2), "message": message})
        if rank == 0:
            _write_record(layout, stage, "done", started=started, seconds=seconds, message=message)
            echo(f"[{stage.name}] {message} ({seconds:.1f} s)")
            invocation["stages"] = {o["stage"]: {"action": o["action"], "seconds": o["seconds"]} for o in outcomes}
            _write_run_record(layout, config, source, invocation, new=False)
    if rank == 0:
        invocation.update(
            seconds=round(time.time() - started_all, 2),
            finished=_iso(time.time()),
            stages={o["stage"]: {"action": o["action"], "seconds": o["seconds"]} for o in outcomes},
        )
        _write_run_record(layout, config, source, invocation, new=False)
    return outcomes


def _is_done(layout: RunLayout, stage: Stage) -> bool:
    record = _read_record(layout.stage_record(stage.file_name))
    return record is not None and record["key"] == stage.key and record["status"] == "done"


# ----------------------------------------------------------------------------- status


def stage_status(run_dir: str | Path, config=None) -> list[dict]:
    """State of every stage of a run directory, for ``cosmosbi status``.

    ``config`` (default: the one recorded in ``RUN_DIR/run.json``) gives the stages and keys;
    with a changed config, stages whose key differs show as ``stale`` (they would rerun).
    Each row: {"stage", "state" (done | running | interrupted | stale | damaged | malformed |
    pending), "key", "finished", "seconds", "message", "progress", "problem"}. A done stage
    whose artifacts changed since is ``damaged`` (``problem`` names the files); one whose
    inputs were redone since is ``stale``.
    """
    layout = RunLayout(run_dir)
    if config is None:
        from cosmosbi.config import SimulateConfig

        config = SimulateConfig.model_validate(run_record(run_dir)["config"])
    rows = []
    for stage in plan_stages(config, layout):
        record, problem = _load_record(layout.stage_record(stage.file_name))
        if problem is not None:
            state = "malformed"
        elif record is None:
            state = "pending"
        elif record["key"] != stage.key:
            state, problem = "stale", "settings changed: would rerun"
        elif record["status"] == "done":
            changed, redone = _changes(layout, stage, record)
            missing = [p for p in stage.paths if not p.exists()]
            state = "done"
            if changed or missing:
                changed = changed or [(str(layout.relative(p)), "deleted") for p in missing]
                action = (
                    "would stop the run (redo it by moving the dataset away)"
                    if stage.type.refuse_damaged
                    else "would rerun"
                )
                state, problem = "damaged", f"{_damage_message(stage, layout, changed)}: {action}"
            elif redone:
                state, problem = "stale", f"{', '.join(redone)} redone since: would rerun"
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
                "problem": problem,
            }
        )
    return rows


def _looks_alive(record: dict) -> bool:
    """Whether the process that wrote a ``running`` record is still alive (on another host: assumed so)."""
    alive = pid_alive(record.get("pid"), record.get("host"))
    return alive if alive is not None else record.get("host") is not None


def format_status(rows: list[dict]) -> str:
    """A table of :func:`stage_status` rows."""
    lines = [f"{'stage':<22} {'state':<12} {'key':<17} {'seconds':>8}  details"]
    for row in rows:
        details = row["message"] if row["state"] == "done" else (row["progress"] or "")
        if row["state"] == "interrupted":
            details = "started, not finished (running now, or killed: rerun to resume)" + (
                f"; {details}" if details else ""
            )
        if row["state"] in ("stale", "damaged", "malformed"):
            details = row["problem"]
        seconds = f"{row['seconds']:.1f}" if row["seconds"] is not None else "-"
        lines.append(f"{row['stage']:<22} {row['state']:<12} {row['key']:<17} {seconds:>8}  {details or ''}")
    return "\n".join(lines)
