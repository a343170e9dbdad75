"""The README's Python examples and the custom-simulator walkthrough run as written."""

import re
import subprocess
import sys
from pathlib import Path

from cosmosbi.files import read_json

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """The blocks continue one another, like one Python session."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "runs" / "line" / "sims" / "train" / "manifest.json").is_file()
    assert namespace["samples"].shape == (1, 1000, 2)
    assert namespace["result"].tarp.verdict == "calibrated"


def test_custom_simulator_walkthrough_runs_as_a_config(tmp_path):
    text = README.read_text()
    module = re.search(r"```python\n# line_model.py\n(.*?)```", text, flags=re.S).group(1)
    config = re.search(r"```yaml\n(# line.yaml.*?)```", text, flags=re.S).group(1)
    (tmp_path / "line_model.py").write_text(module)
    (tmp_path / "line.yaml").write_text(config)
    done = subprocess.run([sys.executable, "-m", "cosmosbi", "run", "-q", "line.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = read_json(tmp_path / "runs" / "line_analysis" / "validation" / "metrics.json")
    assert [row["verdict"] for row in metrics["validation"]["sbc"].values()] == ["calibrated", "calibrated"]
    manifest = read_json(tmp_path / "runs" / "line_analysis" / "sims" / "train" / "manifest.json")
    simulator = manifest["identity"]["simulator"]
    assert (simulator["name"], simulator["options"]) == ("line_model:make_line", {"n_points": 20})
    assert len(simulator["module_code"]) == len(simulator["function_code"]) == 16  # the code is part of the identity
