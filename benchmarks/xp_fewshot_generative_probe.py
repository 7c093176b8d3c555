#!/usr/bin/env python
"""Does a generative read-out stop the linear probe's compression of metal-poor [Fe/H]? (issue 14, xp_fewshot)

xp_fewshot's recommended recipe (recipe v8) is `SpectraFMPipeline.fit_linear_probe`: ridge regression of [Fe/H] on
the pretrained model's mean encoder output and its own Teff and logg, fitted on 100 stars with [Fe/H] > -1. Its test
predictions are compressed towards the fitting stars' mean (stars below -2 read -0.83 on average;
benchmarks/results/fewshot_error_anatomy.json), the regression dilution of any discriminative fit to noisy features.
The classical alternative, as The Cannon does for spectra, is generative: model each feature as linear in the labels,
x = a + b [Fe/H] + c Teff + d logg + noise (Teff and logg the network's own predictions, as the probe reads them),
fitted on the same 100 stars, and at prediction invert it for [Fe/H] by generalised least squares with the residual
covariance (shrunk towards its diagonal by ``--shrink``, 1 = diagonal). That estimator is not pulled towards the
fitting stars' mean, at the price of variance.

Chosen as every recipe is: on the metal-rich VALIDATION stars (RMSE and the Gaussian NLL after the package's
68 % calibration of sigma on those stars, `SpectraFMProcessor.fit_uncertainty_scale`), against the ridge probe on the
same features. The test split is scored after that, for the record.

    OMP_NUM_THREADS=1 python benchmarks/xp_fewshot_generative_probe.py
        [--model runs/real_xp_cpu_v8/xp_fewshot/pretrain_teff_logg_masked_flux/final]
        [--out benchmarks/results/xp_fewshot_generative_probe.json]

Needs the preset's few-shot pretraining (scripts/real_data.py scripts/configs/real_xp_cpu.yaml --experiments
xp_fewshot); ~5 min on one core (features of ~5,000 spectra).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import real_data  # noqa: E402


def generative_fit(x, feh, teff_logg, shrink: float):
    """Per-feature least squares x = a + b feh + c teff + d logg; returns (coefficients, precision matrix of the
    residuals, their covariance shrunk towards its diagonal by ``shrink``)."""
    design = np.column_stack([np.ones(len(feh)), feh, teff_logg])
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    cov = np.cov((x - design @ coef).T)
    cov = (1.0 - shrink) * cov + shrink * np.diag(np.diag(cov))
    return coef, np.linalg.pinv(cov)


def generative_predict(model, x, teff_logg):
    """[Fe/H] and its 1-sigma from the GLS inversion of the fitted model."""
    coef, precision = model
    residual = x - (coef[0] + teff_logg @ coef[2:])
    b = coef[1]
    information = float(b @ precision @ b)
    return residual @ precision @ b / information, np.full(len(x), 1.0 / np.sqrt(information))


def scores(pred, truth, val_pred, val_sigma, val_truth) -> dict:
    """Validation RMSE / calibrated NLL (sigma scaled by the package's conformal 68 % rule on validation) and the
    test RMSE by metallicity, the mean prediction of the metal-poor test stars."""
    from spectrafm_hf.processing_spectrafm import SpectraFMProcessor

    scale = SpectraFMProcessor().fit_uncertainty_scale(["FE_H"], val_pred, val_sigma, val_truth)["FE_H"]
    s = val_sigma * scale
    z = (val_pred - val_truth) / s
    poor = truth < -1.0
    rmse = lambda p, t: round(float(np.sqrt(np.mean((p - t) ** 2))), 4)  # noqa: E731
    return {"validation_rmse": rmse(val_pred, val_truth),
            "validation_nll": round(float(np.mean(0.5 * z**2 + np.log(s) + 0.5 * np.log(2 * np.pi))), 4),
            "test_metal_poor_rmse": rmse(pred[poor], truth[poor]),
            "test_metal_rich_rmse": rmse(pred[~poor], truth[~poor]),
            "test_all_rmse": rmse(pred, truth), "test_metal_poor_mean_prediction": round(float(pred[poor].mean()), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    ap.add_argument("--model", default="runs/real_xp_cpu_v8/xp_fewshot/pretrain_teff_logg_masked_flux/final")
    ap.add_argument("--shrink", type=float, nargs="+", default=[1.0, 0.5, 0.2])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/xp_fewshot_generative_probe.json"))
    a = ap.parse_args(argv)
    from spectrafm_hf.linear_probe import apply_probe, fit_ridge_loo
    from spectrafm_hf.pipeline import SpectraFMPipeline
    from spectrafm_hf.training.presets import load_preset
    from spectrafm_hf.training.run import select_stars

    if not (Path(a.model) / "config.json").is_file():
        raise SystemExit(f"{a.model}: no pretrained model; run scripts/real_data.py ... --experiments xp_fewshot first")
    torch.set_num_threads(1)
    cfg = real_data.experiment_cfg(load_preset(a.config, []), "xp_fewshot")
    e = cfg["xp_fewshot"]
    train, val, test = real_data.load_splits(cfg)
    rich = {"FE_H": [float(e.get("min_feh", -1.0)), None]}
    val_rich = select_stars(val, rich, None, 0)
    pipe = SpectraFMPipeline.from_pretrained(a.model, device="cpu")

    def features(ds):  # what fit_linear_probe reads: mean encoder output, the network's Teff and logg
        spectra = real_data.spectra_of(real_data.fm_data(cfg, ds))
        table = pipe.predict(spectra, labels=["TEFF", "LOGG"], seed=0)
        return pipe.embed(spectra, seed=0), table[["TEFF", "LOGG"]].to_numpy(np.float64)

    feh = lambda ds: np.asarray(ds["FE_H"], np.float64)  # noqa: E731
    (ev, tv), (et, tt) = features(val_rich), features(test)
    yv, yt = feh(val_rich), feh(test)
    result = {"model": a.model, "n_validation_metal_rich": len(yv), "n_test": len(yt),
              "n_test_metal_poor": int((yt < -1).sum()), "draws": {}}
    for draw in e.get("draws", [77]):
        few = select_stars(train, rich, int(e["n_stars"]), int(draw))
        ef, tf = features(few)
        yf = feh(few)
        probe = fit_ridge_loo(np.column_stack([ef, tf]), yf)
        ridge_val = apply_probe(probe, np.column_stack([ev, tv]))
        row = {"ridge_probe": scores(apply_probe(probe, np.column_stack([et, tt])), yt, ridge_val,
                                     np.full(len(yv), probe["sigma"]), yv)}
        for shrink in a.shrink:
            model = generative_fit(ef, yf, tf, shrink)
            pv, sv = generative_predict(model, ev, tv)
            pt, _ = generative_predict(model, et, tt)
            row[f"generative_shrink_{shrink:g}"] = scores(pt, yt, pv, sv, yv)
        result["draws"][str(draw)] = row
        print(draw, json.dumps(row), flush=True)
    names = list(next(iter(result["draws"].values())))
    result["mean_of_draws"] = {n: {k: round(float(np.mean([d[n][k] for d in result["draws"].values()])), 4)
                                   for k in result["draws"][str(e["draws"][0])][n]} for n in names}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["mean_of_draws"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
