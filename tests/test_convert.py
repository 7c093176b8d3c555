"""The converter reproduces the paper's forward on a random original-format checkpoint."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from original_format import LABELS, make_original_folder, reference_predict

from spectrafm_hf import SpectraFMPipeline, Spectrum
from spectrafm_hf.convert import convert_original_checkpoint
from spectrafm_hf.grids import apogee_wavelength_7514


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("orig")
    original = make_original_folder(root / "epoch_120", seed=3)
    out = root / "converted"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_original_checkpoint.py"),
                          str(original), str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return original, out


def test_converted_pipeline_reproduces_the_original_forward(converted):
    original, out = converted
    pipe = SpectraFMPipeline.from_pretrained(out, device="cpu")
    rng = np.random.default_rng(0)
    wl = apogee_wavelength_7514()
    idx = np.sort(rng.choice(7514, 300, replace=False))
    import json
    cfg = json.loads((original / "config.json").read_text())
    mean = np.asarray(cfg["norm_config"]["_input_mean"])[idx + 1]
    std = np.asarray(cfg["norm_config"]["_input_std"])[idx + 1]
    flux = mean + std * rng.normal(0, 1.5, idx.size)  # within the +-10 sigma clip
    # normalised flux, and said so: the made-up per-pixel means of the fixture look nothing like a spectrum, so
    # the processor's guess would take them for raw flux
    table = pipe.predict(Spectrum(wavelength=wl[idx], flux=flux, meta={"normalized": True}))
    assert table["n_subsets"].item() == 1 and table["n_pixels"].item() == 300
    for label in LABELS:
        ref_mean, ref_sigma = reference_predict(original, idx, flux, label)
        # float32 through ~8M parameters along two kernel paths: agreement to ~1e-5 relative (a wrong mapping of
        # any weight gives O(1) differences)
        assert table[label].item() == pytest.approx(ref_mean, rel=1e-4, abs=1e-6)
        assert table[f"{label}_err"].item() == pytest.approx(ref_sigma, rel=1e-4)


def test_converted_folder_loads_with_automodel_and_keeps_the_stats(converted):
    from transformers import AutoModel

    from spectrafm_hf import SpectraFMModel, SpectraFMProcessor

    original, out = converted
    assert isinstance(AutoModel.from_pretrained(out), SpectraFMModel)
    proc = SpectraFMProcessor.from_pretrained(out)
    assert proc.flux_normalization == "per_pixel" and len(proc.reference_wavelength) == 7514
    assert proc.label_names == LABELS
    assert proc.label_centers[4] == pytest.approx(-0.158940)


def test_off_grid_pixels_are_masked_and_fully_off_grid_spectra_refused(converted):
    from spectrafm_hf import SpectrumError

    _, out = converted
    pipe = SpectraFMPipeline.from_pretrained(out, device="cpu")
    wl = apogee_wavelength_7514()
    half_step = (wl[1:11] + wl[:10]) / 2  # exactly between grid pixels
    with pytest.raises(SpectrumError, match="reference wavelength grid"):
        pipe.predict(Spectrum(wavelength=half_step, flux=np.ones(10)))
    centers = np.asarray(pipe.processor.pixel_centers)
    wave = np.concatenate([wl[:20], half_step])
    flux = np.concatenate([centers[:20], centers[:10]])  # on-grid pixels at their median: never clipped
    order = np.argsort(wave)
    mixed = Spectrum(wavelength=wave[order], flux=flux[order])
    assert pipe.predict(mixed)["n_pixels"].item() == 20


def test_unprefixed_checkpoint_converts_too(tmp_path):
    original = make_original_folder(tmp_path / "plain", seed=1, ddp_prefix=False)
    model = convert_original_checkpoint(original, tmp_path / "out")
    assert model.config.label_names == LABELS
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_converter_names_what_is_missing(tmp_path):
    (tmp_path / "bad").mkdir()
    with pytest.raises(FileNotFoundError, match="weights.pt"):
        convert_original_checkpoint(tmp_path / "bad", tmp_path / "out")
    assert not (tmp_path / "out").exists()
