#!/usr/bin/env python
"""Does a generative read-out stop the linear probe's compression of metal-poor [Fe/H]? (issue 14, few-shot)

xp_fewshot's recommended recipe (recipe v8) is `SpectraFMPipeline.fit_linear_probe`: ridge regression of [Fe/H] on
the pretrained model's mean encoder output and its own Teff and logg, fitted on 100 stars with [Fe/H] > -1. Its test
predictions are compressed towards the fitting stars' mean (stars below -2 read -0.83 on average;
benchmarks/results/fewshot_error_anatomy.json), the regression dilution of any discriminative fit to noisy features.
The classical alternative, as The Cannon does for spectra, is generative: model each feature as linear in the labels,
x = a + b [Fe/H] + c Teff + d logg + noise (Teff and logg the network's own predictions, as the probe reads them),
fitted on the same 100 stars, and at prediction invert it for [Fe/H] by generalised least squares with the residual
covariance (shrunk towards its diagonal by ``--shrink``, 1 = diagonal). That estimator is not pulled towards the
fitting stars' mean, at the price of variance.

The same on MILES (``--experiment miles``: scripts/miles_fewshot.py's draws, splits and synthetic pretraining, whose
network also predicts [Fe/H]; that prediction is one more feature, linear in the labels like the embedding).

Chosen as every recipe is: on the metal-rich VALIDATION stars (RMSE and the Gaussian NLL after the package's
68 % calibration of sigma on those stars, `SpectraFMProcessor.fit_uncertainty_scale`), against the ridge probe on the
same features. The test split is scored after that, for the record.

    OMP_NUM_THREADS=1 python benchmarks/fewshot_generative_probe.py [--experiment xp|miles] [--config PRESET]
        [--model PRETRAINED_FOLDER] [--embedding_components K ...] [--out JSON]

``--embedding_components K ...`` gives the generative read-out fewer features to invert (fewer residual covariances to
estimate from 100 stars): 0 reads only the network's answers (its [Fe/H], with Teff and logg as covariates: a
straight line fitted label-to-answer and inverted; rows ``generative_answers_shrink_<s>``, where shrink cannot
matter), K > 0 the first K principal components of the embedding (fitted on the fitting stars) beside them (rows
``generative_pca<K>_shrink_<s>``); -1 (default) the whole embedding, as `fit_linear_probe` does (rows
``generative_shrink_<s>``). Every row also has the extrapolation check's score
(`spectrafm_hf.training.run.extrapolation_split`, quantile 0.3: refitted on the fitting stars at or above the cut,
RMSE on the validation stars below it), the rule the presets choose by.

Defaults per experiment: the CPU preset, its pretraining's run folder (runs/real_xp_cpu_v10/xp_fewshot/
pretrain_teff_logg_masked_flux/final; runs/miles_fewshot_cpu_v4/pretrain_synthetic/final) and
benchmarks/results/{xp,miles}_fewshot_generative_probe.json. Needs that pretraining (the preset, or its
xp_fewshot experiment); ~1-5 min on one core.
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
from spectrafm_hf.data import dataset_spectra  # noqa: E402


def generative_read_out(x, feh, teff_logg, shrink: float) -> dict:
    """The library's generative probe (`spectrafm_hf.linear_probe.fit_generative_probe`) of ``x`` with the network's
    Teff and logg (``teff_logg``) as covariates; apply it with `generative_predict`."""
    from spectrafm_hf.linear_probe import fit_generative_probe

    features = np.column_stack([x, teff_logg])
    return fit_generative_probe(features, feh, covariates=range(x.shape[1], features.shape[1]), shrink=shrink)


def generative_predict(probe, x, teff_logg):
    """[Fe/H] and its 1-sigma (the probe's leave-one-out sigma; rescaled on validation by `scores`)."""
    from spectrafm_hf.linear_probe import apply_probe

    return apply_probe(probe, np.column_stack([x, teff_logg])), np.full(len(x), probe["sigma"])


def rmse(pred, truth) -> float:
    return round(float(np.sqrt(np.mean((pred - truth) ** 2))), 4)


def scores(pred, truth, val_pred, val_sigma, val_truth) -> dict:
    """Validation RMSE / calibrated NLL (sigma scaled by the package's conformal 68 % rule on validation) and the
    test RMSE by metallicity, the mean prediction of the metal-poor test stars."""
    from spectrafm_hf.processing_spectrafm import SpectraFMProcessor

    scale = SpectraFMProcessor().fit_uncertainty_scale(["FE_H"], val_pred, val_sigma, val_truth)["FE_H"]
    s = val_sigma * scale
    z = (val_pred - val_truth) / s
    poor = truth < -1.0
    return {"validation_rmse": rmse(val_pred, val_truth),
            "validation_nll": round(float(np.mean(0.5 * z**2 + np.log(s) + 0.5 * np.log(2 * np.pi))), 4),
            "test_metal_poor_rmse": rmse(pred[poor], truth[poor]),
            "test_metal_rich_rmse": rmse(pred[~poor], truth[~poor]),
            "test_all_rmse": rmse(pred, truth), "test_metal_poor_mean_prediction": round(float(pred[poor].mean()), 3)}


def principal_axes(embedding, k: int):
    """(mean, the first ``k`` principal axes as columns) of the rows of ``embedding``."""
    mean = embedding.mean(axis=0)
    return mean, np.linalg.svd(embedding - mean, full_matrices=False)[2][:k].T


def fewshot_sets(experiment: str, config: str):
    """{"val": metal-rich validation Dataset, draw: (few-shot Dataset, test Dataset)} and a function turning a
    Dataset into the pipeline's spectra, as the preset's few-shot experiment builds them."""
    from spectrafm_hf.training.presets import load_preset
    from spectrafm_hf.training.run import select_stars

    if experiment == "miles":
        import miles_fewshot

        cfg = load_preset(config, [])
        return miles_fewshot.miles_sets(cfg, cfg["fewshot"]["draws"]), dataset_spectra
    cfg = real_data.experiment_cfg(load_preset(config, []), "xp_fewshot")
    e = cfg["xp_fewshot"]
    train, val, test = real_data.load_splits(cfg)
    rich = {"FE_H": [float(e.get("min_feh", -1.0)), None]}
    sets = {"val": select_stars(val, rich, None, 0)}
    for draw in e["draws"]:
        sets[draw] = (select_stars(train, rich, int(e["n_stars"]), int(draw)), test)
    return sets, lambda ds: dataset_spectra(real_data.fm_data(cfg, ds))


DEFAULTS = {"xp": ("scripts/configs/real_xp_cpu.yaml",
                   "runs/real_xp_cpu_v10/xp_fewshot/pretrain_teff_logg_masked_flux/final",
                   "benchmarks/results/xp_fewshot_generative_probe.json"),
            "miles": ("scripts/configs/miles_fewshot_cpu.yaml",
                      "runs/miles_fewshot_cpu_v4/pretrain_synthetic/final",
                      "benchmarks/results/miles_fewshot_generative_probe.json")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", choices=sorted(DEFAULTS), default="xp",
                    help="xp: real_data.py's xp_fewshot; miles: miles_fewshot.py (the same draws and splits)")
    ap.add_argument("--config", help="the preset (default: the experiment's CPU preset)")
    ap.add_argument("--model", help="the pretrained model (default: the preset's run folder)")
    ap.add_argument("--shrink", type=float, nargs="+", default=[1.0, 0.5, 0.2])
    ap.add_argument("--embedding_components", type=int, nargs="+", default=[-1],
                    help="the generative read-out's embedding: -1 all of it, 0 none (the answers alone), K > 0 its "
                         "first K principal components on the fitting stars (one set of rows each)")
    ap.add_argument("--out", help="the result JSON (default: benchmarks/results/<experiment>_fewshot_generative_probe"
                                  ".json)")
    a = ap.parse_args(argv)
    default_config, default_model, default_out = DEFAULTS[a.experiment]
    config, model_dir, out = a.config or str(REPO / default_config), a.model or default_model, a.out or str(
        REPO / default_out)
    from spectrafm_hf.linear_probe import apply_probe, fit_ridge_loo
    from spectrafm_hf.pipeline import SpectraFMPipeline
    from spectrafm_hf.training.run import extrapolation_split

    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"{model_dir}: no pretrained model; run the experiment's preset first")
    torch.set_num_threads(1)
    sets, spectra_of = fewshot_sets(a.experiment, config)
    pipe = SpectraFMPipeline.from_pretrained(model_dir, device="cpu")
    labels = list(pipe.model.config.label_names)
    others = [n for n in labels if n not in ("TEFF", "LOGG")]
    if 0 in a.embedding_components and not others:
        raise SystemExit(f"--embedding_components 0 reads only the network's answers besides Teff and logg; this one "
                         f"predicts {labels} (Gaia XP's pretraining has no [Fe/H]): nothing to read")

    read = {}

    def features(ds):  # what fit_linear_probe reads: mean encoder output and the network's answers ("auto")
        if id(ds) not in read:  # XP's draws share one test set: read it once
            spectra = spectra_of(ds)
            read[id(ds)] = pipe.embed(spectra, seed=0), pipe.predict(spectra, labels=labels, seed=0)
        return read[id(ds)]

    def ridge_x(f):
        return np.column_stack([f[0], f[1][labels].to_numpy(np.float64)])

    def generative_x(f, axes=None):  # (features linear in the labels, the network's Teff and logg as covariates)
        embedding = f[0] if axes is None else (f[0] - axes[0]) @ axes[1]
        return (np.column_stack([embedding, f[1][others].to_numpy(np.float64)]),
                f[1][["TEFF", "LOGG"]].to_numpy(np.float64))

    def subset(f, rows):
        return f[0][rows], f[1].iloc[np.flatnonzero(rows)]

    def generative_fit(f, y, shrink, k):  # the read-out and the axes its features are read on
        axes = None if k < 0 else principal_axes(f[0], k)
        x, covariates = generative_x(f, axes)
        return generative_read_out(x, y, covariates, shrink), axes

    feh = lambda ds: np.asarray(ds["FE_H"], np.float64)  # noqa: E731
    fv, yv = features(sets["val"]), feh(sets["val"])
    result = {"experiment": a.experiment, "model": model_dir, "network_labels": labels, "n_validation_metal_rich":
              len(yv), "embedding_components": a.embedding_components, "draws": {}}
    for draw in (k for k in sets if not isinstance(k, str)):
        few, test = sets[draw]
        ff, ft, yf, yt = features(few), features(test), feh(few), feh(test)
        _, kept, below = extrapolation_split(yf, yv, 0.3)
        probe = fit_ridge_loo(ridge_x(ff), yf)
        row = {"n_test": len(yt), "n_test_metal_poor": int((yt < -1).sum()),
               "ridge_probe": scores(apply_probe(probe, ridge_x(ft)), yt, apply_probe(probe, ridge_x(fv)),
                                     np.full(len(yv), probe["sigma"]), yv)}
        refit = fit_ridge_loo(ridge_x(subset(ff, kept)), yf[kept])
        row["ridge_probe"]["extrapolation_rmse"] = rmse(apply_probe(refit, ridge_x(subset(fv, below))), yv[below])
        for k, shrink in ((k, shrink) for k in a.embedding_components for shrink in a.shrink):
            name = f"generative_{'' if k < 0 else 'answers_' if k == 0 else f'pca{k}_'}shrink_{shrink:g}"
            model, axes = generative_fit(ff, yf, shrink, k)
            pv, sv = generative_predict(model, *generative_x(fv, axes))
            pt, _ = generative_predict(model, *generative_x(ft, axes))
            row[name] = scores(pt, yt, pv, sv, yv)
            model, axes = generative_fit(subset(ff, kept), yf[kept], shrink, k)
            pv, _ = generative_predict(model, *generative_x(subset(fv, below), axes))
            row[name]["extrapolation_rmse"] = rmse(pv, yv[below])
        result["draws"][str(draw)] = row
        print(draw, json.dumps(row), flush=True)
    first = next(iter(result["draws"].values()))
    result["mean_of_draws"] = {n: {k: round(float(np.mean([d[n][k] for d in result["draws"].values()])), 4)
                                   for k in first[n]} for n in first if isinstance(first[n], dict)}
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["mean_of_draws"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
