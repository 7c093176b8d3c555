#!/usr/bin/env python
"""Where does the synthetic-to-MILES [Fe/H] bias live? A chi^2 fit of MILES giants with the optical emulator itself.

SpectraFM pretrained on the bossbrain emulator over-estimates [Fe/H] of metal-poor cool MILES giants (issue 14:
bias +0.55 before fine-tuning, miles_summary.json ``metal_poor_by_star_type``). This benchmark asks the emulator
directly, no network in between: each MILES giant (logg <= 3.5, in the preset's Teff domain) is fitted by least
squares with emulated spectra degraded and pseudo-continuum normalised exactly as the pretraining spectra are
(scripts/configs/miles_fewshot_cpu.yaml), with three sets of free labels:

- ``teff_logg_mh``: Teff, logg, [M/H]; the alpha elements on the pretraining prior's trend, every other [X/M] 0;
- ``alpha``: also one [alpha/M] for O, Mg, Si, Ca, Ti;
- ``alpha_cn``: also [C/M] and [N/M].

Per group (metal-poor / metal-rich x cool / warm giants) it reports the bias and RMSE of the fitted [M/H] against
MILES [Fe/H], the median reduced chi^2 (flux error 0.02) and the mean fitted extra abundances. The mean [N/M] of the
metal-rich giants of the TRAIN split (the pool the few-shot stars are drawn from; no test star) is what
``synthetic.abundance_offsets`` of the MILES preset is set from.

    python benchmarks/miles_emulator_fit.py [--config scripts/configs/miles_fewshot_cpu.yaml]
        [--out benchmarks/results/miles_emulator_fit.json]

Needs the converted emulator (scripts/convert_bossbrain.py) and MILES (pip sdss-mangadap); ~10 min on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import miles_fewshot  # noqa: E402
import inspect  # noqa: E402

from spectrafm_hf.synth.optical import (ALPHA_LABELS, LABEL_NAMES, degrade, load_optical_emulator,  # noqa: E402
                                        pseudo_continuum_normalize, sample_optical_labels)
from spectrafm_hf.training.presets import read_yaml  # noqa: E402

FREE_SETS = {"teff_logg_mh": (), "alpha": ("alpha",), "alpha_cn": ("alpha", "cn")}
FLUX_ERROR = 0.02  # a nominal per-pixel error: chi^2 values compare fits, they are not a goodness-of-fit test
COLUMN = {n: i for i, n in enumerate(LABEL_NAMES)}
ALPHA_COLUMNS = [COLUMN[n] for n in ALPHA_LABELS]


class GiantFitter:
    def __init__(self, cfg: dict, wavelength):
        s = cfg["synthetic"]
        self.em = load_optical_emulator(s.get("emulator"))
        self.wavelength = wavelength
        self.fwhm, self.model_fwhm = float(s["fwhm"]), float(s["model_fwhm"])
        self.normalize = cfg.get("normalize") or {}
        # the pretraining prior's alpha trend, read from its one definition
        self.alpha_poor = inspect.signature(sample_optical_labels).parameters["alpha_poor"].default

    def spectrum(self, p, free) -> np.ndarray:
        x = np.zeros(len(LABEL_NAMES))
        x[0], x[1], x[2] = p[0] * 1000.0, p[1], p[2]
        k = 3
        if "alpha" in free:
            x[ALPHA_COLUMNS] = p[k]
            k += 1
        else:
            x[ALPHA_COLUMNS] = self.alpha_poor * np.clip(-x[2], 0.0, 1.0)
        if "cn" in free:
            x[COLUMN["cm"]], x[COLUMN["nm"]] = p[k], p[k + 1]
        deg = degrade(self.em(x[None]), self.em.wave_air, self.wavelength, fwhm=self.fwhm,
                      model_fwhm=self.model_fwhm, snr=None)
        return pseudo_continuum_normalize(deg, **self.normalize)[0][0]

    def fit(self, flux, good, teff0, logg0, free):
        """Best-fit parameters (Teff/1000, logg, [M/H], extras...) and the reduced chi^2; starts at the star's own
        Teff and logg and [M/H] = -0.5 (never at its [Fe/H])."""
        lo = [3.5, 0.0, -2.5] + [-0.5] * ("alpha" in free) + [-0.6, -0.6] * ("cn" in free)
        hi = [6.0, 3.5, 0.5] + [0.6] * ("alpha" in free) + [0.6, 0.6] * ("cn" in free)
        p0 = [teff0 / 1000.0, logg0, -0.5] + [0.1] * ("alpha" in free) + [0.0, 0.0] * ("cn" in free)
        p0 = np.clip(p0, np.add(lo, 1e-3), np.subtract(hi, 1e-3))
        r = least_squares(lambda p: (self.spectrum(p, free) - flux)[good] / FLUX_ERROR, p0, bounds=(lo, hi),
                          diff_step=1e-3, max_nfev=60)
        return r.x, float(np.mean(r.fun ** 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "scripts/configs/miles_fewshot_cpu.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/miles_emulator_fit.json"))
    a = ap.parse_args(argv)
    cfg = read_yaml(Path(a.config).read_text())
    arrays, flux, good, keep = miles_fewshot.miles_tables(cfg)
    teff, logg, feh = (np.asarray(arrays.labels[n], float) for n in ("TEFF", "LOGG", "FE_H"))
    giants = np.flatnonzero(keep & (logg <= 3.5))
    in_train = np.isin(giants, arrays.splits["train"])
    poor, cool = feh[giants] < -1.0, teff[giants] <= 5000.0
    groups = {"metal_poor_cool_giants": poor & cool, "metal_poor_warm_giants": poor & ~cool,
              "metal_rich_cool_giants": ~poor & cool, "metal_rich_warm_giants": ~poor & ~cool,
              "metal_rich_train_giants": ~poor & in_train}
    fitter = GiantFitter(cfg, arrays.wavelength)
    out = {"config": str(Path(a.config).relative_to(ROOT) if Path(a.config).is_relative_to(ROOT) else a.config),
           "n_giants": int(giants.size), "flux_error": FLUX_ERROR, "fits": {}}
    for name, free in FREE_SETS.items():
        t = time.time()
        rows = [fitter.fit(flux[i], good[i] & np.isfinite(flux[i]), teff[i], logg[i], free) for i in giants]
        params = np.array([r[0] for r in rows])
        chi2 = np.array([r[1] for r in rows])
        resid = params[:, 2] - feh[giants]
        extras = ["alpha_m"] * ("alpha" in free) + ["c_m", "n_m"] * ("cn" in free)
        out["fits"][name] = {
            "seconds": round(time.time() - t, 1),
            **{g: {"n": int(m.sum()), "mh_bias": float(resid[m].mean()), "mh_rmse": float(np.sqrt((resid[m] ** 2).mean())),
                   "median_chi2": float(np.median(chi2[m])),
                   **{f"mean_{e}": float(params[m, 3 + j].mean()) for j, e in enumerate(extras)}}
               for g, m in groups.items()}}
        print(name, json.dumps(out["fits"][name]), flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
