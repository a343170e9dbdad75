"""Config validation on load: names, integers, nested option sections, and user code that is never run by reading."""

import pytest
import yaml

from cosmosbi.config import ConfigError, load_config
from cosmosbi.layout import RunLayout

GOOD = {
    "run_dir": "RUN",
    "simulator": {"name": "gaussian_field", "options": {"n_pixels": 8}},
    "datasets": {"train": {"n": 20, "seed": 1}, "test": {"n": 5, "seed": 2}},
}
COMPRESSOR = {"input": "field", "network": {"kind": "resnet2d", "width": 4, "depth": 1}, "loss": "mse"}
ESTIMATOR = {"kind": "npe", "flow": {"hidden_features": 16}, "training": {"max_epochs": 5}}


def write(tmp_path, data, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_error(tmp_path, data) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("name", ["../../../X", "../X", "/tmp/X", "a/b", ".hidden", "..", "a..b", "", "x" * 129, "a b"])
def test_dataset_names_that_are_not_plain_file_names_are_refused(tmp_path, name):
    message = load_error(tmp_path, {**GOOD, "datasets": {name: {"n": 5, "seed": 1}}})
    assert f"datasets: dataset name {name!r} is not a plain file name" in message


@pytest.mark.parametrize("name", ["../X", "../../X", "/abs/X", "sub/X"])
def test_observation_names_that_are_not_plain_file_names_are_refused(tmp_path, name):
    data = {**GOOD, "estimator": ESTIMATOR, "observations": {name: {"dataset": "test", "index": 0}}}
    message = load_error(tmp_path, data)
    assert f"observations: observation name {name!r} is not a plain file name" in message


def test_plain_names_are_accepted(tmp_path):
    data = {
        **GOOD,
        "datasets": {"train-1.v2": {"n": 5, "seed": 1}, "Test_2": {"n": 5, "seed": 2}},
        "estimator": {**ESTIMATOR, "dataset": "train-1.v2"},
        "observations": {"mock.A-1": {"dataset": "Test_2"}},
    }
    config = load_config(write(tmp_path, data))
    layout = RunLayout(config.run_dir)
    assert layout.sims("train-1.v2").name == "train-1.v2"
    with pytest.raises(ValueError, match="not a plain file name"):
        layout.sims("../elsewhere")


def test_estimator_dataset_must_exist(tmp_path):
    assert "estimator.dataset: no dataset 'training'" in load_error(
        tmp_path, {**GOOD, "estimator": {**ESTIMATOR, "dataset": "training"}}
    )


# ------------------------------------------------------------------ integers


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["datasets"]["train"].update(seed=2**70),
            "datasets.train.seed: Input should be less than or equal to 9223372036854775807",
        ),
        (
            lambda d: d["datasets"]["train"].update(seed=2**63),
            "datasets.train.seed: Input should be less than or equal to",
        ),
        (
            lambda d: d["datasets"]["train"].update(seed=-1),
            "datasets.train.seed: Input should be greater than or equal to 0",
        ),
        (lambda d: d["datasets"]["train"].update(n=True), "datasets.train.n: expected a number, got the boolean true"),
        (lambda d: d["datasets"]["train"].update(n=2**64), "datasets.train.n: Input should be less than or equal to"),
        (lambda d: d.update(batch_size=True), "batch_size: expected a number, got the boolean true"),
        (
            lambda d: d.update(estimator={**ESTIMATOR, "seed": 2**64}),
            "estimator.seed: Input should be less than or equal to",
        ),
        (
            lambda d: d.update(estimator={**ESTIMATOR, "ensemble": False}),
            "estimator.ensemble: expected a number, got the boolean false",
        ),
        (
            lambda d: d.update(compressor={**COMPRESSOR, "train": {"seed": 2**70}}),
            "compressor.train.seed: Input should be less than",
        ),
        (
            lambda d: d["datasets"]["train"].update(fixed={"A": True, "B": 2.0}),
            "datasets.train.fixed.A: expected a number, got the boolean true",
        ),
    ],
)
def test_integers_fit_in_64_bits_and_are_not_booleans(tmp_path, mutate, message):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    mutate(data)
    assert message in load_error(tmp_path, data)


def test_largest_seed_is_accepted(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["datasets"]["train"]["seed"] = 2**63 - 1
    assert load_config(write(tmp_path, data)).datasets["train"].seed == 2**63 - 1


# ------------------------------------------------------------------ nested option sections


@pytest.mark.parametrize(
    "section, message",
    [
        (
            {"compressor": {**COMPRESSOR, "network": {"kind": "resnet2d", "widht": 4}}},
            "compressor.network.widht: unknown key; the keys are ['blocks', 'depth', 'in_channels', 'linear_stem', "
            "'norm', 'periodic', 'stem_kernel', 'width']",
        ),
        (
            {"compressor": {**COMPRESSOR, "network": {"kind": "resnet2d", "width": "wide"}}},
            "compressor.network.width: Input should be a valid integer",
        ),
        (
            {"compressor": {**COMPRESSOR, "network": {"kind": "resnet2d", "depth": True}}},
            "compressor.network.depth: expected a number, got the boolean true",
        ),
        (
            {"compressor": {**COMPRESSOR, "network": {"kind": "resnet2d", "out_features": 3}}},
            "compressor.network.out_features: unknown key",
        ),
        (
            {"compressor": {**COMPRESSOR, "network": {"kind": "resnet3d"}}},
            (
                "compressor.network.kind: expected one of "
                "['healpix_cnn', 'hybrid2d', 'hybrid_healpix', 'mlp', 'resnet2d'], got 'resnet3d'"
            ),
        ),
        ({"compressor": {**COMPRESSOR, "network": {"width": 4}}}, "compressor.network.kind: expected one of"),
        (
            {"compressor": {**COMPRESSOR, "network": {"kind": "mlp", "hiden": 4}}},
            "compressor.network.hiden: unknown key; the keys are ['hidden', 'in_features', 'layers']",
        ),
        (
            {"compressor": {**COMPRESSOR, "network": {"kind": "healpix_cnn", "pixels": [1]}}},
            "compressor.network.pixels: unknown key",
        ),
        (
            {"compressor": {**COMPRESSOR, "loss": "vmi"}},
            "compressor.loss: expected one of ['gaussian_nll', 'mse', 'vmim'], got 'vmi'",
        ),
        (
            {"compressor": {**COMPRESSOR, "loss": "vmim", "loss_options": {"transform": 2}}},
            "compressor.loss_options.transform: unknown key; the keys are ['hidden', 'transforms']",
        ),
        (
            {"compressor": {**COMPRESSOR, "loss": "mse", "loss_options": {"hidden": 2}}},
            "compressor.loss_options.hidden: unknown key; the keys are []",
        ),
        (
            {"estimator": {**ESTIMATOR, "flow": {"hidden_featres": 16}}},
            "estimator.flow.hidden_featres: unknown key; the keys are ['hidden_features',",
        ),
        ({"estimator": {**ESTIMATOR, "flow": {"model": "realnvp"}}}, "estimator.flow: model: expected one of"),
        (
            {"estimator": {**ESTIMATOR, "flow": {"num_transforms": 0}}},
            "estimator.flow: num_transforms: expected a positive integer",
        ),
        (
            {"estimator": {**ESTIMATOR, "flow": {"num_bins": True}}},
            "estimator.flow.num_bins: expected a number, got the boolean true",
        ),
        ({"estimator": {**ESTIMATOR, "training": {"max_epoch": 5}}}, "estimator.training.max_epoch: unknown key"),
        (
            {"estimator": {**ESTIMATOR, "training": {"learning_rate": "fast"}}},
            "estimator.training.learning_rate: Input should be a valid number",
        ),
        (
            {"estimator": {**ESTIMATOR, "training": {"validation_fraction": 1.5}}},
            "estimator.training: validation_fraction: expected a number in (0, 1)",
        ),
        ({"estimator": {**ESTIMATOR, "training": {"clip_max_norm": "none"}}}, "estimator.training.clip_max_norm"),
        ({"estimator": {**ESTIMATOR, "flow": [1, 2]}}, "estimator.flow: Input should be a valid dictionary"),
    ],
)
def test_nested_sections_are_checked_on_load_naming_the_key(tmp_path, section, message):
    assert message in load_error(tmp_path, {**GOOD, **section})


def test_nested_sections_keep_the_given_keys_with_converted_values(tmp_path):
    # YAML reads 3e-3 as a string; it becomes the number the training needs
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {**GOOD, "compressor": {**COMPRESSOR, "network": {"kind": "mlp", "hidden": 8}}, "estimator": ESTIMATOR}
        ).replace("max_epochs: 5", "max_epochs: 5\n    learning_rate: 3e-3\n    clip_max_norm: null")
    )
    config = load_config(path)
    assert config.estimator.training == {"max_epochs": 5, "learning_rate": 0.003, "clip_max_norm": None}
    assert config.estimator.flow == {"hidden_features": 16}
    assert config.compressor.network == {"kind": "mlp", "hidden": 8}
    assert config.compressor.loss_options == {}


# ------------------------------------------------------------------ user code


def factory_config(tmp_path, name, options, **extra):
    return write(
        tmp_path, {**GOOD, "run_dir": str(tmp_path / "run"), "simulator": {"name": name, "options": options}, **extra}
    )


def test_reading_a_config_never_runs_its_simulator_factory(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    (tmp_path / "side_effects.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef make(**options):\n    raise AssertionError('called')\n"
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(factory_config(tmp_path, "side_effects:make", {"anything": 1}))
    assert config.simulator.name == "side_effects:make"
    assert config.declared_parameter_names() is None
    config = load_config(
        factory_config(
            tmp_path, "os:system", {"command": f"touch {marker}"}, prior={"A": {"uniform": [0, 1]}}, estimator=ESTIMATOR
        )
    )
    assert not marker.exists()
    assert "side_effects" not in __import__("sys").modules


@pytest.mark.parametrize("name", ["os:system; rm", "os:", ":system", "a b:c", "os:path.join", "1mod:f"])
def test_factory_names_must_have_the_form_module_function(tmp_path, name):
    assert f"simulator.name: {name!r} is neither a registered simulator nor of the form module:function" in load_error(
        tmp_path, {**GOOD, "simulator": {"name": name}}
    )


def test_a_factory_prior_and_the_baseline_pair_are_checked_without_running_it(tmp_path):
    data = {**GOOD, "simulator": {"name": "os:system"}, "prior": {"A": {"uniform": [2, 1]}}}
    assert "prior.A: uniform needs finite low < high" in load_error(tmp_path, data)
    data = {
        **GOOD,
        "simulator": {"name": "os:system"},
        "prior": {"A": {"uniform": [0, 1]}},
        "estimator": ESTIMATOR,
        "datasets": {"train": {"n": 5, "seed": 1}, "fid": {"n": 5, "seed": 2, "fixed": {"A": 0.5}}},
        "baseline": {"summary": "power_spectrum", "fiducial": "fid", "test": "train", "pair": ["A", "C"]},
    }
    assert "baseline.pair: unknown parameter 'C'; parameters are ['A']" in load_error(tmp_path, data)


def test_a_registered_variant_of_a_factory_simulator_is_checked(tmp_path):
    data = {
        **GOOD,
        "simulator": {"name": "os:system"},
        "datasets": {"train": {"n": 5, "seed": 1, "simulator": {"name": "gaussian_field", "options": {"npix": 3}}}},
    }
    assert "datasets.train.simulator.options: simulator 'gaussian_field' has no option 'npix'" in load_error(
        tmp_path, data
    )


def test_a_factory_that_returns_no_simulator_fails_when_the_stage_builds_it(tmp_path, monkeypatch):
    (tmp_path / "not_a_sim.py").write_text(
        "class Half:\n    def simulate(self, theta, rng):\n        return {}\n\ndef make():\n    return Half()\n"
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(factory_config(tmp_path, "not_a_sim:make", {}))
    with pytest.raises(
        ConfigError,
        match=r"not_a_sim:make\(\) returned Half, not a simulator \(it has no parameter_names, prior, output_spec",
    ):
        config.build_simulator("config.yaml")
