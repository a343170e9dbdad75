import numpy as np
import pytest

from cosmosbi.simulators import (
    BoxUniform,
    FunctionSimulator,
    as_simulator,
    make_simulator,
    row_generators,
    simulator_names,
)
from cosmosbi.simulators.base import simulate_rows

PRIOR = BoxUniform(["mu", "log_sigma"], [-1.0, -1.0], [1.0, 0.0])


def noisy_mean(theta, rng):
    return theta[0] + np.exp(theta[1]) * rng.standard_normal(5)


def test_plain_function_is_wrapped_and_called_per_row():
    sim = as_simulator(noisy_mean, prior=PRIOR)
    assert isinstance(sim, FunctionSimulator)
    assert sim.parameter_names == ("mu", "log_sigma")
    theta = PRIOR.sample(4, np.random.default_rng(0))
    rngs = [np.random.default_rng(i) for i in range(4)]
    out = sim.simulate(theta, rngs)
    assert list(out) == ["x"] and out["x"].shape == (4, 5)
    # row i depends only on its own generator
    expected = noisy_mean(theta[2], np.random.default_rng(2))
    np.testing.assert_array_equal(out["x"][2], expected)


def test_batched_function_and_dict_outputs():
    def batched(theta, rngs):
        return {"a": theta[:, :1] * 2, "b": np.stack([g.random(3) for g in rngs])}

    sim = as_simulator(batched, prior=PRIOR, batched=True)
    out = sim.simulate(np.zeros((3, 2)), np.random.default_rng(0))
    assert out["a"].shape == (3, 1) and out["b"].shape == (3, 3)


def test_as_simulator_errors():
    with pytest.raises(ValueError, match="needs a prior"):
        as_simulator(noisy_mean)
    with pytest.raises(TypeError, match="expected a simulator or a function"):
        as_simulator(42, prior=PRIOR)
    sim = make_simulator("gaussian_field")
    with pytest.raises(ValueError, match="do not match"):
        as_simulator(sim, prior=PRIOR)


def test_row_generators():
    assert len(row_generators(np.random.default_rng(0), 3)) == 3
    assert len(row_generators(5, 2)) == 2
    with pytest.raises(ValueError, match="expected 3 random generators"):
        row_generators([np.random.default_rng(0)], 3)
    with pytest.raises(TypeError, match="numpy Generator"):
        row_generators([1, 2], 2)


def test_registry_builds_and_validates_options():
    assert {"gaussian_field", "healpix_gaussian_field"} <= set(simulator_names())
    sim = make_simulator("gaussian_field", {"n_pixels": 16, "model": "running_noise"})
    assert sim.parameter_names == ("A", "B", "R", "N")
    assert sim.description == {"name": "gaussian_field", "options": {"n_pixels": 16, "model": "running_noise"}}
    with pytest.raises(ValueError, match="unknown simulator 'nope'.*gaussian_field"):
        make_simulator("nope")
    with pytest.raises(ValueError, match="has no option 'npix'.*n_pixels"):
        make_simulator("gaussian_field", {"npix": 16})
    with pytest.raises(ValueError, match="options.n_pixels"):
        make_simulator("gaussian_field", {"n_pixels": "big"})
    with pytest.raises(ValueError, match="unknown spectrum model"):
        make_simulator("gaussian_field", {"model": "cubic"})


def test_simulate_rows_checks_the_batch_axis():
    sim = as_simulator(lambda theta, rngs: {"x": np.zeros(2)}, prior=PRIOR, batched=True)
    with pytest.raises(ValueError, match="leading axis of 3 rows"):
        simulate_rows(sim, np.zeros((3, 2)), row_generators(0, 3))
    sim = as_simulator(lambda theta, rngs: {}, prior=PRIOR, batched=True)
    with pytest.raises(TypeError, match="non-empty dict"):
        simulate_rows(sim, np.zeros((3, 2)), row_generators(0, 3))


def test_function_code_hash_follows_the_code_not_the_name():
    from cosmosbi.simulators.base import function_code_hash

    first = lambda theta, rng: theta[0] + rng.normal(size=3)
    second = lambda theta, rng: theta[0] + 2 * rng.normal(size=3)
    assert first.__name__ == second.__name__ == "<lambda>"
    assert function_code_hash(first) != function_code_hash(second)
    assert function_code_hash(first) == function_code_hash(first)

    def make(scale):
        return lambda theta, rng: theta[0] + scale * rng.normal(size=3)

    assert function_code_hash(make(1.0)) != function_code_hash(make(2.0))  # closure values count
    assert function_code_hash(make(1.0)) == function_code_hash(make(1.0))


def test_function_code_hash_of_code_without_source_and_of_module_helpers(tmp_path, monkeypatch):
    import importlib
    import sys

    from cosmosbi.simulators.base import function_code_hash

    namespace = {}
    exec("def f(theta, rng):\n    return theta + 1\n", namespace)  # no source file: the bytecode is hashed
    other = {}
    exec("def f(theta, rng):\n    return theta + 2\n", other)
    assert function_code_hash(namespace["f"]) != function_code_hash(other["f"])

    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "helper_sim.py"
    template = "OFFSET = {}\ndef helper(t):\n    return t {} OFFSET\ndef sim(theta, rng):\n    return helper(theta)\n"
    module.write_text(template.format(1.0, "+"))
    before = function_code_hash(importlib.import_module("helper_sim").sim)
    module.write_text(template.format(1.0, "-"))
    sys.modules.pop("helper_sim")
    after_helper = function_code_hash(importlib.import_module("helper_sim").sim)
    module.write_text(template.format(2.0, "-"))
    sys.modules.pop("helper_sim")
    after_constant = function_code_hash(importlib.import_module("helper_sim").sim)
    sys.modules.pop("helper_sim")
    assert len({before, after_helper, after_constant}) == 3


def test_a_factory_module_is_part_of_the_description(tmp_path, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    source = (
        "import numpy as np\nfrom cosmosbi.simulators import BoxUniform, as_simulator\n"
        "def make(n_points: int = 3):\n"
        "    prior = BoxUniform(['a'], [0], [1])\n"
        "    return as_simulator(lambda theta, rng: theta[0] + rng.normal(size=n_points), prior=prior)\n"
    )
    (tmp_path / "factory_sim.py").write_text(source)
    first = make_simulator("factory_sim:make", {"n_points": 3}).description
    sys.modules.pop("factory_sim")
    (tmp_path / "factory_sim.py").write_text(source.replace("rng.normal", "rng.uniform"))
    second = make_simulator("factory_sim:make", {"n_points": 3}).description
    sys.modules.pop("factory_sim")
    assert first["options"] == second["options"] and first["module_code"] != second["module_code"]


def test_function_code_hash_of_code_compiled_from_a_text_file(tmp_path):
    from cosmosbi.simulators.base import function_code_hash

    notes = tmp_path / "notes.md"
    notes.write_text("# notes\n\n```\n(unclosed\n")
    namespace = {}
    exec(compile("def f(theta, rng):\n    return theta\n", str(notes), "exec"), namespace)
    assert len(function_code_hash(namespace["f"])) == 16


def test_identity_of_an_undescribed_simulator_class_follows_its_source():
    from cosmosbi.simulators.base import simulator_identity

    def make(offset_source):
        if offset_source == "one":

            class Sim:
                parameter_names, prior, output_spec = PRIOR.names, PRIOR, None

                def simulate(self, theta, rng):
                    return {"x": theta + 1}

        else:

            class Sim:
                parameter_names, prior, output_spec = PRIOR.names, PRIOR, None

                def simulate(self, theta, rng):
                    return {"x": theta + 2}

        return Sim()

    one, two = simulator_identity(make("one")), simulator_identity(make("two"))
    assert one["name"] == two["name"] == "Sim" and one["class_code"] != two["class_code"]
    described = make("one")
    described.description = {"name": "mine", "version": 3}  # a description is taken as the identity
    assert simulator_identity(described) == {"name": "mine", "version": 3}
