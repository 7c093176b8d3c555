#!/usr/bin/env python
"""Which labels move together when SpectraFM misreads a metal-poor MILES giant (issue 14)?

The MILES preset's models read metal-poor cool giants too metal-rich. This benchmark asks whether they also misread
Teff and logg there. For the synthetic-only model (``pretrain_synthetic/final``) and row ``spectrafm`` of every draw
(``spectrafm_draw<D>/final``, fine-tuned with Teff and logg as helper labels), it predicts Teff, logg and [Fe/H] of
the draw's test stars. Per group it reports each label's bias and RMSE, and the correlation of the Teff and logg
errors with the [Fe/H] error. The groups are metal-poor ([Fe/H] < -1) cool giants (logg < 3.5, Teff <= 5000 K),
metal-poor warm giants, metal-rich cool giants and metal-poor dwarfs. The emulator's own chi^2 fits of the same giants
with and without Teff and logg held at MILES's values (``benchmarks/miles_emulator_fit.py``, fits ``teff_logg_mh``
and ``mh_at_miles_teff_logg``) give the view with no network in between. Last, how close to degenerate the shift
is: for each metal-poor cool giant (in the emulator's label box), the RMS of emulated flux at its MILES labels moved
by that fit's mean Teff, logg and [M/H] shift minus the flux at its labels, against each shift alone and against the
RMS of MILES minus the emulator at its labels. And whether the few-shot stars themselves hold a Teff that would stop
the move: per draw, a ridge (`RidgeBaseline`, penalty by leave-one-out) fitted on the draw's 100 stars reads Teff and
logg of its test giants from their normalised flux, or from the shape of their flux-calibrated continuum alone (the
log of the pseudo-continuum, mean over 8 equal wavelength bands, less its mean over the bands).

    python benchmarks/miles_label_degeneracy.py --runs <the MILES preset's output_dir>   # ~2.5 min on one core
    # -> benchmarks/results/miles_label_degeneracy.json

A diagnostic read from test stars: it chooses nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import miles_fewshot  # noqa: E402
import real_data  # noqa: E402

LABELS = ["TEFF", "LOGG", "FE_H"]


GROUPS = ("metal_poor_cool_giants", "metal_poor_warm_giants", "metal_rich_cool_giants", "metal_poor_dwarfs")


def label_errors(pred, truth) -> dict:
    """Per group: bias and RMSE of every label, and corr(dTeff, d[Fe/H]), corr(dlogg, d[Fe/H])."""
    err = {n: pred[f"{n}_pred"].to_numpy() - truth[n].to_numpy() for n in LABELS}
    out = {}
    masks = miles_fewshot.star_groups(truth.TEFF, truth.LOGG, truth.FE_H)
    for name in GROUPS:
        m = masks[name]
        out[name] = {"n": int(m.sum()),
                     **{f"{n}_bias": float(err[n][m].mean()) for n in LABELS},
                     **{f"{n}_rmse": float(np.sqrt(np.mean(err[n][m] ** 2))) for n in LABELS},
                     "corr_teff_fe_h": float(np.corrcoef(err["TEFF"][m], err["FE_H"][m])[0, 1]),
                     "corr_logg_fe_h": float(np.corrcoef(err["LOGG"][m], err["FE_H"][m])[0, 1])}
    return out


def emulator_degeneracy(cfg, tables, shift: dict) -> dict:
    """Median RMS over the metal-poor cool giants of emulated flux moved by ``shift`` ({"teff", "logg", "mh"}) minus
    the flux at the star's MILES labels, per shift (all three, each alone), and of MILES minus the emulator."""
    import miles_emulator_fit  # the emulator, degraded and normalised as the pretraining spectra are

    a, flux, good, keep = tables
    teff, logg, feh = (np.asarray(a.labels[n], float) for n in LABELS)
    stars = np.flatnonzero(keep & (logg <= 3.5) & (feh < -1) & (teff <= 5000))   # miles_emulator_fit's group
    fitter = miles_emulator_fit.GiantFitter(cfg, a.wavelength)
    step = np.array([shift["teff"] / 1000.0, shift["logg"], shift["mh"]])
    moves = {"teff_logg_mh": step, "teff_alone": step * [1, 0, 0], "logg_alone": step * [0, 1, 0],
             "mh_alone": step * [0, 0, 1]}
    rms = {k: [] for k in [*moves, "miles_minus_emulator"]}
    for i in stars:  # labels clipped into the emulator's box (logg <= 3.5, [M/H] >= -2.5) with room for the move
        p = np.array([teff[i] / 1000.0, min(logg[i], 3.5 - max(step[1], 0.0)), max(feh[i], -2.5)])
        use = good[i] & np.isfinite(flux[i])
        at_labels = fitter.spectrum(p, ())
        for k, move in moves.items():
            rms[k].append(np.sqrt(np.mean((fitter.spectrum(p + move, ()) - at_labels)[use] ** 2)))
        rms["miles_minus_emulator"].append(np.sqrt(np.mean((flux[i] - at_labels)[use] ** 2)))
    return {"n": int(stars.size), "shift": shift, "median_rms": {k: float(np.median(v)) for k, v in rms.items()}}


def teff_from_the_few(cfg, tables, draws) -> dict:
    """Per draw: Teff and logg read by ridges fitted on the draw's 100 stars (normalised flux; continuum shape),
    their bias and RMSE on the draw's metal-poor and metal-rich cool test giants."""
    from spectrafm_hf.baselines import RidgeBaseline

    a, flux, good, keep = tables
    inputs = {"normalised_flux": np.where(good, flux, np.nan),
              "continuum_shape": miles_fewshot.continuum_colours(cfg, a, good)}
    teff, logg, feh = (np.asarray(a.labels[n], float) for n in LABELS)
    idx = miles_fewshot.fewshot_indices(cfg, a, keep, draws)
    out = {}
    for d in draws:
        few = idx["few"][d]
        test = np.setdiff1d(idx["testable"], few)
        cool_giants = (logg[test] < 3.5) & (teff[test] <= 5000)
        sets = {"metal_poor_cool_giants": test[cool_giants & (feh[test] < -1)],
                "metal_rich_cool_giants": test[cool_giants & (feh[test] >= -1)]}
        out[str(d)] = {}
        for name, x in inputs.items():
            row = {}
            for label, y in (("TEFF", teff), ("LOGG", logg)):
                ridge = RidgeBaseline().fit(x[few], y[few])
                for g, stars in sets.items():
                    err = ridge.predict(x[stars])[0] - y[stars]
                    row[f"{g}_{label}_bias"] = float(err.mean())
                    row[f"{g}_{label}_rmse"] = float(np.sqrt(np.mean(err ** 2)))
            out[str(d)][name] = row
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "scripts/configs/miles_fewshot_cpu.yaml"))
    p.add_argument("--runs", help="the MILES preset's output_dir (default: the preset's)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/miles_label_degeneracy.json"))
    a = p.parse_args(argv)
    cfg = real_data.load_preset(a.config, [])
    runs = Path(a.runs or cfg["output_dir"])
    draws = [int(d) for d in cfg["fewshot"]["draws"]]
    tables = miles_fewshot.miles_tables(cfg)  # read once for the sets, the emulator and the ridges below
    sets = miles_fewshot.miles_sets(cfg, draws, tables)
    models = {"spectrafm_synthetic_only": lambda d: runs / "pretrain_synthetic" / "final",
              "spectrafm": lambda d: runs / f"spectrafm_draw{d}" / "final"}
    missing = [str(f(d)) for f in models.values() for d in draws if not f(d).is_dir()]
    if missing:
        raise SystemExit(f"no trained model in {missing[:3]}: run the MILES preset first (--runs its output_dir)")
    per_draw = {}
    for d in draws:
        test = sets[d][1]
        truth = real_data.frame(test, LABELS)
        per_draw[str(d)] = {m: label_errors(real_data.predict_spectrafm(str(f(d)), test, LABELS), truth)
                            for m, f in models.items()}
    mean = {m: {g: {k: float(np.mean([per_draw[str(d)][m][g][k] for d in draws]))
                    for k in per_draw[str(draws[0])][m][g]} for g in per_draw[str(draws[0])][m]} for m in models}
    result = {"command": "python benchmarks/miles_label_degeneracy.py --runs <the MILES preset's output_dir>",
              "runs": runs.name, "mean_of_draws": mean, "draws": per_draw,
              "teff_logg_from_the_100_stars": teff_from_the_few(cfg, tables, draws)}
    emulator = REPO / "benchmarks/results/miles_emulator_fit.json"
    if emulator.is_file():  # the same giants fitted by the emulator itself, Teff and logg free or held
        fits = json.loads(emulator.read_text())["fits"]
        result["emulator_chi2_fit"] = {f: fits[f] for f in ("teff_logg_mh", "mh_at_miles_teff_logg") if f in fits}
        g = fits["teff_logg_mh"]["metal_poor_cool_giants"]
        result["emulator_degeneracy"] = emulator_degeneracy(
            cfg, tables, {"teff": g["teff_bias"], "logg": g["logg_bias"], "mh": g["mh_bias"]})
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(mean, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
