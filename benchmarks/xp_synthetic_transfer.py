#!/usr/bin/env python
"""Could synthetic spectra teach an XP model [Fe/H], as the paper's pretraining does for APOGEE? (issue 14)

xp_fewshot's metal-poor goal needs a pretraining that has seen [Fe/H]; the paper gets it from synthetic spectra of the
instrument. No synthetic Gaia XP grid can be had offline: the only optical emulator within reach (bossbrain, the one
behind the MILES experiment; giants only, 3500-10500 A) returns continuum-NORMALISED flux, while XP spectra are
flux-calibrated. This builds the best XP-like spectra that emulator allows and measures whether what it teaches
transfers to real XP, with a linear read-out (a cheap necessary condition: a network will not transfer what ridge
cannot see at all):

1. emulator flux (held flat below 3500 A) x a Planck continuum at Teff x Cardelli et al. (1989) extinction
   (R_V = 3.1), a Gaussian line-spread function of resolving power ``--resolution``, sampled on XP's 343-point grid
   and divided by its median;
2. a correction field fitted on 5,000 metal-rich ([Fe/H] > -1, so the few-shot protocol holds) training giants in
   the emulator's box: per pixel, log(real / synthetic) as a cubic in 5040/Teff and logg, plus a per-star A_V
   (alternating least squares); what it leaves is the star-to-star residual;
3. 30,000 synthetic spectra in the box (labels uniform, alpha on the Galactic trend, A_V spread as fitted), with
   the field applied; ridge on their log flux for each label, scored on the real VALIDATION giants in the box
   (correlation with APOGEE; for [Fe/H] also the metal-poor RMSE after an affine fitted on the metal-rich ones).

Also the flux ratio of metal-poor to metal-rich giants at 4700 K / logg 2.2, real against synthetic: the real one
carries the disk's reddening (metal-rich APOGEE stars lie behind more dust), so on XP [Fe/H] and extinction are
confounded in a way a synthetic grid does not know.

    OMP_NUM_THREADS=1 python benchmarks/xp_synthetic_transfer.py [--out benchmarks/results/xp_synthetic_transfer.json]

Needs the bossbrain wheel (`python scripts/convert_bossbrain.py` fetches it; converted here to 3500-10500 A in the
real-data cache). ~3 min on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import real_data  # noqa: E402
from spectrafm_hf.synth.optical import (  # noqa: E402
    ALPHA_LABELS, LABEL_NAMES, convert_bossbrain, default_emulator_path, load_optical_emulator)
from spectrafm_hf.training.presets import read_yaml  # noqa: E402

LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_M"]
BOX = {"teff": (3800.0, 5900.0), "logg": (0.3, 3.4)}  # inside bossbrain's training range (giants)
HC_OVER_K = 1.4388e-2  # m K, second radiation constant


def ccm89(wave_a, r_v=3.1):
    """A_lambda / A_V of Cardelli, Clayton & Mathis (1989), optical and infrared branches."""
    x = 1e4 / np.asarray(wave_a, np.float64)
    y = x - 1.82
    a_opt = np.polyval([0.32999, -0.77530, 0.01979, 0.72085, -0.02427, -0.50447, 0.17699, 1.0], y)
    b_opt = np.polyval([-2.09002, 5.30260, -0.62251, -5.38434, 1.07233, 2.28305, 1.41338, 0.0], y)
    ir = x < 1.1
    a = np.where(ir, 0.574 * x ** 1.61, a_opt)
    b = np.where(ir, -0.527 * x ** 1.61, b_opt)
    return a + b / r_v


class XPLike:
    """Emulator flux -> XP-like flux-calibrated spectra on ``grid`` (Angstrom), divided by their median."""

    def __init__(self, emulator, grid, resolution):
        self.em, self.grid = emulator, np.asarray(grid, np.float64)
        step = float(np.median(np.diff(emulator.wave_air)))
        self.pad = np.arange(self.grid[0] - 60.0, emulator.wave_air[0], step)  # the LSF reaches below 3500 A
        self.wave = np.concatenate([self.pad, emulator.wave_air])
        sigma = self.grid / resolution / 2.3548
        k = np.exp(-0.5 * ((self.grid[:, None] - self.wave[None, :]) / sigma[:, None]) ** 2)
        self.lsf = (k / k.sum(1, keepdims=True)).astype(np.float32)
        self.extinction = -0.4 * np.log(10.0) * ccm89(self.wave)  # d ln(flux) / d A_V
        self.extinction_grid = -0.4 * np.log(10.0) * ccm89(self.grid)

    def __call__(self, labels22, a_v=None):
        f = self.em(labels22)
        f = np.concatenate([np.repeat(f[:, :200].mean(1, keepdims=True), self.pad.size, 1), f], 1)
        lam = self.wave[None, :] * 1e-10
        planck = 1.0 / lam ** 5 / np.expm1(HC_OVER_K / (lam * labels22[:, :1]))
        flux = f * planck / planck.max(1, keepdims=True)
        if a_v is not None:
            flux = flux * np.exp(np.asarray(a_v)[:, None] * self.extinction[None, :])
        s = flux.astype(np.float32) @ self.lsf.T
        return s / np.median(s, axis=1, keepdims=True)


def labels22(teff, logg, feh, alpha):
    out = np.zeros((len(teff), len(LABEL_NAMES)))
    out[:, 0], out[:, 1], out[:, 2] = teff, logg, feh
    for j, name in enumerate(LABEL_NAMES):
        if name in ALPHA_LABELS:
            out[:, j] = alpha
    return out


def design(teff, logg):
    th = 5040.0 / np.asarray(teff)
    g = np.asarray(logg)
    return np.stack([np.ones_like(th), th, th ** 2, th ** 3, g, th * g], 1)


def in_box(y, flux):
    return ((y[:, 0] > BOX["teff"][0]) & (y[:, 0] < BOX["teff"][1]) & (y[:, 1] > BOX["logg"][0])
            & (y[:, 1] < BOX["logg"][1]) & (flux > 0.02).all(1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    p.add_argument("--resolution", type=float, default=50.0, help="XP-like resolving power of the Gaussian LSF")
    p.add_argument("--n_synthetic", type=int, default=30000)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/xp_synthetic_transfer.json"))
    a = p.parse_args(argv)
    from sklearn.linear_model import Ridge

    emulator_path = default_emulator_path().with_name("bossbrain_ann22_xp_3500_10500.npz")
    if not emulator_path.is_file():
        convert_bossbrain(None, emulator_path, wmin=3500.0, wmax=10500.0)
    cfg = read_yaml(Path(a.config).read_text())
    train, val, _ = real_data.load_splits(cfg)
    x_tr, y_tr = real_data.flux_matrix(train), real_data.frame(train, LABELS)[LABELS].to_numpy()
    x_va, y_va = real_data.flux_matrix(val), real_data.frame(val, LABELS)[LABELS].to_numpy()
    grid = np.asarray(train[0]["wavelength"], np.float64)
    xp = XPLike(load_optical_emulator(emulator_path), grid, a.resolution)
    out = {"split": "validation", "resolution": a.resolution, "box": BOX}

    # what [Fe/H] does to the flux at fixed Teff / logg: real (with the Galaxy's dust) against synthetic
    near = (np.abs(y_tr[:, 0] - 4700) < 150) & (np.abs(y_tr[:, 1] - 2.2) < 0.4)
    rich, poor = near & (np.abs(y_tr[:, 2]) < 0.2), near & (np.abs(y_tr[:, 2] + 1.5) < 0.3)
    real_ratio = np.median(x_tr[poor], 0) / np.median(x_tr[rich], 0)
    syn = xp(labels22(np.full(2, 4700.0), np.full(2, 2.2), np.array([-1.5, 0.0]), np.array([0.3, 0.0])))
    at = [int(np.argmin(np.abs(grid - w))) for w in (3760, 4560, 5360, 6560, 8560, 10160)]
    out["poor_over_rich_flux"] = {"n_rich": int(rich.sum()), "n_poor": int(poor.sum()),
                                  **{f"{grid[i]:.0f}A": {"real": round(float(real_ratio[i]), 3),
                                                         "synthetic": round(float(syn[0, i] / syn[1, i]), 3)}
                                     for i in at}}

    # the correction field, on metal-rich training giants only
    fit = np.flatnonzero(in_box(y_tr, x_tr) & (y_tr[:, 2] > -1.0))[:5000]
    resid = np.log(x_tr[fit]) - np.log(xp(labels22(*y_tr[fit].T)))
    d, e = design(y_tr[fit, 0], y_tr[fit, 1]), xp.extinction_grid - xp.extinction_grid.mean()
    a_v = np.zeros(fit.size)
    for _ in range(8):
        coef = np.linalg.lstsq(d, resid - a_v[:, None] * xp.extinction_grid[None], rcond=None)[0]
        r = resid - d @ coef
        a_v = ((r - r.mean(1, keepdims=True)) @ e) / (e @ e)  # the median division leaves the offset free
        a_v -= np.median(a_v)  # the field holds the median extinction
    left = resid - d @ coef - a_v[:, None] * xp.extinction_grid[None]
    left -= left.mean(1, keepdims=True)
    blue, red = grid < 4200, grid > 7000
    out["field"] = {"n_stars": int(fit.size),
                    "a_v_relative_p5_p50_p95": np.percentile(a_v, [5, 50, 95]).round(2).tolist(),
                    "residual_rms": round(float(np.sqrt((left ** 2).mean())), 4),
                    "residual_rms_below_4200A": round(float(np.sqrt((left[:, blue] ** 2).mean())), 4),
                    "residual_rms_above_7000A": round(float(np.sqrt((left[:, red] ** 2).mean())), 4)}

    # synthetic training set -> ridge -> real validation giants
    rng = np.random.default_rng(0)
    n = a.n_synthetic
    teff, logg = rng.uniform(*BOX["teff"], n), rng.uniform(*BOX["logg"], n)
    feh = rng.uniform(-2.5, 0.5, n)
    alpha = np.clip(0.3 * np.clip(-feh, 0, 1) + rng.normal(0, 0.05, n), -0.2, 0.5)
    y_syn = np.stack([teff, logg, feh, alpha], 1)
    av_syn = rng.uniform(np.percentile(a_v, 1) - 0.5, np.percentile(a_v, 99) + 0.3, n)
    log_syn = np.concatenate([np.log(xp(labels22(*y_syn[i:i + 2000].T))) for i in range(0, n, 2000)])
    log_syn += design(teff, logg) @ coef + av_syn[:, None] * xp.extinction_grid[None]
    log_syn += rng.normal(0, 0.01, log_syn.shape)
    log_syn -= np.log(np.median(np.exp(log_syn), 1, keepdims=True))
    vb = in_box(y_va, x_va)
    log_va, y_vb = np.log(x_va[vb]), y_va[vb]
    mu, sd = log_syn.mean(0), log_syn.std(0) + 1e-6
    poor_va = y_vb[:, 2] < -1.0
    out["n_validation_giants"], out["n_validation_metal_poor"] = int(vb.sum()), int(poor_va.sum())
    out["ridge"] = {}
    for penalty in (1.0, 30.0):
        row = {}
        for k, name in enumerate(LABELS):
            model = Ridge(alpha=penalty).fit((log_syn - mu) / sd, y_syn[:, k])
            pred = model.predict((log_va - mu) / sd)
            held = model.predict((log_syn[:3000] - mu) / sd)  # in-sample: how well ridge reads the synthetic set
            r = {"synthetic_rmse": round(float(np.sqrt(np.mean((held - y_syn[:3000, k]) ** 2))), 4),
                 "real_correlation": round(float(np.corrcoef(pred, y_vb[:, k])[0, 1]), 3)}
            if name == "FE_H":
                line = np.polyfit(pred[~poor_va], y_vb[~poor_va, 2], 1)
                fixed = np.polyval(line, pred)
                r["metal_poor_rmse_after_metal_rich_affine"] = round(
                    float(np.sqrt(np.mean((fixed[poor_va] - y_vb[poor_va, 2]) ** 2))), 3)
                r["metal_poor_bias_raw"] = round(float(np.mean(pred[poor_va] - y_vb[poor_va, 2])), 3)
            row[name] = r
        out["ridge"][f"penalty_{penalty:g}"] = row
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
