"""The package's import structure: every module imports on its own, and rooms import downward only.

Rooms, lowest first (a module may import from its own room and the rooms below it):

    helpers (files, cores, torch_runtime, layout, lock, artifacts) <- simulators <- compressors
    <- estimators <- analyses <- config <- stages <- pipeline <- slurm, tune <- cli

so the library (simulators, compressors, estimators, analyses) never imports the code that runs
configs (config, stages, pipeline, slurm, cli). A new top-level module must be given a room here.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cosmosbi

PACKAGE = Path(cosmosbi.__file__).parent
ROOMS = {
    "__init__": 0,
    "files": 0,
    "cores": 0,
    "torch_runtime": 0,
    "layout": 0,
    "lock": 0,
    "artifacts": 0,
    "simulators": 1,
    "compressors": 2,
    "estimators": 3,
    "analyses": 4,
    "config": 5,
    "stages": 6,
    "pipeline": 7,
    "slurm": 8,
    "tune": 8,
    "cli": 9,
    "__main__": 10,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    """'cosmosbi.estimators.npe' -> 'estimators'; 'cosmosbi' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def cosmosbi_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a cosmosbi module in ``path``, at any depth (lazy imports too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "cosmosbi"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "cosmosbi":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").is_file() or (
                    PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
                ).is_file()
                found.append((node.lineno, candidate if is_module else base))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_room():
    unknown = sorted({room_of(module_name(p)) for p in SOURCES} - set(ROOMS))
    assert not unknown, f"top-level modules without a room in tests/test_imports.py: {unknown}"


def test_rooms_import_downward_only():
    upward = []
    for path in SOURCES:
        room = room_of(module_name(path))
        for line, imported in cosmosbi_imports(path):
            target = room_of(imported)
            if ROOMS.get(target, -1) > ROOMS[room]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({room}) imports {imported} ({target})")
    assert not upward, "imports pointing up the rooms:\n" + "\n".join(upward)


def test_no_private_names_imported_across_modules():
    private = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cosmosbi"):
                private += [
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and a.name != "__version__"
                ]
    assert not private, "\n".join(private)


# Imports each module first in an interpreter where no cosmosbi module is loaded yet (third-party
# packages stay loaded, which keeps this fast): an import cycle shows only when the module that
# starts it is imported first.
ISOLATED_IMPORTS = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "cosmosbi" or m.startswith("cosmosbi.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    names = [module_name(p) for p in SOURCES if p.stem != "__main__"]
    command = [sys.executable, "-c", ISOLATED_IMPORTS, json.dumps(names)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{name}:\n{tb}" for name, tb in failures.items())


def test_import_cosmosbi_loads_neither_torch_nor_numpy():
    code = "import sys, cosmosbi; print(sorted({'torch', 'numpy', 'cosmosbi.simulators'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


WALKTHROUGH = ["BoxUniform", "as_simulator", "run_simulations", "SimulationDataset", "NPE", "NLE", "validate_posterior"]


@pytest.mark.parametrize("name", WALKTHROUGH)
def test_walkthrough_names_come_from_the_top_level(name):
    value = getattr(cosmosbi, name)
    assert value.__name__ == name and name in cosmosbi.__all__ and name in dir(cosmosbi)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        cosmosbi.not_a_name
