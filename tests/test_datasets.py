"""The datasets builders write the one schema, for synthetic, observed-domain and survey-file sources."""

from pathlib import Path

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


def test_files_config_generators_get_paths_and_read_block_by_block(tmp_path, monkeypatch):
    """_split_generators reads no spectrum (only paths go to the generators), so a large folder never sits in
    memory; a split with no spectrum at all is simply empty."""
    import spectrafm_hf.instruments as instruments

    labels = pd.DataFrame({"object_id": ["2M19485057+5005279"], "TEFF": [5226.0], "split": ["test"]})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    builder = SpectraFMDatasets(config_name="files", cache_dir=str(tmp_path / "c"), label_table=str(tmp_path / "labels.csv"),
                                data_dir=str(TESTS / "fixtures" / "apogee"), label_names=["TEFF"], block_size=1)
    calls = []
    real_read = instruments.read
    monkeypatch.setattr(instruments, "read", lambda *a, **k: calls.append(a[0]) or real_read(*a, **k))
    gens = builder._split_generators(None)
    assert not calls and {g.name for g in gens} == {"train", "test"}
    assert all(isinstance(p, str) for g in gens for p in g.gen_kwargs["files"])
    builder.download_and_prepare()
    dsd = builder.as_dataset()
    assert len(dsd["test"]) == 2 and set(dsd["test"]["object_id"]) == {"2M19485057+5005279"}  # apStar + aspcapStar
    assert len(dsd["train"]) == 2 and np.isnan(dsd["train"]["TEFF"]).all()


def test_files_config_refuses_a_label_table_that_matches_nothing(tmp_path):
    pd.DataFrame({"object_id": ["nobody"], "TEFF": [5000.0]}).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(ValueError, match="no object_id of the label table matches"):
        load_spectra_dataset("files", cache_dir=str(tmp_path / "c"), data_dir=str(TESTS / "fixtures" / "apogee"),
                             label_table=str(tmp_path / "labels.csv"), label_names=["TEFF"])


def test_builder_cache_follows_the_generating_code(tmp_path, monkeypatch):
    """The Arrow cache is keyed by the package version and a fingerprint of the generating code: a changed
    generator builds afresh instead of reusing rows written by the old code."""
    import spectrafm_hf
    from spectrafm_hf.data import builder as builder_module

    kw = dict(config_name="synthetic_apogee", cache_dir=str(tmp_path), n_train=4, n_validation=0, n_test=0)
    first = SpectraFMDatasets(**kw)
    assert str(first.config.version) == spectrafm_hf.__version__
    assert first.hash == builder_module.generator_fingerprint() and len(first.hash) == 16
    first.download_and_prepare()
    assert first.hash in first.cache_dir
    same = SpectraFMDatasets(**kw)
    assert same.cache_dir == first.cache_dir  # unchanged code: the cache is reused
    monkeypatch.setattr(builder_module, "generator_fingerprint", lambda: "0123456789abcdef")
    changed = SpectraFMDatasets(**kw)
    assert changed.cache_dir != first.cache_dir and "0123456789abcdef" in changed.cache_dir


def test_generator_fingerprint_changes_with_any_generating_file(tmp_path):
    import shutil

    from spectrafm_hf.data import builder as builder_module

    package = Path(builder_module.__file__).resolve().parent.parent
    copy = tmp_path / "pkg"
    for entry in builder_module._GENERATING_CODE:
        src, dst = package / entry, copy / entry
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    base = builder_module._fingerprint(copy, "0.1.0")
    assert base == builder_module._fingerprint(package, "0.1.0")  # content, not location
    assert builder_module._fingerprint(copy, "0.2.0") != base
    target = copy / "synth" / "realism.py"
    target.write_text(target.read_text() + "\n# changed\n")
    assert builder_module._fingerprint(copy, "0.1.0") != base


def test_dataset_spectra_read_in_batches_match_row_by_row_reading(tmp_path):
    """`dataset_spectra` (column by column, a batch at a time) gives what `row_to_spectrum` of each row gives, with
    the dataset's row selection honoured across batch edges; `arrow_rows` keeps a null list as None and reads
    fixed-size and sliced list columns at the right offsets."""
    import pyarrow as pa

    from spectrafm_hf.data import arrow_rows, dataset_spectra

    obs = load_spectra_dataset("observed_apogee", cache_dir=str(tmp_path), n_train=12, n_validation=0, n_test=0)
    picked = obs["train"].select([9, 2, 7, 0, 11, 4])  # an indices mapping, out of order
    fast = dataset_spectra(picked, batch_size=4)
    slow = [row_to_spectrum(r) for r in picked.with_format("numpy")]
    assert [s.meta["object_id"] for s in fast] == [str(s.meta["object_id"]) for s in slow]
    for a, b in zip(fast, slow):
        for name in ("wavelength", "flux", "ivar", "mask"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))  # NaN where a pixel is bad
        assert a.meta["labels"].keys() == b.meta["labels"].keys()
        assert np.allclose([a.meta["labels"][k] for k in a.meta["labels"]],
                           [b.meta["labels"][k] for k in b.meta["labels"]], equal_nan=True)

    table = pa.table({"flux": pa.array([[1.0, 2.0], None, [3.0], []], pa.list_(pa.float32())),
                      "fixed": pa.array([[1, 2], [3, 4], [5, 6], [7, 8]], pa.list_(pa.int64(), 2)),
                      "object_id": ["a", "b", "c", "d"]})
    rows = arrow_rows(table.slice(1, 3))
    assert [r["object_id"] for r in rows] == ["b", "c", "d"]
    assert rows[0]["flux"] is None and rows[1]["flux"].tolist() == [3.0] and rows[2]["flux"].tolist() == []
    assert [r["fixed"].tolist() for r in rows] == [[3, 4], [5, 6], [7, 8]]
    assert arrow_rows(table.slice(0, 0)) == []
