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
