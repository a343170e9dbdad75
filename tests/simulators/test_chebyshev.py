"""Chebyshev tables: exact on polynomials, tensor layout, and the cached build."""

import numpy as np
import pytest

from cosmosbi.simulators.chebyshev import (
    chebyshev_nodes,
    interpolate,
    load_or_build,
    tabulate,
    tensor_points,
)


def test_tensor_interpolation_is_exact_for_polynomials_of_the_node_degree():
    grids = [chebyshev_nodes(0.1, 0.5, 4), chebyshev_nodes(-1.0, 2.0, 3)]
    points = tensor_points(grids)
    assert points.shape == (12, 2)

    def f(p):  # degree 3 in the first parameter, 2 in the second; two outputs per point
        x, y = p
        return {"v": np.array([x**3 - 2 * x * y**2 + 1, y**2 * x])}

    table = tabulate(points, f, (4, 3))["v"]
    assert table.shape == (4, 3, 2)
    rng = np.random.default_rng(0)
    for x in zip(rng.uniform(0.1, 0.5, 5), rng.uniform(-1.0, 2.0, 5)):
        np.testing.assert_allclose(interpolate(table, grids, x), f(x)["v"], rtol=1e-12, atol=1e-12)
    # at a node the table value itself
    np.testing.assert_array_equal(interpolate(table, grids, points[7]), table.reshape(12, 2)[7])


def test_zero_dimensional_table_is_its_single_value():
    table = tabulate(tensor_points([]), lambda p: {"v": np.arange(3.0)}, ())
    np.testing.assert_array_equal(interpolate(table["v"], [], []), np.arange(3.0))


def test_load_or_build_computes_once_then_loads(tmp_path):
    calls = []

    def compute(heartbeat):
        calls.append(1)
        heartbeat()
        return {"a": np.arange(4.0)}

    path = tmp_path / "sub" / "table.npz"
    first = load_or_build(path, compute)
    second = load_or_build(path, lambda heartbeat: pytest.fail("the cached table was recomputed"))
    assert len(calls) == 1 and path.exists() and not path.with_name("table.npz.lock").exists()
    np.testing.assert_array_equal(first["a"], second["a"])
    # a failed build leaves neither a table nor a lock behind
    broken = tmp_path / "broken.npz"
    with pytest.raises(RuntimeError):
        load_or_build(broken, lambda heartbeat: (_ for _ in ()).throw(RuntimeError("boom")))
    assert not broken.exists() and not broken.with_name("broken.npz.lock").exists()
