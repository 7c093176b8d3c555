"""The datasets builders write the one schema, for synthetic, observed-domain and survey-file sources."""

import numpy as np
import pandas as pd
import pytest
from conftest import TESTS

from spectrafm_hf.data import SpectraFMDatasets, features, load_spectra_dataset, row_to_spectrum


def test_synthetic_and_observed_configs(tmp_path):
    clean = load_spectra_dataset("synthetic_apogee", cache_dir=str(tmp_path), n_train=30, n_validation=10,
                                 n_test=0, seed=3)
    assert set(clean) == {"train", "validation"} and len(clean["train"]) == 30
    assert clean["train"].features == features()
    row = clean["train"][0]
    assert len(row["flux"]) == len(row["wavelength"]) == 7514 and 15100 < row["wavelength"][0] < 15200
    assert np.isfinite(row["TEFF"]) and np.isnan(row["TEFF_err"])
    obs = load_spectra_dataset("observed_apogee", cache_dir=str(tmp_path), n_train=20, n_validation=0, n_test=0)
    r = obs["train"][0]
    assert len(r["ivar"]) == 7514 and not all(r["mask"]) and r["FE_H_err"] > 0
    spec = row_to_spectrum(r)
    assert 0 < spec.n_good < 7514
    # same seed, same data: the builder is deterministic
    again = load_spectra_dataset("synthetic_apogee", cache_dir=str(tmp_path / "b"), n_train=30, n_validation=10,
                                 n_test=0, seed=3)
    assert np.array_equal(np.asarray(again["train"][5]["flux"]), np.asarray(clean["train"][5]["flux"]))


def test_streaming_without_writing_a_cache(tmp_path):
    builder = SpectraFMDatasets(config_name="synthetic_apogee", cache_dir=str(tmp_path), n_train=12,
                                n_validation=0, n_test=0, block_size=5)
    stream = builder.as_streaming_dataset(split="train")
    rows = list(stream)
    assert len(rows) == 12 and len({r["object_id"] for r in rows}) == 12


def test_files_config_reads_survey_files_and_a_label_table(tmp_path):
    labels = pd.DataFrame({"object_id": ["2M19485057+5005279"], "TEFF": [5226.0], "LOGG": [5.0],
                           "FE_H": [-0.22], "FE_H_err": [0.01], "split": ["test"]})
    table = tmp_path / "labels.csv"
    labels.to_csv(table, index=False)
    dsd = load_spectra_dataset("files", cache_dir=str(tmp_path / "c"), data_dir=str(TESTS / "fixtures" / "apogee"),
                               label_table=str(table))
    assert "test" in dsd and "train" in dsd
    test = dsd["test"]
    assert all(o == "2M19485057+5005279" for o in test["object_id"])
    assert test[0]["TEFF"] == pytest.approx(5226.0) and np.isnan(test[0]["O_FE"])
    assert len(dsd["train"]) >= 2  # the two apVisit stars, without labels


def test_files_config_needs_a_folder(tmp_path):
    with pytest.raises(ValueError, match="data_dir"):
        load_spectra_dataset("files", cache_dir=str(tmp_path))


def test_apogee_dr17_config_applies_the_paper_cuts(tmp_path):
    import shutil

    from astropy.table import Table

    star_id = "2M19485057+5005279"
    folder = tmp_path / "aspcap" / "apo25m" / "field"
    folder.mkdir(parents=True)
    shutil.copy(TESTS / "fixtures" / "apogee" / f"TESTONLY_aspcapStar-format_{star_id}.fits",
                folder / f"aspcapStar-dr17-{star_id}.fits")
    rows = [  # (id, SNR, STARFLAG, VSCATTER, ASPCAPFLAG, TEFF)
        (star_id, 250.0, 0, 0.1, 0, 5200.0),
        (star_id, 210.0, 0, 0.1, 0, 5300.0),  # lower-S/N duplicate: dropped
        ("2M00000000+0000000", 150.0, 0, 0.1, 0, 4800.0),  # S/N too low
        ("2M11111111+1111111", 300.0, 4, 0.1, 0, 4700.0),  # STARFLAG set
        ("2M22222222+2222222", 300.0, 0, 0.1, 1 << 23, 4600.0),  # STAR_BAD
    ]
    table = Table(rows=rows, names=["APOGEE_ID", "SNR", "STARFLAG", "VSCATTER", "ASPCAPFLAG", "TEFF"])
    for name in ("LOGG", "O_FE", "MG_FE", "FE_H"):
        table[name] = [4.5, 0.05, 0.02, -0.2, 0.0]
        table[f"{name}_ERR"] = 0.01
    table["TEFF_ERR"] = 10.0
    allstar = tmp_path / "allStar-dr17-synspec_rev1.fits"
    table.write(allstar)
    dsd = load_spectra_dataset("apogee_dr17", cache_dir=str(tmp_path / "c"), label_table=str(allstar),
                               data_dir=str(tmp_path / "aspcap"), seed=0)
    rows_out = [r for split in dsd.values() for r in split]
    assert len(rows_out) == 1 and rows_out[0]["object_id"] == star_id
    assert rows_out[0]["TEFF"] == pytest.approx(5200.0) and rows_out[0]["TEFF_err"] == pytest.approx(10.0)
    assert len(rows_out[0]["flux"]) == 8575
