"""benchmarks/miles_emulator_fit.py's chi^2 fitter on a toy emulator: the held-labels fit keeps Teff and logg where
they were given and recovers [M/H]; the free fit moves all three."""

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


def test_held_teff_logg_fit_recovers_mh_and_keeps_them(tmp_path):
    mef = _fit_module()
    em = random_optical_emulator(seed=3)
    path = save_optical_emulator(tmp_path / "toy.npz", em.arrays)
    cfg = {"synthetic": {"emulator": str(path), "fwhm": 2.5, "model_fwhm": 1.2},
           "normalize": {"window": 151, "percentile": 90.0}}
    wavelength = np.arange(3600.0, 7400.0, 0.9)
    fitter = mef.GiantFitter(cfg, wavelength)
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
