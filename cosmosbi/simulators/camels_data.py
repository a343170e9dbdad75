"""Reader for the CAMELS Multifield Dataset (CMD) 2D maps a user has downloaded.

CMD files: ``Maps_<field>_<suite>_<set>_z=0.00.npy`` arrays of shape (N, n, n) (n = 256), and
``params_<set>_<suite>.txt`` with one row of parameters per simulation (Omega_m, sigma_8,
A_SN1, A_AGN1, A_SN2, A_AGN2 for the six-parameter sets). Every simulation has 15 maps (5 slabs
x 3 axes), so map row j belongs to simulation j // 15.

:class:`CamelsMultifieldDataset` presents these files with the interface of
:class:`cosmosbi.simulators.store.SimulationDataset`: ``len(ds)``, ``parameter_names``,
``theta`` (N, D), ``index`` (N,), ``output_names``, ``output_spec``, ``read(name, rows=None)``,
``iter_batches(batch_size)`` and ``ds[i]`` (so it also works as a map-style torch Dataset).
Maps are memory-mapped (``np.load(mmap_mode="r")``, never with pickle), so reading a few rows
of a multi-GB file touches only those rows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from cosmosbi.simulators.camels import CAMELS_PARAMETERS

__all__ = ["MAPS_PER_SIMULATION", "CamelsMultifieldDataset", "cmd_map_path", "cmd_params_path"]

MAPS_PER_SIMULATION = 15
_MAP_NAME = re.compile(r"^Maps_(?P<field>[A-Za-z0-9]+)_")


def cmd_map_path(root, field: str, suite: str, set_name: str, redshift: float = 0.0) -> Path:
    """Path of ``Maps_<field>_<suite>_<set>_z=<z>.npy`` under ``root``."""
    return Path(root) / f"Maps_{field}_{suite}_{set_name}_z={redshift:.2f}.npy"


def cmd_params_path(root, suite: str, set_name: str) -> Path:
    """Path of ``params_<set>_<suite>.txt`` under ``root``."""
    return Path(root) / f"params_{set_name}_{suite}.txt"


class CamelsMultifieldDataset:
    """CMD maps and parameters with the schema of simulated datasets.

    Args:
        maps: one ``.npy`` path (the output name is the field in its ``Maps_<field>_...``
            file name) or a mapping output name -> path; all files must have the same number
            of rows.
        params: the ``params_<set>_<suite>.txt`` file, one row per simulation.
        parameter_names: names of the parameter columns (default: the six CAMELS parameters).
        maps_per_simulation: maps per simulation (CMD: 15).

    Attributes:
        theta: (N, D) float64, each simulation's parameters repeated for its maps.
        index: (N,) int64 map row numbers 0..N-1.
        simulation: (N,) int64 simulation number of each row (row // maps_per_simulation).
    """

    def __init__(
        self,
        maps: str | Path | Mapping[str, str | Path],
        params: str | Path,
        parameter_names: Sequence[str] = CAMELS_PARAMETERS,
        maps_per_simulation: int = MAPS_PER_SIMULATION,
    ):
        if isinstance(maps, (str, Path)):
            path = Path(maps)
            match = _MAP_NAME.match(path.name)
            if not match:
                raise ValueError(
                    f"{path}: cannot read the field name from the file name; "
                    "expected Maps_<field>_<suite>_<set>_z=<z>.npy or pass maps={name: path}"
                )
            maps = {match["field"]: path}
        if not maps:
            raise ValueError("maps: expected at least one Maps_*.npy file")
        if int(maps_per_simulation) != maps_per_simulation or maps_per_simulation < 1:
            raise ValueError(f"maps_per_simulation must be a positive integer, got {maps_per_simulation!r}")
        self.maps_per_simulation = int(maps_per_simulation)
        self.parameter_names = tuple(parameter_names)
        self._arrays: dict[str, np.ndarray] = {}
        self.paths: dict[str, Path] = {}
        n_rows = None
        for name, path in maps.items():
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: CMD map file not found (output {name!r})")
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise ValueError(f"{path}: not a plain .npy array file ({err})") from None
            if array.ndim != 3 or array.shape[1] != array.shape[2]:
                raise ValueError(f"{path}: expected maps of shape (N, n, n), got {array.shape}")
            if array.shape[0] % self.maps_per_simulation:
                raise ValueError(
                    f"{path}: {array.shape[0]} maps is not a multiple of {self.maps_per_simulation} maps per simulation"
                )
            if n_rows is not None and array.shape[0] != n_rows:
                raise ValueError(f"{path}: {array.shape[0]} maps, but {next(iter(self.paths.values()))} has {n_rows}")
            n_rows = array.shape[0]
            self._arrays[str(name)] = array
            self.paths[str(name)] = path
        self.params_path = Path(params)
        if not self.params_path.is_file():
            raise FileNotFoundError(f"{self.params_path}: CMD parameter file not found")
        try:
            table = np.loadtxt(self.params_path, dtype=float, ndmin=2)
        except ValueError as err:
            raise ValueError(f"{self.params_path}: cannot read a numeric parameter table ({err})") from None
        if table.shape[1] != len(self.parameter_names):
            raise ValueError(
                f"{self.params_path}: {table.shape[1]} parameter columns, "
                f"expected {len(self.parameter_names)} ({list(self.parameter_names)})"
            )
        n_sims = n_rows // self.maps_per_simulation
        if table.shape[0] != n_sims:
            raise ValueError(
                f"{self.params_path}: {table.shape[0]} simulations, "
                f"but the maps file {next(iter(self.paths.values()))} "
                f"has {n_rows} maps = {n_sims} simulations x {self.maps_per_simulation}"
            )
        self.simulation_parameters = table
        self.index = np.arange(n_rows, dtype=np.int64)
        self.simulation = self.index // self.maps_per_simulation
        self.theta = np.repeat(table, self.maps_per_simulation, axis=0)

    @classmethod
    def from_directory(
        cls,
        root,
        fields: Sequence[str] = ("Mtot",),
        suite: str = "IllustrisTNG",
        set_name: str = "LH",
        redshift: float = 0.0,
        **kwargs,
    ) -> "CamelsMultifieldDataset":
        """Open the CMD files for ``fields`` of one suite and set under ``root`` (file names as CMD ships them)."""
        maps = {f: cmd_map_path(root, f, suite, set_name, redshift) for f in fields}
        return cls(maps, cmd_params_path(root, suite, set_name), **kwargs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self._arrays)

    @property
    def output_spec(self) -> dict[str, dict]:
        """name -> {"shape": per-map shape, "dtype": dtype}."""
        return {name: {"shape": list(a.shape[1:]), "dtype": str(a.dtype)} for name, a in self._arrays.items()}

    def iter_batches(self, batch_size: int, names: Sequence[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield {"index", "theta", name...} for consecutive blocks of ``batch_size`` rows."""
        from cosmosbi.simulators.store import iter_batches

        return iter_batches(self, batch_size, names)

    def __len__(self) -> int:
        return len(self.index)

    def read(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Maps of output ``name`` read into memory: all (N, n, n), or those at row indices ``rows`` (R, n, n)."""
        if name not in self._arrays:
            raise KeyError(f"no output {name!r}; outputs are {list(self._arrays)}")
        array = self._arrays[name]
        if rows is None:
            return np.array(array)
        return np.array(array[np.asarray(rows, dtype=np.int64)])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} maps")
        item = {"theta": self.theta[i]}
        item.update({name: np.array(array[i]) for name, array in self._arrays.items()})
        return item

    def __repr__(self) -> str:
        return (
            f"CamelsMultifieldDataset({len(self)} maps, outputs={list(self.output_names)}, "
            f"params={self.params_path.name})"
        )
