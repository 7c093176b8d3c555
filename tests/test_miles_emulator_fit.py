"""benchmarks/miles_emulator_fit.py's chi^2 fitter on a toy emulator: the held-labels fits keep what they were given
and recover the rest, the free fit moves all three; the Balmer-line fit reads its windows only; residual patterns
down-weighted stop a known mismatch from pulling [M/H]; the zero-shot test reading uses no label of a star."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

from spectrafm_hf.synth.optical import random_optical_emulator, save_optical_emulator

REPO = Path(__file__).resolve().parents[1]


def _fit_module():
    sys.path.insert(0, str(REPO / "scripts"))
    spec = importlib.util.spec_from_file_location("miles_emulator_fit", REPO / "benchmarks/miles_emulator_fit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toy_fitter(tmp_path):
    """The benchmark module and its fitter over a toy emulator on a MILES-like grid."""
    mef = _fit_module()
    path = save_optical_emulator(tmp_path / "toy.npz", random_optical_emulator(seed=3).arrays)
    cfg = {"synthetic": {"emulator": str(path), "fwhm": 2.5, "model_fwhm": 1.2},
           "normalize": {"window": 151, "percentile": 90.0}}
    return mef, mef.GiantFitter(cfg, np.arange(3600.0, 7400.0, 0.9))


def test_held_teff_logg_fit_recovers_mh_and_keeps_them(tmp_path):
    mef, fitter = _toy_fitter(tmp_path)
    truth = np.array([4.4, 1.8, -1.6])  # Teff / 1000, logg, [M/H]
    flux = fitter.spectrum(truth, ())
    good = np.ones(flux.size, bool)
    held, chi2 = fitter.fit(flux, good, 4400.0, 1.8, mef.FREE_SETS["mh_at_miles_teff_logg"])
    assert held.shape == (3,)
    np.testing.assert_allclose(held[:2], truth[:2])          # Teff and logg stay where they were given
    assert abs(held[2] - truth[2]) < 0.05 and chi2 < 1e-2     # [M/H] found from its -0.5 start
    # given a wrong Teff, the held fit cannot move it: [M/H] absorbs what it can and chi^2 rises
    wrong, wrong_chi2 = fitter.fit(flux, good, 4900.0, 1.8, mef.FREE_SETS["mh_at_miles_teff_logg"])
    assert wrong[0] == 4.9 and wrong_chi2 > chi2
    free, _ = fitter.fit(flux, good, 4900.0, 1.8, mef.FREE_SETS["teff_logg_mh"])
    assert abs(free[0] - 4.9) > 1e-3                          # the free fit moves Teff from its start


def test_residual_modes_keep_a_known_mismatch_from_pulling_the_fit(tmp_path):
    """A mismatch pattern the few-shot stars show (at their own labels) is down-weighted by ``residual_modes``: a
    new star carrying it is fitted closer to its [M/H] than by the plain fit, which the pattern pulls."""
    mef, fitter = _toy_fitter(tmp_path)
    rng = np.random.default_rng(0)
    # the mismatch: half the emulator's [M/H] response at the new star (a plain fit reads that as metallicity) plus
    # a pattern of its own, which tells it apart from a true [M/H] change
    truth = np.array([4.5, 2.0, -1.2])
    response = fitter.spectrum(truth + [0, 0, 0.4], ()) - fitter.spectrum(truth, ())
    pattern = 0.5 * response + rng.normal(0.0, np.std(response), response.size)
    teff, logg, feh = rng.uniform(4.2, 4.8, 30) * 1000.0, rng.uniform(1.5, 2.5, 30), rng.uniform(-0.8, 0.2, 30)
    flux = np.array([fitter.spectrum(np.array([t / 1000.0, g, m]), ()) + rng.normal(1.0, 0.3) * pattern
                     for t, g, m in zip(teff, logg, feh)])
    good = np.ones(flux.shape, bool)
    correct = mef.corrections(fitter, flux, good, teff, logg, feh, np.arange(30))
    star = fitter.spectrum(truth, ()) + pattern
    plain = fitter.fit(star, good[0], 4500.0, 2.0, (), *correct["none"])[0]
    modes = fitter.fit(star, good[0], 4500.0, 2.0, (), *correct["residual_modes"])[0]
    assert abs(plain[2] - truth[2]) > 0.1                     # the pattern pulls the plain fit
    assert abs(modes[2] - truth[2]) < 0.5 * abs(plain[2] - truth[2])


def test_teff_held_and_balmer_only_fits(tmp_path):
    """``logg_mh_at_miles_teff`` holds Teff alone; ``balmer_lines`` reads only the Balmer windows, so flux spoiled
    outside them does not move it, while it pulls the fit over every pixel."""
    mef, fitter = _toy_fitter(tmp_path)
    assert 0 < fitter.balmer.sum() < 0.1 * fitter.balmer.size    # four windows of 60 A
    truth = np.array([4.4, 1.8, -1.6])
    flux = fitter.spectrum(truth, ())
    good = np.ones(flux.size, bool)
    held = fitter.fit(flux, good, 4700.0, 1.0, mef.FREE_SETS["logg_mh_at_miles_teff"])[0]
    assert held[0] == 4.7 and held[1] != 1.0                  # Teff stays where it was given, logg moves
    spoiled = flux + np.where(fitter.balmer, 0.0, np.random.default_rng(1).normal(0.0, 0.2, flux.size))
    balmer = fitter.fit(spoiled, good, 4400.0, 1.8, mef.FREE_SETS["balmer_lines"])[0]
    every = fitter.fit(spoiled, good, 4400.0, 1.8, mef.FREE_SETS["teff_logg_mh"])[0]
    np.testing.assert_allclose(balmer, truth, atol=0.02)
    assert np.abs(every - truth).max() > np.abs(balmer - truth).max()


def test_test_reading_scores_every_draw_without_the_stars_labels(tmp_path):
    """``--test_reading`` on the tiny preset's committed MILES stars (4500-5500 A) with a toy emulator: every testable
    star is fitted once, each draw scored on its own test stars against the scratch NN; and no star's Teff or logg is
    used: with them scrambled, every fit comes out the same."""
    import json

    from spectrafm_hf.training.presets import read_yaml

    mef = _fit_module()
    cfg = read_yaml((REPO / "scripts/configs/miles_fewshot_tiny.yaml").read_text())
    path = save_optical_emulator(tmp_path / "toy.npz", random_optical_emulator(seed=3).arrays)
    cfg["synthetic"]["emulator"] = str(path)
    cfg["dataset"].update(data_dir=str(REPO / cfg["dataset"]["data_dir"]), wavelength_range=[4500.0, 5500.0])
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(cfg))
    out = tmp_path / "reading.json"
    assert mef.main(["--config", str(config), "--test_reading", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    stars = np.genfromtxt(out.with_suffix(".csv"), delimiter=",", names=True, dtype=None, encoding=None)
    assert set(result["draws"]) == {str(d) for d in cfg["fewshot"]["draws"]}
    for draw in result["draws"].values():
        assert 0 < draw["all"]["n"] < stars.size
        assert draw["ratio"] == draw["scratch_nn_metal_poor_rmse"] / draw["feh_lt_-1"]["rmse"]
    assert np.all((stars["logg_fit"] >= 0.0) & (stars["logg_fit"] <= 3.5))
    arrays, flux, good, keep = mef.miles_fewshot.miles_tables(cfg)
    order = np.random.default_rng(0).permutation(len(arrays))
    for name in ("TEFF", "LOGG"):   # the draws and the domain stay as they were
        arrays.labels[name] = np.asarray(arrays.labels[name])[order]
    mef.zero_shot_reading(cfg, arrays, flux, good, keep, tmp_path / "scrambled.csv")
    scrambled = np.genfromtxt(tmp_path / "scrambled.csv", delimiter=",", names=True, dtype=None, encoding=None)
    for column in ("teff_fit", "logg_fit", "mh_fit", "chi2"):
        np.testing.assert_array_equal(scrambled[column], stars[column])
    assert not np.array_equal(scrambled["teff"], stars["teff"])
