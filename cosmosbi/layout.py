"""Where everything of a run directory lives: one object that every stage, the planner, the CLI
and the SLURM writer ask for paths.

::

    RUN_DIR/
      run.json                  provenance: config, seeds, versions, every invocation
      stages/STAGE.json         record of one stage (key, status, times, result line)
      stages/previous/STAGE-KEY/ artifacts of a stage whose settings changed (archived, not deleted)
      sims/NAME/                simulations of dataset NAME (shards + manifest.json)
      compressor/               trained compressor, checkpoint, loss history
      summaries/NAME/           summaries ``t`` of dataset NAME by the compressor
      estimator/                trained NPE / NLE (or ensemble)
      validation/               metrics.json, report.html, figures/
      baseline/                 power-spectrum baseline: metrics.json, samples.npz, triangle.png
      posterior/                posterior samples of the config's observations
      tune/                     `cosmosbi tune`: study journal, trial-K/ run directories, results, best.yaml
      slurm/                    batch scripts and job ids of ``cosmosbi slurm submit``
      locks/                    who holds the run directory now (see :mod:`cosmosbi.lock`)
"""

from __future__ import annotations

import os
from pathlib import Path

from cosmosbi.files import safe_name

__all__ = ["RunLayout"]


class RunLayout:
    """The paths of run directory ``root`` (relative paths stay relative to the working directory)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunLayout({str(self.root)!r})"

    @property
    def run_record(self) -> Path:
        return self.root / "run.json"

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    def stage_record(self, file_name: str) -> Path:
        """Record of the stage whose file name (``simulate-train``, ``compress``, ...) is given."""
        return self.stages / f"{file_name}.json"

    @property
    def previous(self) -> Path:
        return self.stages / "previous"

    def archive(self, file_name: str, label: str) -> Path:
        """Where the artifacts of stage ``file_name`` with key (or label) ``label`` are archived."""
        return self.previous / f"{file_name}-{label}"

    def sims(self, name: str) -> Path:
        return self.root / "sims" / safe_name(name, "dataset name")

    @property
    def compressor(self) -> Path:
        return self.root / "compressor"

    def summaries(self, name: str) -> Path:
        return self.root / "summaries" / safe_name(name, "dataset name")

    @property
    def estimator(self) -> Path:
        return self.root / "estimator"

    @property
    def validation(self) -> Path:
        return self.root / "validation"

    @property
    def baseline(self) -> Path:
        return self.root / "baseline"

    @property
    def posterior(self) -> Path:
        return self.root / "posterior"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def datasets(self, manifest: str) -> list[Path]:
        """The simulation datasets, then the summary datasets, that hold a file ``manifest``."""
        found = sorted(p.parent for p in self.root.glob(f"sims/*/{manifest}"))
        return found + sorted(p.parent for p in self.root.glob(f"summaries/*/{manifest}"))

    def relative(self, path: Path) -> Path:
        """``path`` (under the run directory) relative to it."""
        return Path(path).relative_to(self.root)
