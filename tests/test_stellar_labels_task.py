"""``transformers.pipeline("stellar-labels", ...)`` is the package's SpectraFMPipeline behind the Hugging Face
pipeline API: same table, row for row."""

import pandas as pd
import pytest
from conftest import TESTS, TINY
from transformers import pipeline

import spectrafm_hf  # noqa: F401  (registers the task)
from spectrafm_hf import SpectraFMPipeline, StellarLabelsPipeline, read

APOGEE = TESTS / "fixtures" / "apogee"


def test_pipeline_task_returns_the_package_table():
    labeller = pipeline("stellar-labels", model=str(TINY), device="cpu")
    assert isinstance(labeller, StellarLabelsPipeline)
    spectra = read(APOGEE / "TESTONLY_aspcapStar-format_2M19485057+5005279.fits")
    expected = SpectraFMPipeline.from_pretrained(TINY, device="cpu").predict(spectra, seed=3)
    pd.testing.assert_frame_equal(labeller(spectra, seed=3), expected)
    # a file path reads like spectrafm_hf.read; labels= picks columns as in predict
    by_path = labeller(str(APOGEE / "TESTONLY_aspcapStar-format_2M19485057+5005279.fits"), labels=["FE_H"], seed=3)
    assert list(by_path.columns[:3]) == ["FE_H", "FE_H_err", "FE_H_scatter"]
    assert by_path["FE_H"].iloc[0] == pytest.approx(expected["FE_H"].iloc[0])


def test_pipeline_task_loads_from_the_hub_cache(tmp_path, monkeypatch):
    """A Hub id resolved from the local cache (installed there by install_to_cache) works like a folder."""
    from spectrafm_hf.hub import install_to_cache

    install_to_cache(TINY, "org/tiny-spectrafm", cache_dir=tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    labeller = pipeline("stellar-labels", model="org/tiny-spectrafm", device="cpu")
    spectra = read(APOGEE / "TESTONLY_aspcapStar-format_2M19485057+5005279.fits")
    pd.testing.assert_frame_equal(labeller(spectra), SpectraFMPipeline.from_pretrained(TINY, device="cpu").predict(spectra))


def test_pipeline_task_rejects_bad_input():
    labeller = pipeline("stellar-labels", model=str(TINY), device="cpu")
    with pytest.raises(TypeError, match="Spectrum objects or file paths"):
        labeller(42)
    with pytest.raises(TypeError, match="unexpected arguments"):
        labeller(read(APOGEE / "TESTONLY_aspcapStar-format_2M19485057+5005279.fits"), top_k=3)
