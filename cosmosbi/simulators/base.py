"""The simulator protocol, the wrapper for plain functions, and the registry of built-ins.

A simulator is any object with

- ``parameter_names``: tuple of D names, in the column order of theta;
- ``prior``: the default :class:`~cosmosbi.simulators.priors.Prior` over those names;
- ``output_spec``: mapping output name -> :class:`OutputSpec` (shape of one simulation and
  dtype), or ``None`` when it is only known after a first call;
- ``simulate(theta, rng) -> dict[str, np.ndarray]``: theta is (N, D); ``rng`` is a sequence
  of N numpy Generators, one per row (a single Generator is also accepted and split into N).
  Output ``name`` has shape (N, *output_spec[name].shape).

One generator per row is what makes datasets independent of batching and of the number of
MPI ranks: row i of a dataset always sees ``SeedSequence([root_seed, i])``.

A plain function works too, with no subclassing::

    def my_sim(theta, rng):            # theta: (D,), rng: numpy Generator
        return theta[0] + rng.normal(size=10)

    sim = as_simulator(my_sim, prior=BoxUniform(["mu"], [-1], [1]))
"""

from __future__ import annotations

import hashlib
import inspect
import tokenize
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from cosmosbi.simulators.priors import Prior

__all__ = [
    "OutputSpec",
    "Simulator",
    "FunctionSimulator",
    "as_simulator",
    "row_generators",
    "register_simulator",
    "make_simulator",
    "simulator_names",
    "simulator_options",
    "simulator_summary",
    "simulator_identity",
    "function_code_hash",
    "class_code_hash",
    "module_code_hash",
]


@dataclass(frozen=True)
class OutputSpec:
    """Shape of one simulation's output (without the batch axis) and its dtype."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": str(np.dtype(self.dtype))}


@runtime_checkable
class Simulator(Protocol):
    """Protocol every simulator follows (see the module docstring)."""

    parameter_names: tuple[str, ...]
    prior: Prior
    output_spec: Mapping[str, OutputSpec] | None

    def simulate(self, theta: np.ndarray, rng) -> dict[str, np.ndarray]: ...  # protocol


def row_generators(rng, n: int) -> list[np.random.Generator]:
    """Normalise ``rng`` to a list of ``n`` numpy Generators, one per simulation.

    ``rng`` may be a sequence of n Generators (used as is), a single Generator (split into n
    independent children) or an int seed.
    """
    if isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(int(rng))
    if isinstance(rng, np.random.Generator):
        return list(rng.spawn(n))
    rngs = list(rng)
    if len(rngs) != n:
        raise ValueError(f"expected {n} random generators (one per row of theta), got {len(rngs)}")
    if not all(isinstance(g, np.random.Generator) for g in rngs):
        raise TypeError("rng must be a numpy Generator, an int seed, or a sequence of numpy Generators")
    return rngs


class FunctionSimulator:
    """Wraps a plain function as a :class:`Simulator`.

    Args:
        function: ``f(theta, rng)``. With ``batched=False`` (default) it gets one row
            theta: (D,) and that row's Generator, and returns an array (or a dict of named
            arrays) for one simulation. With ``batched=True`` it gets theta: (N, D) and a list
            of N Generators and returns arrays with a leading N axis.
        prior: the default prior; its names are the parameter names.
        output_name: name under which a bare array result is stored (default ``"x"``).
        output_spec: optional mapping name -> OutputSpec; inferred from the first call if omitted.
        name: a label for manifests and logs (default: the function's name).
    """

    def __init__(
        self,
        function: Callable,
        prior: Prior,
        *,
        batched: bool = False,
        output_name: str = "x",
        output_spec: Mapping[str, OutputSpec] | None = None,
        name: str | None = None,
    ):
        if not callable(function):
            raise TypeError(f"simulator function must be callable, got {function!r}")
        if not isinstance(prior, Prior):
            raise TypeError(f"prior must be a cosmosbi Prior, got {type(prior).__name__}")
        self.function = function
        self.prior = prior
        self.parameter_names = prior.names
        self.batched = batched
        self.output_name = output_name
        self.output_spec = dict(output_spec) if output_spec is not None else None
        self.name = name or getattr(function, "__name__", "function")

    def simulate(self, theta: np.ndarray, rng) -> dict[str, np.ndarray]:
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        rngs = row_generators(rng, len(theta))
        if self.batched:
            return self._as_dict(self.function(theta, rngs))
        rows = [self.simulate_row(t, g) for t, g in zip(theta, rngs)]
        if not rows:
            return {}
        return {key: np.stack([np.asarray(r[key]) for r in rows]) for key in rows[0]}

    def simulate_row(self, theta: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One simulation of a row-wise function: theta (D,) -> {name: array of one simulation}."""
        if self.batched:
            raise TypeError(f"{self.name}: simulate_row needs a row-wise function (batched=False)")
        return self._as_dict(self.function(theta, rng))

    def _as_dict(self, result) -> dict[str, np.ndarray]:
        if isinstance(result, Mapping):
            return {str(k): np.asarray(v) for k, v in result.items()}
        return {self.output_name: np.asarray(result)}

    def __repr__(self) -> str:
        return f"FunctionSimulator({self.name}, parameters={list(self.parameter_names)})"


def as_simulator(obj, prior: Prior | None = None, **kwargs) -> Simulator:
    """Return ``obj`` if it already is a simulator, else wrap a plain function.

    A prior given here replaces a simulator's default prior (the parameter names must match).
    """
    if hasattr(obj, "simulate") and hasattr(obj, "parameter_names"):
        if prior is not None:
            if tuple(prior.names) != tuple(obj.parameter_names):
                raise ValueError(
                    f"prior parameters {list(prior.names)} do not match the simulator's "
                    f"parameters {list(obj.parameter_names)}"
                )
            obj.prior = prior
        return obj
    if callable(obj):
        if prior is None:
            raise ValueError("a plain simulator function needs a prior (it defines the parameter names)")
        return FunctionSimulator(obj, prior, **kwargs)
    raise TypeError(f"expected a simulator or a function f(theta, rng), got {type(obj).__name__}")


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Simulator]] = {}


def register_simulator(name: str):
    """Class or factory decorator: make a simulator constructible by ``name`` from configs.

    The factory's keyword arguments (with type annotations and defaults) are its config
    options; :func:`make_simulator` validates them.
    """

    def decorate(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"a simulator named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def simulator_names() -> list[str]:
    """Names of all registered simulators."""
    _load_builtins()
    return sorted(_REGISTRY)


def simulator_options(name: str) -> dict[str, inspect.Parameter]:
    """The config options of a registered simulator (its constructor's keyword parameters)."""
    factory = _get(name)
    params = inspect.signature(factory).parameters
    return {k: p for k, p in params.items() if k != "self" and p.kind is not p.VAR_KEYWORD}


def simulator_summary(name: str) -> str:
    """The first line of a registered simulator's docstring ('' without one)."""
    doc = (_get(name).__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def make_simulator(name: str, options: Mapping[str, Any] | None = None, where: str = "simulator") -> Simulator:
    """Build a registered simulator from its name and an options mapping.

    Unknown options and values of the wrong type raise ``ValueError`` naming the option.
    The simulator gets a ``description`` attribute ({"name", "options"}) that manifests record.
    """
    import pydantic

    factory = _get(name, where)
    options = dict(options or {})
    params = simulator_options(name)
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(
            f"{where}.options: simulator {name!r} has no option {unknown[0]!r}; its options are {sorted(params)}"
        )
    hints = _type_hints(factory)
    fields = {key: (hints.get(key, Any), ... if p.default is p.empty else p.default) for key, p in params.items()}
    model = pydantic.create_model(
        f"{name}_options", __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
    )
    try:
        validated = model(**options)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}.options.{key}: {first['msg']} (got {first.get('input')!r})") from None
    simulator = factory(**{k: getattr(validated, k) for k in options})
    missing = [a for a in ("parameter_names", "prior", "output_spec", "simulate") if not hasattr(simulator, a)]
    if ":" in name and missing:
        raise ValueError(
            f"{where}.name: {name}() returned {type(simulator).__name__}, not a simulator "
            f"(it has no {', '.join(missing)}; return a simulator, or wrap a function with as_simulator)"
        )
    simulator.description = {"name": name, "options": options}
    if ":" in name:
        simulator.description["module_code"] = module_code_hash(factory)
    return simulator


def _type_hints(factory) -> dict[str, Any]:
    import typing

    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:
        return {}


def _get(name: str, where: str = "simulator"):
    _load_builtins()
    if ":" in name and name not in _REGISTRY:
        return _import_factory(name, where)
    if name not in _REGISTRY:
        raise ValueError(f"{where}.name: unknown simulator {name!r}; registered simulators are {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _import_factory(name: str, where: str):
    """The factory ``module:function`` of a user's simulator (the working directory is importable)."""
    import importlib
    import os
    import sys

    module_name, _, attribute = name.partition(":")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name.split(".")[0] or os.getcwd() in sys.path:
                raise
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{where}.name: cannot import module {module_name!r} of simulator {name!r} ({err})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"{where}.name: module {module_name!r} has no function {attribute!r} that returns a simulator")
    return factory


def _load_builtins() -> None:
    # importing the package registers every built-in simulator
    import cosmosbi.simulators  # noqa: F401


def simulate_rows(
    simulator: Simulator, theta: np.ndarray, rngs: Sequence[np.random.Generator]
) -> dict[str, np.ndarray]:
    """Call ``simulator.simulate`` and check that every output has N = len(theta) rows."""
    out = simulator.simulate(theta, list(rngs))
    if not isinstance(out, Mapping) or not out:
        raise TypeError(f"simulate() must return a non-empty dict of arrays, got {type(out).__name__}")
    result = {}
    for key, value in out.items():
        value = np.asarray(value)
        if value.ndim == 0 or value.shape[0] != len(theta):
            raise ValueError(
                f"simulate() output {key!r} has shape {value.shape}; expected a leading axis of {len(theta)} rows"
            )
        result[str(key)] = value
    return result


# --------------------------------------------------------------------------- identity


def simulator_identity(simulator, description: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a dataset manifest records to recognise the simulator that made its rows (JSON-able).

    ``description`` (or the simulator's ``description`` attribute, which :func:`make_simulator`
    sets to its name, options and, for a ``module:function`` factory, the hash of that module's
    file), else the simulator's name; plus, for a plain function, :func:`function_code_hash` of
    the function and its output name, and for a simulator class defined outside cosmosbi with no
    description, the hash of the class's source. An edited function or module therefore gives
    another identity, and its old simulations are never taken for new ones.
    """
    label = getattr(simulator, "name", None) or type(simulator).__name__
    described = description or getattr(simulator, "description", None)
    identity = dict(described or {"name": label})
    if isinstance(simulator, FunctionSimulator):
        identity["function_code"] = function_code_hash(simulator.function)
        identity["output_name"] = simulator.output_name
        identity["batched"] = simulator.batched
    elif described is None and not type(simulator).__module__.startswith("cosmosbi."):
        identity["class_code"] = class_code_hash(type(simulator))
    if getattr(simulator, "model_version", 1) != 1:
        identity["model_version"] = int(simulator.model_version)
    return identity


def function_code_hash(function: Callable) -> str:
    """A short hash of what a function computes: its source text (its bytecode where the source
    cannot be read, e.g. code typed into an interpreter), its default arguments and closure
    values, and the functions and constants of its own module that it refers to by name.

    Code in other modules (numpy, a helper imported from elsewhere) is not included; name a
    ``module:function`` factory in a config, or pass ``description``, to cover more.
    """
    digest = hashlib.sha256()
    _hash_function(function, digest, set())
    return digest.hexdigest()[:16]


def class_code_hash(cls: type) -> str:
    """A short hash of a class's code: :func:`function_code_hash` of every method and the plain
    values of its class attributes, over the class and its bases outside cosmosbi and builtins."""
    digest = hashlib.sha256()
    seen: set[int] = set()
    for klass in cls.__mro__:
        module = klass.__module__
        if klass is object or module in ("builtins", "abc", "typing") or module.startswith("cosmosbi."):
            continue
        digest.update(f"{klass.__module__}.{klass.__qualname__}".encode())
        for name, value in sorted(vars(klass).items()):
            value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if inspect.isfunction(value):
                digest.update(name.encode())
                _hash_function(value, digest, seen)
            elif isinstance(value, property) and value.fget is not None:
                digest.update(name.encode())
                _hash_function(value.fget, digest, seen)
            elif not name.startswith("__") and _is_plain_value(value):
                digest.update(name.encode())
                _hash_value(value, digest, seen)
    return digest.hexdigest()[:16]


def module_code_hash(obj) -> str | None:
    """A short hash of the source file of the module that defines ``obj`` (None without a file)."""
    import sys

    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()[:16]
    except OSError:
        return None


# what inspect.getsource raises when the source cannot be found or is not Python (e.g. compiled from a README)
_NO_SOURCE = (OSError, TypeError, SyntaxError, IndexError, tokenize.TokenError)


def _hash_function(function, digest, seen: set[int]) -> None:
    import functools

    if id(function) in seen:
        return
    seen.add(id(function))
    if isinstance(function, functools.partial):
        _hash_function(function.func, digest, seen)
        _hash_value((function.args, dict(function.keywords)), digest, seen)
        return
    code = getattr(function, "__code__", None)
    if code is None:  # a builtin, or an object with __call__
        if inspect.isbuiltin(function):
            digest.update(repr(function).encode())
        elif type(function).__module__ in ("builtins", "numpy"):
            digest.update(type(function).__qualname__.encode())
        else:
            digest.update(class_code_hash(type(function)).encode())
        return
    try:
        digest.update(inspect.getsource(function).encode())
    except _NO_SOURCE:
        _hash_code(code, digest)
    for value in (*(function.__defaults__ or ()), *(function.__kwdefaults__ or {}).values()):
        _hash_value(value, digest, seen)
    for cell in function.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # a cell not filled yet
            continue
        _hash_value(contents, digest, seen)
    namespace = getattr(function, "__globals__", {})
    for name in sorted(_global_names(code)):
        value = namespace.get(name)
        if inspect.isfunction(value) and value.__module__ == function.__module__:
            digest.update(name.encode())
            _hash_function(value, digest, seen)
        elif _is_plain_value(value):
            digest.update(name.encode())
            _hash_value(value, digest, seen)


def _global_names(code) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _global_names(const)
    return names


def _hash_code(code, digest) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if inspect.iscode(const):
            _hash_code(const, digest)
        else:
            digest.update(repr(const).encode())


def _is_plain_value(value) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_plain_value(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.ndarray, np.generic))


def _hash_value(value, digest, seen: set[int]) -> None:
    if isinstance(value, np.ndarray):
        digest.update(f"array{value.shape}{value.dtype}".encode())
        digest.update(np.ascontiguousarray(value).tobytes() if value.dtype != object else repr(value).encode())
    elif isinstance(value, (tuple, list)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _hash_value(item, digest, seen)
    elif isinstance(value, dict):
        digest.update(f"dict{len(value)}".encode())
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _hash_value(value[key], digest, seen)
    elif callable(value) and not inspect.isclass(value) and not inspect.isbuiltin(value):
        _hash_function(value, digest, seen)
    elif _is_plain_value(value):
        digest.update(repr(value).encode())
    elif hasattr(value, "to_config"):  # a prior
        digest.update(repr(value.to_config()).encode())
    else:
        digest.update(f"{type(value).__module__}.{type(value).__qualname__}".encode())
