#!/usr/bin/env python
"""Where does the synthetic-to-MILES [Fe/H] bias live? A chi^2 fit of MILES giants with the optical emulator itself.

SpectraFM pretrained on the bossbrain emulator over-estimates [Fe/H] of metal-poor cool MILES giants (issue 14:
bias +0.55 before fine-tuning, miles_summary.json ``metal_poor_by_star_type``). This benchmark asks the emulator
directly, no network in between: each MILES giant (logg <= 3.5, in the preset's Teff domain) is fitted by least
squares with emulated spectra degraded and pseudo-continuum normalised exactly as the pretraining spectra are
(scripts/configs/miles_fewshot_cpu.yaml), with three sets of free labels:

- ``teff_logg_mh``: Teff, logg, [M/H]; the alpha elements on the pretraining prior's trend, every other [X/M] 0;
- ``alpha``: also one [alpha/M] for O, Mg, Si, Ca, Ti;
- ``alpha_cn``: also [C/M] and [N/M];
- ``mh_at_miles_teff_logg``: [M/H] alone, Teff and logg held at the star's MILES values: is the [M/H] bias in the
  emulator's metallicity scale, or in where the fit puts Teff and logg?
- ``logg_mh_at_miles_teff``: logg and [M/H], Teff alone held: is Teff enough?
- ``balmer_lines``: Teff, logg and [M/H] from the pixels within ``BALMER_HALF_WIDTH`` of H-alpha to H-delta alone,
  the classical Teff indicator that metallicity barely touches: does this emulator give an unbiased Teff there?

Per group (metal-poor / metal-rich x cool / warm giants) it reports the bias and RMSE of the fitted [M/H] against
MILES [Fe/H], the median reduced chi^2 (flux error 0.02) and the mean fitted extra abundances. The mean [N/M] of the
metal-rich giants of the TRAIN split (the pool the few-shot stars are drawn from; no test star) is what
``synthetic.abundance_offsets`` of the MILES preset is set from.

    python benchmarks/miles_emulator_fit.py [--config scripts/configs/miles_fewshot_cpu.yaml]
        [--out benchmarks/results/miles_emulator_fit.json] [--fits NAME ...]

``--fits`` runs only the named fits and merges them into an existing ``--out`` (the others are kept). Every fit
reports, per group, the fitted Teff and logg's bias against MILES's too.

``--corrections none mean linear depth_scale`` asks instead whether the emulator can be corrected from the real stars a
few-shot user has: for each draw of the preset, the draw's 100 metal-rich stars (its giants, at their MILES labels)
fit a per-pixel correction of the emulated flux, and the metal-poor giants and the metal-rich cool giants outside
the draw and the validation split are fitted again (Teff, logg, [M/H] free) with the corrected emulator:

- ``mean``: the mean residual MILES - emulator, added to every emulated spectrum;
- ``linear``: the residual linear in Teff, logg and [Fe/H] (ridge), evaluated at the fitted labels;
- ``depth_scale``: line depths scaled per pixel, 1 - k * (1 - flux), k by least squares on the residuals;
- ``residual_modes``: nothing added to the emulated flux; the residuals' leading ``RESIDUAL_MODES`` patterns (SVD)
  are down-weighted instead, as a noise covariance (generalised least squares): a mismatch that looks like the
  metal-rich giants' own cannot pull the fitted labels.

    python benchmarks/miles_emulator_fit.py --corrections none mean linear depth_scale residual_modes
        # ~15 min on one core
        # -> benchmarks/results/miles_emulator_correction.json

``--test_reading`` reads the preset's test stars with the emulator alone, as a classical analysis would: every star
outside the validation split (dwarfs too, at the emulator's logg bound 3.5) fitted with Teff, logg and [M/H] free
from four fixed starts (Teff 4000 / 5000 K x logg 1.5 / 3.0, [M/H] -0.5; the lowest chi^2 kept: no label of the star
is used), then scored per draw on that draw's test stars as the preset scores its rows, with the scratch NN's
metal-poor RMSE (the preset's committed table) for the ratio. No MILES label is used for fitting, so it is a
zero-shot reading, like ``spectrafm_synthetic_only``.

    python benchmarks/miles_emulator_fit.py --test_reading   # ~20 min on one core
        # -> benchmarks/results/miles_emulator_reading.json (+ .csv: each star's fitted labels and chi^2)

Needs the converted emulator (scripts/convert_bossbrain.py) and MILES (pip sdss-mangadap); 14 min on one core
(every fit; the earlier machine took ~25).
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

FREE_SETS = {"teff_logg_mh": (), "alpha": ("alpha",), "alpha_cn": ("alpha", "cn"),
             "mh_at_miles_teff_logg": ("fixed_teff_logg",), "logg_mh_at_miles_teff": ("fixed_teff",),
             "balmer_lines": ("balmer",)}
BALMER_VACUUM = (6564.6, 4862.7, 4341.7, 4102.9)   # H-alpha, beta, gamma, delta (Angstrom, vacuum as MILES)
BALMER_HALF_WIDTH = 30.0   # Angstrom: the wings at MILES's 2.5 A resolution
FLUX_ERROR = 0.02  # a nominal per-pixel error: chi^2 values compare fits, they are not a goodness-of-fit test
RESIDUAL_MODES = 20   # `residual_modes`: how many patterns (5 and 20 were screened on draw 77, from ~55 giants)
MISMATCH_FREE_ERROR = 0.01   # `residual_modes`: the per-pixel error left outside the modes (MILES S/N ~100)
COLUMN = {n: i for i, n in enumerate(LABEL_NAMES)}
ALPHA_COLUMNS = [COLUMN[n] for n in ALPHA_LABELS]


class GiantFitter:
    def __init__(self, cfg: dict, wavelength):
        s = cfg["synthetic"]
        self.em = load_optical_emulator(s.get("emulator"))
        self.wavelength = wavelength
        self.balmer = np.any([np.abs(np.asarray(wavelength) - c) < BALMER_HALF_WIDTH for c in BALMER_VACUUM], axis=0)
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

    def fit(self, flux, good, teff0, logg0, free, correct=None, whiten=None):
        """Best-fit parameters (Teff/1000, logg, [M/H], extras...) and the reduced chi^2; starts at the star's own
        Teff and logg and [M/H] = -0.5 (never at its [Fe/H]). ``correct(model_flux, p)``: a correction of the
        emulated flux; ``whiten(residual, good)``: a noise covariance's whitening of the residual (`corrections`)."""
        lo = [3.5, 0.0, -2.5] + [-0.5] * ("alpha" in free) + [-0.6, -0.6] * ("cn" in free)
        hi = [6.0, 3.5, 0.5] + [0.6] * ("alpha" in free) + [0.6, 0.6] * ("cn" in free)
        p0 = [teff0 / 1000.0, logg0, -0.5] + [0.1] * ("alpha" in free) + [0.0, 0.0] * ("cn" in free)
        p0 = np.clip(p0, np.add(lo, 1e-3), np.subtract(hi, 1e-3))
        held = 2 if "fixed_teff_logg" in free else 1 if "fixed_teff" in free else 0   # at p0, the star's own
        if "balmer" in free:
            good = good & self.balmer
        correct = correct or (lambda model, p: model)
        whiten = whiten or (lambda r, good: r / FLUX_ERROR)

        def residual(q):
            p = np.r_[p0[:held], q]
            return whiten((correct(self.spectrum(p, free), p) - flux)[good], good)

        r = least_squares(residual, p0[held:], bounds=(lo[held:], hi[held:]), diff_step=1e-3, max_nfev=60)
        return np.r_[p0[:held], r.x], float(np.mean(r.fun ** 2))


def corrections(fitter, flux, good, teff, logg, feh, stars) -> dict:
    """Per-pixel corrections of the emulated flux fitted on ``stars`` at their MILES labels: {name: (correct(model,
    p), whiten(residual, good) or None)} with p = (Teff/1000, logg, [M/H], ...) the labels being fitted."""
    model = np.array([fitter.spectrum(np.array([teff[i] / 1000.0, logg[i], feh[i]]), ()) for i in stars])
    use = good[stars] & np.isfinite(flux[stars])
    resid = np.where(use, flux[stars] - model, 0.0)
    n = np.maximum(use.sum(0), 1)
    mean = resid.sum(0) / n
    x = np.stack([np.ones(stars.size), teff[stars] / 1000.0 - 4.5, logg[stars] - 2.0, feh[stars]], 1)
    coef = np.linalg.solve(x.T @ x + 1e-2 * np.eye(4), x.T @ resid)   # ridge: a few tens of giants, 4 terms
    depth_model, depth_real = np.where(use, 1.0 - model, 0.0), np.where(use, 1.0 - flux[stars], 0.0)
    k = (depth_model * depth_real).sum(0) / np.maximum((depth_model ** 2).sum(0), 1e-6)
    # residual_modes: covariance sigma^2 I + V diag(lam) V^T from the leading patterns; its inverse square root
    # shrinks each pattern's share of a residual by 1 - sqrt(sigma^2 / (sigma^2 + lam))
    _, s, vt = np.linalg.svd(resid, full_matrices=False)
    modes, lam = vt[:RESIDUAL_MODES].T, s[:RESIDUAL_MODES] ** 2 / stars.size
    shrink = 1.0 - np.sqrt(MISMATCH_FREE_ERROR ** 2 / (MISMATCH_FREE_ERROR ** 2 + lam))

    def whiten(r, use):
        v = modes[use]
        return (r - v @ (shrink * (v.T @ r))) / MISMATCH_FREE_ERROR

    return {"none": (lambda m, p: m, None),
            "mean": (lambda m, p: m + mean, None),
            "linear": (lambda m, p: m + np.array([1.0, p[0] - 4.5, p[1] - 2.0, p[2]]) @ coef, None),
            "depth_scale": (lambda m, p: 1.0 - k * (1.0 - m), None),
            "residual_modes": (lambda m, p: m, whiten)}


def correction_study(cfg, names, arrays, flux, good, keep) -> dict:
    """`--corrections`: per draw, corrections fitted on its few-shot giants, scored on the giants it never saw."""
    teff, logg, feh = (np.asarray(arrays.labels[n], float) for n in ("TEFF", "LOGG", "FE_H"))
    e = cfg["fewshot"]
    min_feh = float(e.get("min_feh", -1.0))
    idx = miles_fewshot.fewshot_indices(cfg, arrays, keep, e["draws"])   # the preset's own draws
    giants = idx["testable"][logg[idx["testable"]] <= 3.5]
    fitter = GiantFitter(cfg, arrays.wavelength)
    out = {"draws": {}}
    for draw in e["draws"]:
        few = idx["few"][draw]
        unseen = np.setdiff1d(giants, few)
        groups = {"metal_poor_cool_giants": unseen[(feh[unseen] <= min_feh) & (teff[unseen] <= 5000.0)],
                  "metal_poor_warm_giants": unseen[(feh[unseen] <= min_feh) & (teff[unseen] > 5000.0)],
                  # every 4th (~60): enough for a bias, a quarter of the fitting time
                  "metal_rich_cool_giants": unseen[(feh[unseen] > min_feh) & (teff[unseen] <= 5000.0)][::4]}
        fitted_on = few[logg[few] <= 3.5]
        correct = corrections(fitter, flux, good, teff, logg, feh, fitted_on)
        row = {"n_giants_fitted_on": int(fitted_on.size), **{f"n_{g}": int(m.size) for g, m in groups.items()}}
        for name in names:
            t = time.time()
            row[name] = {}
            for g, stars in groups.items():
                params = np.array([fitter.fit(flux[i], good[i] & np.isfinite(flux[i]), teff[i], logg[i], (),
                                              *correct[name])[0] for i in stars])
                resid = params[:, 2] - feh[stars]
                row[name][g] = {"mh_bias": float(resid.mean()), "mh_rmse": float(np.sqrt((resid ** 2).mean())),
                                "teff_bias": float((params[:, 0] * 1000.0 - teff[stars]).mean()),
                                "logg_bias": float((params[:, 1] - logg[stars]).mean())}
            row[name]["seconds"] = round(time.time() - t, 1)
            print(draw, name, json.dumps(row[name]), flush=True)
        out["draws"][str(draw)] = row
    out["mean_of_draws"] = {name: {g: {k: float(np.mean([out["draws"][str(d)][name][g][k] for d in e["draws"]]))
                                       for k in ("mh_bias", "mh_rmse", "teff_bias", "logg_bias")}
                                   for g in groups} for name in names}
    return out


TEST_STARTS = [(4.0, 1.5), (4.0, 3.0), (5.0, 1.5), (5.0, 3.0)]   # (Teff / 1000, logg): fixed, never the star's own


def zero_shot_reading(cfg, arrays, flux, good, keep, csv_path: Path) -> dict:
    """`--test_reading`: the emulator's zero-shot chi^2 reading of every testable star, scored per draw."""
    import pandas as pd

    teff, logg, feh = (np.asarray(arrays.labels[n], float) for n in ("TEFF", "LOGG", "FE_H"))
    e = cfg["fewshot"]
    min_feh = float(e.get("min_feh", -1.0))
    idx = miles_fewshot.fewshot_indices(cfg, arrays, keep, e["draws"])
    fitter = GiantFitter(cfg, arrays.wavelength)
    t = time.time()
    rows = []
    for i in idx["testable"]:
        use = good[i] & np.isfinite(flux[i])
        fits = [fitter.fit(flux[i], use, t0 * 1000.0, g0, ()) for t0, g0 in TEST_STARTS]
        p, chi2 = min(fits, key=lambda f: f[1])
        rows.append({"object_id": str(arrays.object_id[i]), "teff": teff[i], "logg": logg[i], "fe_h": feh[i],
                     "teff_fit": p[0] * 1000.0, "logg_fit": p[1], "mh_fit": p[2], "chi2": chi2})
    stars = pd.DataFrame(rows)
    stars.to_csv(csv_path, index=False, float_format="%.5g")
    fitted = dict(zip(idx["testable"], stars.mh_fit))
    out = {"seconds": round(time.time() - t), "starts": TEST_STARTS, "draws": {}}
    for draw in e["draws"]:
        test = np.setdiff1d(idx["testable"], idx["few"][draw])
        err = np.array([fitted[i] for i in test]) - feh[test]
        poor = feh[test] < min_feh
        types = miles_fewshot.star_groups(teff[test], logg[test], feh[test], min_feh)
        groups = {"all": np.ones(test.size, bool), "feh_lt_-1": poor, "feh_ge_-1": ~poor,
                  **{g: types[g] for g in ("metal_poor_cool_giants", "metal_poor_warm_giants", "metal_poor_dwarfs")}}
        row = {g: {"n": int(m.sum()), "bias": float(err[m].mean()) if m.any() else None,
                   "rmse": float(np.sqrt(np.mean(err[m] ** 2))) if m.any() else None} for g, m in groups.items()}
        row["scratch_nn_metal_poor_rmse"] = miles_fewshot.committed_scratch_rmse([draw])
        row["ratio"] = row["scratch_nn_metal_poor_rmse"] / row["feh_lt_-1"]["rmse"]
        out["draws"][str(draw)] = row
    draws = [out["draws"][str(d)] for d in e["draws"]]
    mean = {g: {k: float(np.mean([r[g][k] for r in draws])) if all(r[g]["n"] for r in draws) else None
                for k in ("bias", "rmse")} for g in groups}
    scratch_poor = float(np.mean([r["scratch_nn_metal_poor_rmse"] for r in draws]))
    out["mean_of_draws"] = {**mean, "scratch_nn_metal_poor_rmse": scratch_poor,
                            "ratio": scratch_poor / mean["feh_lt_-1"]["rmse"]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "scripts/configs/miles_fewshot_cpu.yaml"))
    ap.add_argument("--out", help="default benchmarks/results/miles_emulator_fit.json, with --corrections "
                                  "benchmarks/results/miles_emulator_correction.json")
    ap.add_argument("--fits", nargs="+", choices=list(FREE_SETS), default=list(FREE_SETS),
                    help="only these fits, merged into an existing --out (default: all)")
    ap.add_argument("--test_reading", action="store_true",
                    help="read every test star with the emulator alone, scored as the preset's rows (docstring)")
    ap.add_argument("--corrections", nargs="+", choices=["none", "mean", "linear", "depth_scale", "residual_modes"],
                    help="score emulator corrections fitted on each draw's few-shot stars instead (docstring)")
    a = ap.parse_args(argv)
    cfg = read_yaml(Path(a.config).read_text())
    arrays, flux, good, keep = miles_fewshot.miles_tables(cfg)
    a.out = a.out or str(ROOT / "benchmarks/results" / ("miles_emulator_correction.json" if a.corrections else
                                                         "miles_emulator_reading.json" if a.test_reading else
                                                         "miles_emulator_fit.json"))
    if a.test_reading:
        out = {"command": "python benchmarks/miles_emulator_fit.py --test_reading",
               **zero_shot_reading(cfg, arrays, flux, good, keep, Path(a.out).with_suffix(".csv"))}
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out["mean_of_draws"], indent=1))
        return 0
    if a.corrections:
        out = {"command": "python benchmarks/miles_emulator_fit.py --corrections " + " ".join(a.corrections),
               "flux_error": FLUX_ERROR, **correction_study(cfg, a.corrections, arrays, flux, good, keep)}
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
        print("wrote", a.out)
        return 0
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
    if set(a.fits) != set(FREE_SETS) and Path(a.out).is_file():   # a partial run keeps the other fits
        kept = json.loads(Path(a.out).read_text())
        if kept.get("n_giants") != out["n_giants"] or kept.get("config") != out["config"]:
            raise SystemExit(f"{a.out} was made from other giants or another config; run every fit (no --fits)")
        out["fits"] = kept["fits"]
    for name in a.fits:
        free = FREE_SETS[name]
        t = time.time()
        rows = [fitter.fit(flux[i], good[i] & np.isfinite(flux[i]), teff[i], logg[i], free) for i in giants]
        params = np.array([r[0] for r in rows])
        chi2 = np.array([r[1] for r in rows])
        resid = params[:, 2] - feh[giants]
        extras = ["alpha_m"] * ("alpha" in free) + ["c_m", "n_m"] * ("cn" in free)
        d_teff, d_logg = params[:, 0] * 1000.0 - teff[giants], params[:, 1] - logg[giants]
        out["fits"][name] = {
            "seconds": round(time.time() - t, 1),
            **{g: {"n": int(m.sum()), "mh_bias": float(resid[m].mean()), "mh_rmse": float(np.sqrt((resid[m] ** 2).mean())),
                   "median_chi2": float(np.median(chi2[m])),
                   "teff_bias": float(d_teff[m].mean()), "logg_bias": float(d_logg[m].mean()),
                   **{f"mean_{e}": float(params[m, 3 + j].mean()) for j, e in enumerate(extras)}}
               for g, m in groups.items()}}
        print(name, json.dumps(out["fits"][name]), flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
