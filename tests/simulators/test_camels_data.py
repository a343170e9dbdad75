"""The CAMELS Multifield Dataset reader, on small files written in the CMD format."""

import numpy as np
import pytest

from cosmosbi.simulators.camels import CAMELS_PARAMETERS
from cosmosbi.simulators.camels_data import CamelsMultifieldDataset, cmd_map_path, cmd_params_path


def write_cmd(root, n_sims=3, n_pix=8, fields=("Mtot",), suite="IllustrisTNG", set_name="LH", seed=0):
    """Write CMD-format files: Maps_<field>_<suite>_<set>_z=0.00.npy (15 n_sims, n, n) and params_<set>_<suite>.txt."""
    rng = np.random.default_rng(seed)
    params = np.column_stack(
        [
            rng.uniform(0.1, 0.5, n_sims),
            rng.uniform(0.6, 1.0, n_sims),
            np.exp(rng.uniform(np.log(0.25), np.log(4), (n_sims, 2))),
            np.exp(rng.uniform(np.log(0.5), np.log(2), (n_sims, 2))),
        ]
    )
    np.savetxt(cmd_params_path(root, suite, set_name), params, fmt="%.5e")
    maps = {}
    for field in fields:
        maps[field] = rng.lognormal(27, 1, (15 * n_sims, n_pix, n_pix)).astype(np.float32)
        np.save(cmd_map_path(root, field, suite, set_name), maps[field])
    return np.loadtxt(cmd_params_path(root, suite, set_name)), maps


def test_round_trips_parameters_and_maps(tmp_path):
    params, maps = write_cmd(tmp_path, fields=("Mtot", "HI"))
    ds = CamelsMultifieldDataset.from_directory(tmp_path, fields=("Mtot", "HI"))
    assert len(ds) == 45
    assert ds.parameter_names == CAMELS_PARAMETERS
    assert ds.output_names == ("Mtot", "HI")
    assert ds.output_spec == {
        "Mtot": {"shape": [8, 8], "dtype": "float32"},
        "HI": {"shape": [8, 8], "dtype": "float32"},
    }
    assert ds.theta.shape == (45, 6) and ds.theta.dtype == np.float64
    assert ds.index.dtype == np.int64 and np.array_equal(ds.index, np.arange(45))
    # row j belongs to simulation j // 15
    np.testing.assert_array_equal(ds.theta, np.repeat(params, 15, axis=0))
    np.testing.assert_array_equal(ds.simulation, np.arange(45) // 15)
    np.testing.assert_array_equal(ds.read("Mtot"), maps["Mtot"])
    rows = np.array([0, 14, 15, 44])
    np.testing.assert_array_equal(ds.read("HI", rows), maps["HI"][rows])
    item = ds[16]
    assert set(item) == {"theta", "Mtot", "HI"}
    np.testing.assert_array_equal(item["theta"], params[1])
    np.testing.assert_array_equal(item["Mtot"], maps["Mtot"][16])
    batches = list(ds.iter_batches(20))
    assert [len(b["index"]) for b in batches] == [20, 20, 5]
    np.testing.assert_array_equal(np.concatenate([b["Mtot"] for b in batches]), maps["Mtot"])


def test_single_file_takes_the_field_name_and_is_memory_mapped(tmp_path):
    write_cmd(tmp_path, fields=("Mgas",))
    ds = CamelsMultifieldDataset(
        cmd_map_path(tmp_path, "Mgas", "IllustrisTNG", "LH"), cmd_params_path(tmp_path, "IllustrisTNG", "LH")
    )
    assert ds.output_names == ("Mgas",)
    assert isinstance(ds._arrays["Mgas"], np.memmap)


def test_works_in_a_torch_dataloader(tmp_path):
    torch = pytest.importorskip("torch")
    write_cmd(tmp_path)
    ds = CamelsMultifieldDataset.from_directory(tmp_path)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert batch["theta"].shape == (6, 6) and batch["Mtot"].shape == (6, 8, 8)


def test_same_schema_as_camels_like_simulations(tmp_path):
    from cosmosbi.simulators import make_simulator
    from cosmosbi.simulators.runner import run_simulations
    from cosmosbi.simulators.store import SimulationDataset

    write_cmd(tmp_path, n_pix=16)
    real = CamelsMultifieldDataset.from_directory(tmp_path)
    sim = make_simulator("camels_like", {"n_grid": 16, "transfer_function": "eisenstein_hu"})
    run_simulations(sim, 2, tmp_path / "sims", seed=0, progress=False)
    simulated = SimulationDataset(tmp_path / "sims")
    assert real.parameter_names == simulated.parameter_names
    assert real.output_names == simulated.output_names
    assert real.output_spec == simulated.output_spec
    assert real[0].keys() == simulated[0].keys()


def test_rejects_row_count_not_a_multiple_of_15(tmp_path):
    write_cmd(tmp_path)
    path = cmd_map_path(tmp_path, "Mtot", "IllustrisTNG", "LH")
    np.save(path, np.ones((44, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"Maps_Mtot.*44 maps is not a multiple of 15"):
        CamelsMultifieldDataset.from_directory(tmp_path)


def test_rejects_params_rows_that_do_not_match_the_maps(tmp_path):
    write_cmd(tmp_path)
    np.save(cmd_map_path(tmp_path, "Mtot", "IllustrisTNG", "LH"), np.ones((30, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"params_LH_IllustrisTNG.txt: 3 simulations.*30 maps = 2 simulations"):
        CamelsMultifieldDataset.from_directory(tmp_path)


def test_rejects_wrong_map_shape(tmp_path):
    write_cmd(tmp_path)
    np.save(cmd_map_path(tmp_path, "Mtot", "IllustrisTNG", "LH"), np.ones((45, 64), np.float32))
    with pytest.raises(ValueError, match=r"Maps_Mtot.*expected maps of shape \(N, n, n\), got \(45, 64\)"):
        CamelsMultifieldDataset.from_directory(tmp_path)


def test_rejects_wrong_number_of_parameter_columns(tmp_path):
    write_cmd(tmp_path)
    np.savetxt(cmd_params_path(tmp_path, "IllustrisTNG", "LH"), np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"params_LH_IllustrisTNG.txt: 5 parameter columns, expected 6"):
        CamelsMultifieldDataset.from_directory(tmp_path)


def test_rejects_fields_with_different_row_counts(tmp_path):
    write_cmd(tmp_path, fields=("Mtot", "HI"))
    np.save(cmd_map_path(tmp_path, "HI", "IllustrisTNG", "LH"), np.ones((30, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"Maps_HI.*30 maps, but .*Maps_Mtot.* has 45"):
        CamelsMultifieldDataset.from_directory(tmp_path, fields=("Mtot", "HI"))


def test_missing_files_are_named(tmp_path):
    write_cmd(tmp_path)
    with pytest.raises(FileNotFoundError, match="Maps_HI_IllustrisTNG_LH_z=0.00.npy"):
        CamelsMultifieldDataset.from_directory(tmp_path, fields=("HI",))
    with pytest.raises(FileNotFoundError, match="params_LH_SIMBA.txt"):
        np.save(cmd_map_path(tmp_path, "Mtot", "SIMBA", "LH"), np.ones((45, 8, 8), np.float32))
        CamelsMultifieldDataset.from_directory(tmp_path, suite="SIMBA")


def test_never_unpickles(tmp_path):
    write_cmd(tmp_path)
    path = cmd_map_path(tmp_path, "Mtot", "IllustrisTNG", "LH")
    np.save(path, np.empty((15, 2, 2), dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Maps_Mtot"):
        CamelsMultifieldDataset(path, cmd_params_path(tmp_path, "IllustrisTNG", "LH"))


def test_unrecognised_file_name_needs_an_output_name(tmp_path):
    write_cmd(tmp_path)
    other = tmp_path / "my_maps.npy"
    np.save(other, np.ones((45, 8, 8), np.float32))
    with pytest.raises(ValueError, match="field name"):
        CamelsMultifieldDataset(other, cmd_params_path(tmp_path, "IllustrisTNG", "LH"))
    ds = CamelsMultifieldDataset({"Mtot": other}, cmd_params_path(tmp_path, "IllustrisTNG", "LH"))
    assert ds.output_names == ("Mtot",)
