"""Label tables with missing or extra columns at every entry point that takes one (issue #8): `pipe.fit`, the
`files` and `apogee_dr17` dataset configs, `spectrafm finetune` and `spectrafm evaluate`. A missing required
column is a ValueError (or exit code 2) naming it and the columns found; extra columns are ignored."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, fake_apogee_spectrum

from spectrafm_hf.cli import main
from spectrafm_hf.data import column_values, load_spectra_dataset, require_columns


def test_require_columns_names_the_missing_and_the_found_columns():
    require_columns(["object_id", "TEFF", "extra"], ["TEFF"])  # extra columns are fine
    with pytest.raises(ValueError) as e:
        require_columns(["object_id", "teff", "RA"], ["TEFF", "FE_H"], what="t.csv")
    msg = str(e.value)
    assert "t.csv" in msg and "['TEFF', 'FE_H']" in msg and "['object_id', 'teff', 'RA']" in msg
    assert "'teff' for 'TEFF'" in msg  # the likely mistake is pointed out


def test_column_values_reads_a_selected_formatted_column_in_one_slice(monkeypatch):
    """Training reads label columns of tens of thousands of rows; ``np.asarray(dataset[name])`` reads a `datasets`
    column row by row. column_values honours the row selection and format, in one read."""
    import datasets

    ds = datasets.Dataset.from_dict({"object_id": [f"s{i}" for i in range(50)],
                                     "TEFF": np.arange(50, dtype=np.float32) * 10.0 + 4000.0})
    picked = ds.select([7, 3, 41]).with_format("numpy")  # an indices mapping over the table, numpy format
    reads = []
    real_getitem = datasets.Dataset._getitem
    monkeypatch.setattr(datasets.Dataset, "_getitem", lambda self, *a, **k: reads.append(1) or real_getitem(self, *a, **k))
    values = column_values(picked, "TEFF")
    assert values.dtype == np.float64 and values.tolist() == [4070.0, 4030.0, 4410.0]
    assert len(reads) == 1  # one slice, not one read per row
    assert column_values(ds.select([1]), "TEFF", np.float32).tolist() == [4010.0]  # python format too
    with pytest.raises(ValueError, match=r"missing column \['FE_H'\]; the columns found are \['object_id', 'TEFF'\]"):
        column_values(picked, "FE_H")


# ---------------------------------------------------------------------------------------------------- pipe.fit
@pytest.fixture(scope="module")
def pipe():
    from spectrafm_hf import SpectraFMPipeline

    return SpectraFMPipeline.from_pretrained(TINY, device="cpu")


@pytest.fixture
def spectra(rng):
    return [fake_apogee_spectrum(rng, n=80) for _ in range(4)]


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_fit_takes_a_table_and_ignores_its_extra_columns(pipe, spectra):
    fe, teff = [-0.5, 0.0, 0.2, -1.2], [4500.0, 4800.0, 5000.0, 4300.0]
    table = pd.DataFrame({"object_id": list("abcd"), "RA": [1.0, 2, 3, 4], "note": ["x"] * 4, "FE_H": fe,
                          "TEFF": teff, "UNKNOWN_LABEL": 1.0})
    from_array = pipe.fit(spectra, np.column_stack([fe, teff]), label_names=["FE_H", "TEFF"], steps=2, seed=3)
    from_table = pipe.fit(spectra, table, label_names=["FE_H", "TEFF"], steps=2, seed=3)
    assert _same_weights(from_array, from_table)
    # without label_names: the table's columns the model predicts (TEFF, FE_H; in the model's order)
    by_default = pipe.fit(spectra, table, steps=2, seed=3)
    reordered = pipe.fit(spectra, np.column_stack([teff, fe]), label_names=["TEFF", "FE_H"], steps=2, seed=3)
    assert _same_weights(by_default, reordered)
    # a dict of columns works like a DataFrame
    assert _same_weights(pipe.fit(spectra, {"FE_H": fe, "x": [0] * 4}, label_names=["FE_H"], steps=2, seed=3),
                         pipe.fit(spectra, np.array(fe)[:, None], label_names=["FE_H"], steps=2, seed=3))


def test_fit_uses_the_err_columns_of_a_table(pipe, spectra):
    table = pd.DataFrame({"FE_H": [-0.5, 0.0, 0.2, -1.2], "FE_H_err": [0.5, 0.5, np.nan, 0.5]})
    with_err = pipe.fit(spectra, table, label_names=["FE_H"], steps=2, seed=3)
    explicit = pipe.fit(spectra, table[["FE_H"]], label_names=["FE_H"], label_err=[[0.5], [0.5], [0.0], [0.5]],
                        steps=2, seed=3)
    no_err = pipe.fit(spectra, table[["FE_H"]], label_names=["FE_H"], steps=2, seed=3)
    assert _same_weights(with_err, explicit) and not _same_weights(with_err, no_err)


def test_fit_refuses_a_table_without_the_label_columns(pipe, spectra):
    table = pd.DataFrame({"object_id": list("abcd"), "feh": [0.0] * 4, "TEFF": [4500.0] * 4})
    with pytest.raises(ValueError, match=r"missing column \['FE_H'\].*'object_id', 'feh', 'TEFF'.*'feh' for 'FE_H'"):
        pipe.fit(spectra, table, label_names=["FE_H", "TEFF"], steps=1)
    with pytest.raises(ValueError, match=r"none of the model's labels.*\['object_id', 'feh'\]"):
        pipe.fit(spectra, table[["object_id", "feh"]], steps=1)
    with pytest.raises(ValueError, match="3 rows for 4 spectra"):
        pipe.fit(spectra, table.iloc[:3], label_names=["TEFF"], steps=1)
    with pytest.raises(ValueError, match=r"label_err table: missing column \['TEFF_err'\]"):
        pipe.fit(spectra, table, label_names=["TEFF"], label_err=pd.DataFrame({"FE_H_err": [0.1] * 4}), steps=1)


def test_fit_refuses_a_label_array_of_the_wrong_shape(pipe, spectra):
    with pytest.raises(ValueError, match=r"shape \(2, 4\).*\['FE_H', 'TEFF'\] need \(4, 2\)"):
        pipe.fit(spectra, np.zeros((2, 4)), label_names=["FE_H", "TEFF"], steps=1)  # transposed: was reshaped
    pipe.fit(spectra, np.zeros(4), label_names=["FE_H"], label_err=0.1, steps=1)  # 1-D and a scalar error are fine


# ---------------------------------------------------------------------------------------------------- datasets
def _npz_folder(folder, n=6):
    folder.mkdir()
    rng = np.random.default_rng(5)
    wl = np.linspace(15200.0, 16900.0, 300)
    for i in range(n):
        np.savez(folder / f"star{i}.npz", wavelength=wl, flux=1 - 0.1 * rng.random(wl.size), object_id=f"star{i}")
    return folder


def test_files_config_ignores_extra_columns_and_warns_about_missing_labels(tmp_path):
    data = _npz_folder(tmp_path / "data")
    table = pd.DataFrame({"object_id": [f"star{i}" for i in range(6)], "FE_H": np.linspace(-1, 0.3, 6),
                          "FE_H_err": 0.02, "TEFF": 4800.0, "RA": 10.0, "comment": "ok", "split": "train"})
    table.to_csv(tmp_path / "labels.csv", index=False)
    with pytest.warns(UserWarning, match=r"no column for \['LOGG', 'O_FE', 'MG_FE'\]"):
        dsd = load_spectra_dataset("files", cache_dir=str(tmp_path / "c"), data_dir=str(data),
                                   label_table=str(tmp_path / "labels.csv"))
    train = dsd["train"]
    assert "RA" not in train.column_names and "comment" not in train.column_names
    rows = {r["object_id"]: r for r in train}
    assert rows["star5"]["FE_H"] == pytest.approx(0.3) and rows["star0"]["FE_H_err"] == pytest.approx(0.02)
    assert np.isnan(rows["star0"]["LOGG"])


@pytest.mark.parametrize("columns, match", [
    ({"id": ["star0"], "FE_H": [0.0]}, r"needs an 'object_id' column; it has \['id', 'FE_H'\]"),
    ({"object_id": ["star0"], "teff": [4800.0], "feh": [0.0]},
     r"none of the labels: missing columns \['TEFF', 'LOGG', 'O_FE', 'MG_FE', 'FE_H'\]; the columns found are "
     r"\['object_id', 'teff', 'feh'\] \(similar names: 'teff' for 'TEFF', 'feh' for 'FE_H'\)"),
    ({"object_id": ["2M000", "2M001"], "FE_H": [0.0, 0.1]}, r"no object_id of the label table matches a spectrum"),
])
def test_files_config_refuses_a_label_table_it_cannot_use(tmp_path, columns, match):
    data = _npz_folder(tmp_path / "data")
    pd.DataFrame(columns).to_parquet(tmp_path / "labels.parquet")
    with warnings.catch_warnings(), pytest.raises(ValueError, match=match):
        warnings.simplefilter("ignore")
        load_spectra_dataset("files", cache_dir=str(tmp_path / "c"), data_dir=str(data),
                             label_table=str(tmp_path / "labels.parquet"))


def test_apogee_dr17_config_names_the_missing_allstar_columns(tmp_path):
    from astropy.table import Table

    allstar = tmp_path / "allStar.fits"
    Table({"APOGEE_ID": ["2M1"], "SNR": [300.0], "TEFF": [4800.0], "EXTRA": [1]}).write(allstar)
    (tmp_path / "aspcap").mkdir()
    with pytest.raises(ValueError, match=r"missing columns \['STARFLAG', 'VSCATTER', 'ASPCAPFLAG'\].*'EXTRA'"):
        load_spectra_dataset("apogee_dr17", cache_dir=str(tmp_path / "c"), label_table=str(allstar),
                             data_dir=str(tmp_path / "aspcap"))


# ---------------------------------------------------------------------------------------------------- CLI
def _finetune_yaml(tmp_path, label_table):
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(f"""output_dir: {tmp_path / 'ft'}
model_name_or_path: {TINY}
target_labels: [FE_H]
dataset_config: files
dataset_kwargs: {{data_dir: {tmp_path / 'data'}, label_table: {label_table}}}
dataset_cache_dir: {tmp_path / 'cache'}
max_steps: 2
per_device_train_batch_size: 4
eval_strategy: "no"
save_strategy: "no"
use_cpu: true
report_to: []
""")
    return str(cfg)


def test_finetune_with_a_label_table_with_extra_columns(tmp_path, capsys):
    _npz_folder(tmp_path / "data")
    table = pd.DataFrame({"object_id": [f"star{i}" for i in range(6)], "FE_H": np.linspace(-1, 0.3, 6),
                          "TEFF": 4800.0, "RA": 10.0, "survey": "made-up"})
    table.to_csv(tmp_path / "labels.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LOGG, O_FE, MG_FE are not in the table: fine, FE_H is trained
        assert main(["finetune", _finetune_yaml(tmp_path, tmp_path / "labels.csv")]) == 0
    assert (tmp_path / "ft" / "final" / "model.safetensors").is_file()


def test_finetune_without_the_target_label_column_is_exit_two_naming_it(tmp_path, capsys):
    _npz_folder(tmp_path / "data")
    table = pd.DataFrame({"object_id": [f"star{i}" for i in range(6)], "TEFF": 4800.0, "M_H": 0.0})
    table.to_csv(tmp_path / "labels.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["finetune", _finetune_yaml(tmp_path, tmp_path / "labels.csv")]) == 2
    err = capsys.readouterr().err
    assert "finetune:" in err and "['FE_H']" in err and "all NaN" in err and "'TEFF'" in err
    assert not (tmp_path / "ft" / "final").exists()


def test_run_training_names_label_columns_missing_from_the_data(tmp_path):
    from conftest import fake_dataset_dict

    from spectrafm_hf.training.run import check_label_columns

    train = fake_dataset_dict(n_train=6, n_eval=2)["train"].remove_columns(["MG_FE", "MG_FE_err"])
    check_label_columns(train, ["FE_H", "TEFF"])  # present; the extra columns are ignored
    with pytest.raises(ValueError, match=r"missing column \['MG_FE'\].*'TEFF', 'TEFF_err'"):
        check_label_columns(train, ["FE_H", "MG_FE"])
    with pytest.raises(ValueError, match=r"missing column \['VMAG'\]"):
        check_label_columns(train, ["FE_H"], input_label_names=["VMAG"])


def test_evaluate_names_the_missing_label_columns(tmp_path, capsys):
    data = tmp_path / "obs.parquet"
    assert main(["synth", "--instrument", "apogee", "--n", "4", "--seed", "1", "-o", str(data)]) == 0
    pd.read_parquet(data).drop(columns=["FE_H", "FE_H_err"]).assign(RA=1.0).to_parquet(data)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(TINY), "--data", str(data), "--labels", "TEFF", "FE_H"]) == 2
    err = capsys.readouterr().err
    assert "['FE_H']" in err and "'TEFF'" in err and "'RA'" in err
    assert main(["evaluate", "--model", str(TINY), "--data", str(data), "--labels", "TEFF"]) == 0  # RA: ignored
