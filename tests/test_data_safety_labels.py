"""Honest labels and the input contract (issue 18, Why 4, 5 and 10): normalised-or-not from metadata, noise in the
uncertainty and the low_snr flag, flags for too few pixels / flat / noise-only / out-of-distribution spectra,
duplicate wavelengths anywhere, explicit mask semantics, ReaderError for broken headers, argument checks of fit."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, fake_apogee_spectrum

from spectrafm_hf import SpectraFMPipeline, Spectrum, SpectrumError, read, synth
from spectrafm_hf.instruments import MaskWarning, ReaderError
from spectrafm_hf.pipeline import FLAGS, row_flags
from spectrafm_hf.processing_spectrafm import spectrum_snr, unit_says_normalized

FIX = Path(__file__).parent / "fixtures" / "apogee"
APSTAR = FIX / "apStar-dr17-2M19485057+5005279.fits"
ASPCAP_TESTONLY = FIX / "TESTONLY_aspcapStar-format_2M19485057+5005279.fits"
BASE = Path(__file__).parents[1] / "src" / "spectrafm_hf" / "resources" / "models" / "spectrafm-base"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many small forward passes: one thread is several times faster than two on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    return SpectraFMPipeline.from_pretrained(TINY, device="cpu")


@pytest.fixture(scope="module")
def dwarf():
    return read(APSTAR)[0]


def degrade(s, target, rng):
    """The spectrum with noise added so that every pixel's error is its own times S/N_orig / target (ivar too)."""
    g = s.good
    snr0 = np.median(np.abs(s.flux[g]) * np.sqrt(s.ivar[g]))
    sigma0 = np.where(g, 1 / np.sqrt(np.where(g, s.ivar, 1)), 0)
    sigma = sigma0 * snr0 / target
    flux = s.flux + np.sqrt(np.maximum(sigma**2 - sigma0**2, 0)) * rng.standard_normal(s.flux.size)
    return Spectrum(s.wavelength, flux, ivar=np.where(g, 1 / np.where(g, sigma, 1) ** 2, 0), mask=s.mask,
                    instrument="apogee", meta={k: v for k, v in s.meta.items() if k != "normalization"})


def flags(table):
    return [set(f.split(";")) - {""} for f in table["flag"]]


# ================================================================ Why 4: normalised or not, from metadata first
def test_flux_unit_decides_before_the_median():
    assert unit_says_normalized("Flux (10^-17 erg/s/cm^2/Ang)") is False  # the apStar BUNIT
    assert unit_says_normalized("Jy") is False and unit_says_normalized("counts") is False
    assert unit_says_normalized("normalized flux") is True
    assert unit_says_normalized("") is None and unit_says_normalized(None) is None


def test_real_dwarf_raw_flux_is_normalised_by_the_processor_as_the_readme_example_does(pipe, dwarf):
    assert dwarf.meta["flux_unit"].startswith("Flux (10^-17 erg")
    table = pipe.predict(dwarf)  # README: pipe.predict(read(apStar)); failed before ("beyond +-10 sigma")
    assert table["normalization"].item() == "continuum_pixels:metadata"
    # without the reader's flag the BUNIT alone decides
    no_flag = Spectrum(dwarf.wavelength, dwarf.flux, ivar=dwarf.ivar, mask=dwarf.mask,
                       meta={"flux_unit": dwarf.meta["flux_unit"]})
    assert pipe.processor.prepare(no_flag).meta["normalization"] == "continuum_pixels:flux_unit"
    # the aspcapStar layout says normalised: used as given
    aspcap = read(ASPCAP_TESTONLY)[0]
    assert pipe.processor.prepare(aspcap).meta["normalization"] == "as_given:metadata"


def test_bunit_of_a_generic_fits_image_decides_before_the_guess(pipe, tmp_path):
    from astropy.io import fits

    wl = 15200.0 + 0.2 * np.arange(3000)
    flux = (1.0 + 0.05 * np.sin(wl / 50.0) - 0.2 * np.exp(-0.5 * ((wl[:, None] - wl[::60]) / 0.5) ** 2).sum(1))
    h = fits.PrimaryHDU(flux.astype(np.float32))
    h.header.update(CRVAL1=15200.0, CDELT1=0.2, CRPIX1=1.0, BUNIT="1e-17 erg/s/cm2/A")
    h.writeto(tmp_path / "image.fits")
    s = read(tmp_path / "image.fits")[0]
    assert s.meta["normalized_from"] == "guess" and s.meta["flux_unit"] == "1e-17 erg/s/cm2/A"
    assert pipe.processor.prepare(s).meta["normalization"] == "chebyshev:flux_unit"  # median ~1, but a flux unit


def test_median_divided_dwarf_is_not_mistaken_for_a_normalised_spectrum(pipe, dwarf):
    med = np.median(dwarf.flux[dwarf.good])
    divided = Spectrum(dwarf.wavelength, dwarf.flux / med, ivar=dwarf.ivar * med**2, mask=dwarf.mask)
    assert 0.5 < np.median(divided.flux[divided.good]) < 1.5  # the old median test called it normalised
    a, b = pipe.predict(divided), pipe.predict(dwarf)
    assert a["normalization"].item() == "continuum_pixels:guess"  # the guess is recorded in the table
    np.testing.assert_allclose(a["TEFF"], b["TEFF"], rtol=1e-6)
    # the caller's spectrum is not changed by the processor
    assert divided.meta == {} and np.median(divided.flux[divided.good]) == pytest.approx(1.0)


def test_a_normalised_spectrum_is_used_as_given(pipe, rng):
    s = fake_apogee_spectrum(rng)
    assert pipe.processor.prepare(s).meta["normalization"] == "as_given:guess"
    synthetic = synth.generate(1, seed=3, snr=300, continuum="pseudo", as_spectra=True)[0]
    assert pipe.processor.prepare(synthetic).meta["normalization"] == "as_given:metadata"


# ================================================================ Why 5: noise in the uncertainty, low_snr flag
def test_low_snr_is_flagged_and_gets_the_noise_term(pipe, dwarf):
    proc = pipe.processor
    assert proc.snr_range and proc.snr_range[0] > 20  # stored with the checkpoint (benchmarks/reliability_stats.py)
    rng = np.random.default_rng(0)
    for target in (10, round(proc.snr_range[0] / 2)):  # far below, and half the lowest training S/N
        noisy = degrade(dwarf, target, rng)
        row = pipe.predict(noisy)
        assert row["snr"].item() == pytest.approx(target, rel=0.15)
        assert "low_snr" in flags(row)[0]
        # opt-in Monte-Carlo draws add the label change under more noise on top of the S/N scaling
        assert pipe.predict(noisy, noise_draws=4)["TEFF_err"].item() > row["TEFF_err"].item()
    # inside the training S/N range: no flag, no noise term
    clean = synth.generate(1, seed=5, snr=400, continuum="pseudo", as_spectra=True)[0]
    row = pipe.predict(clean)
    assert spectrum_snr(clean) > proc.snr_range[0] and "low_snr" not in flags(row)[0]
    assert row["TEFF_err"].item() == pipe.predict(clean, noise_draws=4)["TEFF_err"].item()


@pytest.fixture(scope="module")
def base():
    return SpectraFMPipeline.from_pretrained(BASE, device="cpu")


def test_uncertainty_grows_with_noise(base, dwarf):
    """The tiny random model hardly reacts to its input, so the growth is checked with spectrafm-base on one chip
    of the real dwarf (fast): before, ivar only masked pixels and S/N 10 got a SMALLER Teff error than S/N 100."""
    chip = dwarf.crop(15150, 15800)
    rng = np.random.default_rng(0)
    err = {t: base.predict(degrade(chip, t, rng))["TEFF_err"].item() for t in (10, 30, 100)}
    assert err[10] > err[30] > err[100]


def test_base_model_dwarf_at_snr_10_is_covered_or_flagged(base, dwarf):
    """The issue's goal on spectrafm-base: at S/N 10 the Teff 68 % interval covers the undegraded value, or the row
    is flagged (before: 3767 +- 90 K against ~4950 K, no flag). benchmarks/dwarf_snr.py measures 10, 30 and 100."""
    ref = base.predict(dwarf)["TEFF"].item()
    row = base.predict(degrade(dwarf, 10, np.random.default_rng(1)))
    covered = abs(row["TEFF"].item() - ref) <= row["TEFF_err"].item()
    assert covered or row["flag"].item()
    assert "low_snr" in flags(row)[0]


# ================================================================ Why 5: flat, noise, one or two pixels
def test_flat_noise_and_one_or_two_pixel_spectra_are_flagged(pipe, rng):
    wl = synth.get_instrument("apogee").wavelength
    flat = Spectrum(wl, np.ones(wl.size))
    noise = Spectrum(wl, rng.normal(1.0, 0.01, wl.size))
    noise_ivar = Spectrum(wl, rng.normal(1.0, 0.01, wl.size), ivar=np.full(wl.size, 1e4))
    one = Spectrum(wl[:1], [0.98])
    two = Spectrum(wl[:2], [0.98, 0.95])
    real = fake_apogee_spectrum(rng)
    f = flags(pipe.predict([flat, noise, noise_ivar, one, two, real]))
    assert "flat" in f[0]
    assert "noise_only" in f[1] and "noise_only" in f[2]
    assert "too_few_pixels" in f[3] and "too_few_pixels" in f[4]
    assert not f[5] & {"flat", "noise_only", "too_few_pixels", "low_snr"}
    assert all(name in FLAGS for row in f for name in row if not name.endswith("_outside_training_range"))


def test_cli_flags_come_from_the_same_function(pipe, rng):
    from spectrafm_hf.cli import _flags

    table = pipe.predict([fake_apogee_spectrum(rng), Spectrum([15200.0], [1.0])])
    for row in table.to_dict("records"):
        assert _flags(row, pipe) == row_flags(row, pipe.processor) == row["flag"]


# ================================================================ Why 5: out-of-distribution embeddings
def test_ood_threshold_flags_about_one_percent_of_in_domain_spectra(pipe):
    proc = pipe.processor
    assert len(proc.embedding_mean) == pipe.model.config.hidden_size and proc.embedding_threshold > 0
    fresh = synth.generate(300, seed=123_456, snr=200, continuum="pseudo", as_spectra=True)  # not the calibration's
    table = pipe.predict(fresh, noise_draws=0)
    frac = np.mean(["out_of_distribution" in f for f in flags(table)])
    assert frac <= 0.04, frac
    # far from the training spectra: flagged
    wl = synth.get_instrument("apogee").wavelength
    odd = Spectrum(wl, 1.0 + 0.3 * np.sin(wl / 3.0))
    assert "out_of_distribution" in flags(pipe.predict(odd))[0]


def test_base_model_carries_its_reliability_statistics():
    cfg = json.loads((BASE / "preprocessor_config.json").read_text())
    assert len(cfg["embedding_mean"]) == 128 and len(cfg["embedding_whitening"]) == 128
    assert cfg["embedding_threshold"] > 0 and cfg["snr_range"][0] > 20
    assert cfg["continuum"]["method"] == "continuum_pixels"


# ================================================================ Why 10: the input contract
def test_duplicate_wavelengths_are_caught_anywhere(tmp_path):
    wl = np.array([15200.0, 15201.0, 15202.0, 15203.0, 15201.0, 15204.0])
    with pytest.raises(SpectrumError, match="duplicated wavelength 15201 A at pixels 1 and 4"):
        Spectrum(wl, np.ones(wl.size))
    path = tmp_path / "dup.csv"
    path.write_text("wavelength,flux\n" + "".join(f"{w},1.0\n" for w in wl))
    with pytest.raises(ReaderError, match=str(path)):
        read(path)


def test_mask_semantics_are_explicit(tmp_path):
    wl = 15200.0 + np.arange(100.0)
    bad = np.zeros(100, int)
    bad[[3, 50]] = 1
    # a "mask" column where 1 = bad: read as True = good it would keep 2 pixels -> a warning saying so
    path = tmp_path / "mask_is_bad.csv"
    path.write_text("wavelength,flux,mask\n" + "".join(f"{w},1.0,{b}\n" for w, b in zip(wl, bad)))
    with pytest.warns(MaskWarning, match="bad_mask='mask'"):
        s = read(path)[0]
    assert s.n_good == 2
    s = read(path, bad_mask="mask")[0]
    assert s.n_good == 98 and not s.good[3] and not s.good[50]
    # a column named like a bad-pixel mask is read as nonzero = bad, and says so
    path2 = tmp_path / "bitmask.csv"
    path2.write_text("wavelength,flux,mask_bad\n" + "".join(f"{w},1.0,{4 * b}\n" for w, b in zip(wl, bad)))
    with pytest.warns(MaskWarning, match="BAD-pixel"):
        assert read(path2)[0].n_good == 98
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskWarning)
        assert read(path2, bad_mask="mask_bad")[0].n_good == 98
    with pytest.raises(ReaderError, match="bad_mask='nope'"):
        read(path2, bad_mask="nope")
    # Spectrum: bad_mask= is True = bad; an integer bitmask given as mask= is refused
    assert Spectrum(wl, np.ones(100), bad_mask=bad.astype(bool)).n_good == 98
    with pytest.raises(SpectrumError, match="bitmask"):
        Spectrum(wl, np.ones(100), mask=4 * bad)


def test_fits_with_a_nan_wcs_keyword_is_a_reader_error_naming_the_file(tmp_path):
    from astropy.io import fits

    path = tmp_path / "nan_wcs.fits"
    h = fits.PrimaryHDU(np.ones(100, np.float32))
    h.header["CRVAL1"], h.header["CDELT1"], h.header["CRPIX1"] = 15200.0, 0.2, 1.0
    h.writeto(path)
    raw = path.read_bytes().replace(b"CDELT1  =                  0.2", b"CDELT1  =                  NAN")
    path.write_bytes(raw)
    with pytest.raises(ReaderError, match=str(path)):  # was astropy's VerifyError, without the path
        read(path)


def test_fit_and_predict_arguments_are_checked_by_name(pipe, rng):
    spectra = [fake_apogee_spectrum(rng, n=80) for _ in range(2)]
    labels = np.tile([[4800.0, 2.5, 0.1, 0.1, -0.2]], (2, 1))
    with pytest.raises(ValueError, match="labels=\\[\\]"):
        pipe.predict(spectra, labels=[])
    with pytest.raises(ValueError, match="batch_size"):
        pipe.fit(spectra, labels, batch_size=0)
    with pytest.raises(ValueError, match="steps"):
        pipe.fit(spectra, labels, steps=0)
    with pytest.raises(ValueError, match="label_names=\\[\\]"):
        pipe.fit(spectra, labels, label_names=[])
    with pytest.raises(ValueError, match="NaN"):
        pipe.fit(spectra, np.full_like(labels, np.nan), steps=1)
    with pytest.raises(ValueError, match="noise_draws"):
        pipe.predict(spectra, noise_draws=-1)
