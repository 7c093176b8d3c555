"""Bad input, untrusted files and numerical safety: property-based tests over the Spectrum/processor/readers,
config validation on load, and determinism."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spectrafm_hf import SpectraFMModel, SpectraFMPipeline, SpectraFMProcessor, Spectrum, SpectrumError, read

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def raw_spectra(draw):
    n = draw(st.integers(min_value=0, max_value=80))
    base = draw(st.sampled_from([15200.0, 8500.0, 1.55, 1550.0, 5000.0]))
    steps = draw(st.lists(st.floats(min_value=-0.5, max_value=2.0, allow_nan=False), min_size=n, max_size=n))
    wl = base + np.cumsum(np.asarray(steps, dtype=np.float64)) if n else np.zeros(0)
    flux = np.asarray(draw(st.lists(FLOATS, min_size=n, max_size=n)), dtype=np.float64)
    kind = draw(st.sampled_from(["none", "ivar", "err"]))
    extra = {}
    if kind != "none":
        vals = np.asarray(draw(st.lists(FLOATS, min_size=n, max_size=n)), dtype=np.float64)
        extra["ivar" if kind == "ivar" else "flux_err"] = vals
    if draw(st.booleans()):
        extra["mask"] = np.asarray(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    return wl, flux, extra


@settings(max_examples=150, deadline=30000, suppress_health_check=[HealthCheck.too_slow])
@given(raw_spectra())
def test_any_input_gives_a_spectrum_or_a_clear_error(raw):
    wl, flux, extra = raw
    try:
        s = Spectrum(wavelength=wl, flux=flux, **extra)
    except SpectrumError as e:
        assert str(e)  # a message, and a ValueError subclass
        return
    assert np.all(np.diff(s.wavelength) > 0)
    assert s.good.dtype == bool and len(s.good) == len(s)
    if s.ivar is not None:
        assert np.all(s.ivar[np.isfinite(s.ivar)] >= 0)
    proc = SpectraFMProcessor(flux_center=1.0, flux_scale=0.1, context_length=16)
    try:
        wl2, x, good = proc.normalize(s)
    except SpectrumError as e:
        assert "no usable pixel" in str(e) or "continuum-normalised" in str(e)
        return
    assert np.all(np.isfinite(x[good])) and np.all(np.abs(x[good]) <= proc.clip_sigma)
    assert np.all(np.isnan(x[~good]))


@pytest.fixture(scope="module")
def pipe():
    return SpectraFMPipeline.from_pretrained(TINY, device="cpu")


@settings(max_examples=30, deadline=30000, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(raw_spectra())
def test_predict_never_returns_unflagged_nan(pipe, raw):
    wl, flux, extra = raw
    try:
        s = Spectrum(wavelength=wl, flux=flux, **extra)
        table = pipe.predict(s)
    except SpectrumError:
        return
    values = table[[c for c in table.columns if c.split("_")[0] in ("TEFF", "LOGG", "O", "MG", "FE")]].to_numpy()
    assert np.isfinite(values).all()
    assert table["n_pixels"].item() >= 1


@settings(max_examples=40, deadline=30000, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=4000), st.sampled_from([b"", b"SIMPLE  =                    T", b"PK\x03\x04",
                                                             b"\x1f\x8b", b"wavelength,flux\n"]))
def test_readers_refuse_garbage_with_a_reader_error(tmp_path_factory, payload, prefix):
    path = tmp_path_factory.mktemp("garbage") / "file.fits"
    path.write_bytes(prefix + payload)
    try:
        spectra = read(path)
    except ValueError as e:  # ReaderError / UnknownFormatError / SpectrumError are ValueErrors
        assert str(path) in str(e) or path.name in str(e)
        return
    assert all(isinstance(s, Spectrum) for s in spectra)


def test_config_with_the_wrong_model_type_is_refused(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("model.safetensors",):
        (folder / name).write_bytes((TINY / name).read_bytes())
    cfg = json.loads((TINY / "config.json").read_text())
    cfg["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((ValueError, OSError, TypeError)):
        SpectraFMModel.from_pretrained(folder)


def test_weights_of_the_wrong_shape_are_refused(tmp_path):
    folder = tmp_path / "mismatch"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((TINY / "model.safetensors").read_bytes())
    cfg = json.loads((TINY / "config.json").read_text())
    cfg["hidden_size"] = 16
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((RuntimeError, ValueError)):
        SpectraFMModel.from_pretrained(folder)


def test_config_values_are_validated_on_load(tmp_path):
    folder = tmp_path / "invalid"
    folder.mkdir()
    cfg = json.loads((TINY / "config.json").read_text())
    cfg["decoder_num_heads"] = [3, 2, 1]  # 8 is not divisible by 3
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes((TINY / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="divisible"):
        SpectraFMModel.from_pretrained(folder)


def test_only_safetensors_weights_are_loaded(tmp_path):
    """A folder whose weights are a pickle (pytorch_model.bin) is not silently unpickled."""
    folder = tmp_path / "pickle"
    folder.mkdir()
    (folder / "config.json").write_text((TINY / "config.json").read_text())
    torch.save(SpectraFMModel.from_pretrained(TINY).state_dict(), folder / "pytorch_model.bin")
    try:
        model = SpectraFMModel.from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError):
        return
    raise AssertionError(f"loaded weights from a pickle: {type(model)}")


def test_fine_tuning_is_deterministic_for_a_seed(pipe, rng):
    from conftest import fake_apogee_spectrum

    spectra = [fake_apogee_spectrum(rng, n=80) for _ in range(4)]
    labels = np.array([[-0.5], [0.0], [0.2], [-1.2]])
    a = pipe.fit(spectra, labels, label_names=["FE_H"], steps=3, seed=11)
    b = pipe.fit(spectra, labels, label_names=["FE_H"], steps=3, seed=11)
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k
