"""A self-contained HTML report (figures embedded as PNG) plus ``metrics.json``.

    report = Report("Validation of runs/quickstart")
    report.add("Calibration", "<p>...</p>", figures=[fig1, fig2])
    report.add_table("Verdicts", ["parameter", "SBC", "coverage"], rows)
    report.write("runs/quickstart/validation", metrics)

``write`` also saves every figure as a PNG file under ``OUT_DIR/figures/``, named after its
section: ``NN-SECTION.png``, or ``NN-SECTION-K.png`` for the K-th of several figures of one
section (NN the section's position in the report), for use outside the report (a README,
a paper).
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cosmosbi.files import atomic_path, atomic_write_json

__all__ = ["Report"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.5em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; margin: .3em .3em .3em 0; vertical-align: top; }
.calibrated, .robust { color: #16702e; font-weight: 600; }
.overconfident, .conservative, .shifted { color: #a3261b; font-weight: 600; }
nav a { margin-right: 1em; }
"""


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _slug(text: str) -> str:
    """File-name form of a heading: lower case, runs of other characters as one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = html.escape(str(value))
    css = str(value) if str(value) in {"calibrated", "overconfident", "conservative", "robust", "shifted"} else ""
    return f'<td class="{css}">{text}</td>' if css else f"<td>{text}</td>"


@dataclass
class Report:
    """Sections of HTML, tables and figures, written as one file with everything embedded."""

    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, PNG bytes)

    def add(self, heading: str, body_html: str = "", figures: Sequence = ()) -> None:
        pngs = [_figure_png(fig) for fig in figures]
        stem = f"{len(self.sections) + 1:02d}-{_slug(heading)}"
        for k, png in enumerate(pngs):
            self.figures.append((f"{stem}-{k + 1}.png" if len(pngs) > 1 else f"{stem}.png", png))
        images = "".join(
            f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{html.escape(heading)}">'
            for png in pngs
        )
        self.sections.append((heading, body_html + images))

    def add_table(self, heading: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> None:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
        self.sections.append(
            (heading, f"<table><tr>{head}</tr>{body}</table>" + (f"<p>{html.escape(note)}</p>" if note else ""))
        )

    def html(self) -> str:
        nav = "".join(f'<a href="#s{k}">{html.escape(h)}</a>' for k, (h, _) in enumerate(self.sections))
        body = "".join(f'<h2 id="s{k}">{html.escape(h)}</h2>{content}' for k, (h, content) in enumerate(self.sections))
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1><nav>{nav}</nav>{body}</body></html>"
        )

    def write(self, out_dir: str | Path, metrics: dict) -> Path:
        """Write ``report.html``, ``metrics.json`` and the figures (``figures/*.png``) atomically
        into ``out_dir``; PNG files of an earlier report there that this one lacks are removed.
        Returns the report path."""
        out_dir = Path(out_dir)
        figure_dir = out_dir / "figures"
        figure_dir.mkdir(parents=True, exist_ok=True)
        names = {name for name, _ in self.figures}
        for old in figure_dir.glob("*.png"):
            if old.name not in names:
                old.unlink()
        for name, png in self.figures:
            with atomic_path(figure_dir / name) as tmp:
                tmp.write_bytes(png)
        atomic_write_json(out_dir / "metrics.json", metrics)
        path = out_dir / "report.html"
        with atomic_path(path) as tmp:
            tmp.write_text(self.html())
        return path
