"""The stage layer: keys and run directories of the previous release, the import direction, the registry."""

import shutil
from pathlib import Path

import cosmosbi
from cosmosbi.cli import main
from cosmosbi.config import default_config_path, load_config
from cosmosbi.files import read_json
from cosmosbi.pipeline import plan_stages, run_pipeline, stage_status
from cosmosbi.stages import STAGE_KINDS, STAGE_TYPES

ROOT = Path(__file__).parents[2]
PACKAGE = Path(cosmosbi.__file__).parent
# a run directory made by the release before the stage layer (its figures and HTML report
# left out to keep it small), with its config and the keys that release gave the examples
OLD_RUN = Path(__file__).parent / "data" / "old_run"


def test_keys_are_those_of_the_previous_release():
    """Stage keys decide what reruns: the same configs must give the same keys."""
    for name, expected in read_json(OLD_RUN / "keys.json").items():
        path = ROOT / name if name.startswith("examples/") else default_config_path(Path(name).stem)
        assert {s.name: s.key for s in plan_stages(load_config(path))} == expected, name


def test_a_run_directory_of_the_previous_release_is_read_and_resumed(tmp_path, monkeypatch, capsys):
    shutil.copytree(OLD_RUN, tmp_path / "old")
    monkeypatch.chdir(tmp_path / "old")
    config = load_config("config.yaml")
    assert [s.kind for s in plan_stages(config)] == ["simulate"] * 3 + ["compress"] * 3 + [
        "estimate",
        "validate",
        "baseline",
        "sample",
    ]
    assert {r["stage"]: r["state"] for r in stage_status("run")} == {s.name: "done" for s in plan_stages(config)}
    records = {p.name: p.read_text() for p in Path("run/stages").glob("*.json")}
    outcomes = run_pipeline(config, "config.yaml", progress=False, echo=lambda line: None)
    assert {o["action"] for o in outcomes} == {"skipped"} and len(outcomes) == 10
    assert {p.name: p.read_text() for p in Path("run/stages").glob("*.json")} == records
    assert main(["status", "run"]) == 0
    out = capsys.readouterr().out
    assert out.count(" done ") == 10 and "last invocation" in out


def test_every_stage_module_is_registered_once_and_in_order():
    modules = {p.stem for p in (PACKAGE / "stages").glob("*.py")} - {"__init__", "base", "data"}
    assert sorted(t.name for t in STAGE_TYPES) == sorted(modules)
    assert STAGE_KINDS == ("simulate", "compress", "estimate", "validate", "baseline", "sample")


def test_mixed_precision_enters_the_compressor_key_only_when_switched_on():
    """bf16 training changes the weights; configs that leave it off keep the keys they had."""
    config = load_config(OLD_RUN / "config.yaml")
    keys = {s.name: s.key for s in plan_stages(config)}
    data = config.model_dump()
    data["compressor"]["train"]["mixed_precision"] = False
    assert {s.name: s.key for s in plan_stages(type(config).model_validate(data))} == keys
    data["compressor"]["train"]["mixed_precision"] = True
    switched = {s.name: s.key for s in plan_stages(type(config).model_validate(data))}
    changed = {name for name in keys if switched[name] != keys[name]}
    # the compressor and everything downstream of it; the simulations are untouched
    assert "compress" in changed and not any(name.startswith("simulate") for name in changed)
    assert changed == {s.name for s in plan_stages(config) if not s.name.startswith("simulate")}
