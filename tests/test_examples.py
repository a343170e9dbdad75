"""The bundled analyses of examples/ load, and plan the stages their README sections describe."""

import re
from pathlib import Path

import pytest

from cosmosbi.config import load_config
from cosmosbi.pipeline import plan_stages

ROOT = Path(__file__).parents[1]


def _stages(name: str):
    config = load_config(ROOT / "examples" / name)
    return config, [stage.name for stage in plan_stages(config)]


def test_camels_domain_shift_trains_on_tng_like_and_tests_on_simba_like():
    config, stages = _stages("camels_domain_shift.yaml")
    assert stages == [
        "simulate:train",
        "simulate:test",
        "simulate:simba",
        "compress",
        "summarise:train",
        "summarise:test",
        "summarise:simba",
        "estimate",
        "validate",
        "sample",
    ]
    assert config.simulator.name == "camels_like" and config.simulator.options["model"] == "tng_like"
    assert config.datasets["simba"].simulator.options["model"] == "simba_like"
    # the variant differs from the training simulator only in its feedback model
    assert {k: v for k, v in config.datasets["simba"].simulator.options.items() if k != "model"} == {
        k: v for k, v in config.simulator.options.items() if k != "model"
    }
    assert config.validation.shift == ["simba"] and config.validation.test == "test"
    assert config.compressor.network["kind"] == "resnet2d" and config.compressor.loss == "vmim"
    assert config.compressor.train.num_threads == 1
    assert config.estimator.kind == "npe" and config.estimator.summary == "compressor"
    assert list(config.build_simulator().prior.names)[:2] == ["Omega_m", "sigma_8"]


def test_strong_lens_substructure_infers_sigma_sub_with_marginalised_nuisances():
    config, stages = _stages("strong_lens_substructure.yaml")
    assert stages == [
        "simulate:train",
        "simulate:test",
        "compress",
        "summarise:train",
        "summarise:test",
        "estimate",
        "validate",
        "sample",
    ]
    simulator = config.build_simulator()
    assert list(simulator.prior.names) == ["Sigma_sub", "beta"]  # lens and source parameters are not in theta
    assert config.compressor.network["kind"] == "resnet2d" and config.compressor.loss == "vmim"
    assert config.compressor.train.num_threads == 1
    assert config.estimator.kind == "npe" and config.estimator.summary == "compressor"
    assert config.validation is not None and not config.validation.shift


def _bundled_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Bundled analyses\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, "README has no '## Bundled analyses' section"
    return match.group(1)


@pytest.mark.parametrize("config", ["camels_domain_shift.yaml", "strong_lens_substructure.yaml"])
def test_readme_section_runs_the_example_and_shows_existing_small_figures(config):
    section = _bundled_section()
    assert f"cosmosbi run examples/{config}" in section
    figures = re.findall(r"!\[[^\]]*\]\((docs/figures/[^)\s]+)\)", section)
    assert figures
    for figure in figures:
        path = ROOT / figure
        assert path.is_file(), f"README links to {figure}, which does not exist"
        assert path.stat().st_size < 200_000, f"{figure} is {path.stat().st_size} bytes"
