#!/usr/bin/env python
"""Which MILES wavelengths does the optical emulator read [Fe/H] from faithfully? A linearised fit per window.

The MILES preset's metal-poor error is a bias its synthetic pretraining carries (docs/real_spectra.md; the chi^2 fit
of `miles_emulator_fit.py` reads the metal-poor cool giants +0.38 dex too high). This asks where along the spectrum
that bias lives, cheaply: at each giant's MILES labels the emulated spectrum e and its derivatives in [M/H], Teff and
logg are taken (degraded and pseudo-continuum normalised as the pretraining spectra are), and the residual MILES - e
is read by least squares over the window's pixels (Teff and logg as nuisances): the [M/H] offset a fit there would
make, to first order.

The window rule uses the metal-rich giants of the train split (the pool every draw's 100 stars come from, as for
``synthetic.abundance_offsets``; no test star): their fitted [Fe/H] regressed on MILES's gives a slope per window
(per draw too, to show its noise), and a window whose pooled slope is below ``--min_slope`` (the emulator's [Fe/H]
response there less than half the real one) is left out; the kept windows must be contiguous, and their span is the
``dataset.wavelength_range`` it proposes. The metal-poor giants of the test split are read beside it as a
diagnostic, never used by the rule.

``--residual_covariance`` also asks a second question: would training the network to ignore the draw's emulator
residuals help? It reads the metal-poor giants with the residuals' covariance (all, or their first 8 / 32 principal
components) added to the pixel noise, the linear picture of augmenting synthetic spectra with those residuals.

    python benchmarks/miles_emulator_windows.py [--residual_covariance]   # ~45 s on one core
        # -> benchmarks/results/miles_emulator_windows.json

Needs the converted emulator (scripts/convert_bossbrain.py) and MILES (pip sdss-mangadap).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import miles_fewshot  # noqa: E402
from miles_emulator_fit import GiantFitter  # noqa: E402

from spectrafm_hf.training.presets import read_yaml  # noqa: E402

EDGES = [3540, 4300, 5000, 5800, 6600, 7410]  # vacuum Angstrom: blue, Mg b and Fe, Na D side, H alpha side, red
NOISE = 0.02  # per-pixel flux error of the linear fits (as miles_emulator_fit.py)
# the emulator's label box, a little inside so that finite differences stay in it
LO, HI = np.array([3.55, 0.1, -2.45]), np.array([5.95, 3.4, 0.45])


class Linearised:
    """Per star: the residual MILES - emulator at its labels and the emulator's derivatives there."""

    def __init__(self, cfg, arrays, flux, good):
        self.fitter = GiantFitter(cfg, arrays.wavelength)
        self.flux, self.good = flux, good
        self.labels = np.stack([np.asarray(arrays.labels[n], float) for n in ("TEFF", "LOGG", "FE_H")], 1)
        self.labels[:, 0] /= 1000.0
        self._cache = {}

    def __call__(self, i):
        if i not in self._cache:
            p = np.clip(self.labels[i], LO, HI)
            model = self.fitter.spectrum(p, ())
            grads = []
            for j, h in ((2, 0.05), (0, 0.05), (1, 0.1)):  # [M/H] first; Teff (kK) and logg are nuisances
                up, down = p.copy(), p.copy()
                up[j] += h / 2
                down[j] -= h / 2
                grads.append((self.fitter.spectrum(up, ()) - self.fitter.spectrum(down, ())) / h)
            ok = self.good[i] & np.isfinite(self.flux[i])
            self._cache[i] = np.array(grads).T, np.where(ok, self.flux[i] - model, np.nan)
        return self._cache[i]

    def feh_offset(self, i, window, residual_basis=None) -> float:
        """First-order [M/H] offset a fit over ``window`` would make; ``residual_basis`` (k, pixels): extra noise
        covariance basis.T @ basis (Woodbury)."""
        grads, resid = self(i)
        use = window & np.isfinite(resid)
        g, r = grads[use], resid[use]
        if residual_basis is None:
            whiten = g
        else:
            b = residual_basis[:, use]
            inner = np.linalg.inv(np.eye(len(b)) * NOISE ** 2 + b @ b.T)
            whiten = (g - b.T @ (inner @ (b @ g))) / NOISE ** 2
        return float(np.linalg.solve(whiten.T @ g, whiten.T @ r)[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "scripts/configs/miles_fewshot_cpu.yaml"))
    ap.add_argument("--min_slope", type=float, default=0.5)
    ap.add_argument("--residual_covariance", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/miles_emulator_windows.json"))
    a = ap.parse_args(argv)
    cfg = read_yaml(Path(a.config).read_text())
    cfg["dataset"] = {**cfg["dataset"], "wavelength_range": None}  # every window is cut from the whole grid
    arrays, flux, good, keep = miles_fewshot.miles_tables(cfg)
    teff, logg, feh = (np.asarray(arrays.labels[n], float) for n in ("TEFF", "LOGG", "FE_H"))
    draws = [int(d) for d in cfg["fewshot"]["draws"]]
    idx = miles_fewshot.fewshot_indices(cfg, arrays, keep, draws)
    lin = Linearised(cfg, arrays, flux, good)
    wl = arrays.wavelength
    windows = {f"{lo}-{hi}": (wl >= lo) & (wl < hi) for lo, hi in zip(EDGES[:-1], EDGES[1:])}
    out = {"command": "python benchmarks/miles_emulator_windows.py" + " --residual_covariance" * a.residual_covariance,
           "min_slope": a.min_slope, "noise": NOISE}

    def slopes(stars):
        return {name: float(np.polyfit(feh[stars], feh[stars] + np.array([lin.feh_offset(i, w) for i in stars]), 1)[0])
                for name, w in windows.items()}

    pool = idx["train_pool"][logg[idx["train_pool"]] <= 3.5]
    out["rule"] = {"n_metal_rich_train_giants": int(pool.size), "slope": slopes(pool),
                   "slope_per_draw_giants": {str(d): slopes(idx["few"][d][logg[idx["few"][d]] <= 3.5]) for d in draws}}
    kept = [n for n, v in out["rule"]["slope"].items() if v >= a.min_slope]
    spans = [tuple(float(x) for x in n.split("-")) for n in kept]
    if any(spans[k][1] != spans[k + 1][0] for k in range(len(spans) - 1)):
        raise SystemExit(f"the kept windows {kept} are not contiguous: no single wavelength range")
    out["rule"].update(kept=kept, wavelength_range=[spans[0][0], spans[-1][1]])
    print("rule:", json.dumps(out["rule"]), flush=True)
    test = np.setdiff1d(idx["testable"], np.concatenate([idx["few"][d] for d in draws]))
    poor = test[(feh[test] < -1) & (logg[test] <= 3.5)]
    cool = teff[poor] <= 5000
    lo, hi = out["rule"]["wavelength_range"]

    def diagnostic(window, basis=None):
        off = np.array([lin.feh_offset(i, window, basis) for i in poor])
        return {"bias": float(off.mean()), "bias_cool": float(off[cool].mean()),
                "rms": float(np.sqrt((off ** 2).mean()))}

    reads = {"whole": np.ones(wl.size, bool), "kept": (wl >= lo) & (wl < hi), **windows}
    out["metal_poor_giants_diagnostic"] = {"n": int(poor.size), "n_cool": int(cool.sum()),
                                           **{name: diagnostic(w) for name, w in reads.items()}}
    print("metal-poor giants:", json.dumps(out["metal_poor_giants_diagnostic"]), flush=True)
    if a.residual_covariance:  # per draw: the draw's 100 stars' residuals as extra noise, the whole grid read
        out["residual_covariance"] = {}
        for draw in draws:
            resid = np.nan_to_num(np.array([lin(i)[1] for i in idx["few"][draw]]))
            _, sv, vt = np.linalg.svd(resid, full_matrices=False)
            out["residual_covariance"][str(draw)] = {
                f"components_{k or 'all'}": diagnostic(reads["whole"], (resid if k is None else sv[:k, None] * vt[:k])
                                                       / np.sqrt(len(resid))) for k in (8, 32, None)}
            print(draw, json.dumps(out["residual_covariance"][str(draw)]), flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
