"""Quantities derived from the inferred parameters (e.g. S_8), as functions of posterior samples."""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["DERIVED", "derived_functions"]

# name -> (the parameters it needs, f(*those parameters) -> the quantity)
DERIVED = {
    "S_8": (("Omega_m", "sigma_8"), lambda om, s8: s8 * np.sqrt(om / 0.3)),
}


def derived_functions(
    names: list[str], wanted: list[str], source: str = "config"
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """{quantity: f(samples (..., D)) -> (...)} for the quantities ``wanted`` of :data:`DERIVED`,
    where ``names`` are the D parameters of the samples; a ValueError names an unknown quantity
    or the parameters a known one misses."""
    out = {}
    for name in wanted:
        if name not in DERIVED:
            raise ValueError(f"{source}: validation.derived: unknown quantity {name!r}; known: {sorted(DERIVED)}")
        needs, function = DERIVED[name]
        missing = [p for p in needs if p not in names]
        if missing:
            raise ValueError(
                f"{source}: validation.derived: {name} needs parameters {list(needs)}; {missing} are not inferred"
            )
        idx = [names.index(p) for p in needs]
        out[name] = lambda t, f=function, i=idx: f(*(t[..., j] for j in i))
    return out
