#!/usr/bin/env python
"""Beyond the paper's [Fe/H] experiment: a learning curve, a known logg as an input token, and the same transfer on
a second instrument (Gaia RVS).

    python scripts/reproduce_paper.py scripts/configs/reproduce_cpu.yaml   # first: stages 1-2, data, test set
    python scripts/beyond_paper.py scripts/configs/beyond_paper_cpu.yaml   # then this (~45 min on one core)
    python scripts/beyond_paper.py scripts/configs/beyond_paper_tiny.yaml  # toy scale, after reproduce_tiny.yaml
    ... [--output_dir DIR] [--reproduce_output_dir DIR] [--results_csv FILE]

It reuses the reproduction run named by ``reproduce_config`` (its stage-1 and stage-2 models, its observed-domain
pool, metal-poor-free validation set and test set, its stage-3 recipe) and adds:

- ``learning_curve``: the stage-3 recipe (from stage 2, Fe window, FE_H, decoder + second encoder block frozen) on
  N = 25 ... 1600 stars with [Fe/H] > -1, and the scratch NN and ridge on the same stars;
- ``known_logg``: the stage-3 recipe with the catalogue logg given as a non-spectra input token (always, in training
  and at test time), against the same recipe without it (the reproduction's ``spectrafm_stage3``);
- ``second_instrument``: stage 1 pretrained further on synthetic APOGEE + Gaia RVS spectra, then fine-tuned on N
  observed-domain RVS stars with [Fe/H] > -1 (all RVS pixels); against stage 1 fine-tuned directly (APOGEE-only
  pretraining), no pretraining, the scratch NN and ridge; tested on an RVS test set whose [Fe/H] reaches -2.5.

Every checkpoint, MLP epoch and ridge alpha is chosen on validation stars with [Fe/H] > -1 that are not test
stars. Results: ``results_csv`` (experiment, model, n_train, split, n, bias, mae, rmse, robust_scatter,
coverage68, coverage95), figures and ``summary.json`` in ``results_dir``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
COLUMNS = ["experiment", "model", "n_train", "split", "n", "bias", "mae", "rmse", "robust_scatter", "coverage68",
           "coverage95"]


def _reproduce_module():
    spec = importlib.util.spec_from_file_location("reproduce_paper", HERE / "reproduce_paper.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rp = _reproduce_module()
log = rp.log


def metric_rows(experiment, model, n_train, pred: pd.DataFrame, truth: pd.DataFrame) -> list:
    from spectrafm_hf.training.metrics import label_metrics

    rows = []
    for split, m in rp.split_masks(truth["FE_H"], truth["LOGG"]).items():
        rows.append({"experiment": experiment, "model": model, "n_train": n_train, "split": split,
                     **label_metrics(pred["FE_H_pred"].to_numpy()[m], truth["FE_H"].to_numpy()[m],
                                     pred["FE_H_sigma"].to_numpy()[m])})
    return rows


def cached(path: Path, make) -> pd.DataFrame:
    if path.is_file():
        return pd.read_csv(path)
    t = time.time()
    table = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    log(f"{path.stem}: {time.time() - t:.0f} s")
    return table


def baselines(cfg_nn: dict, few, val, test, lo, hi, out: Path, tag: str, steps=None) -> dict:
    """Scratch NN and ridge predictions of [Fe/H] on exactly the arrays SpectraFM reads."""
    from spectrafm_hf.baselines import RidgeBaseline, ScratchMLP
    from spectrafm_hf.data import column_values

    def arrays():
        X, _ = rp.window_arrays(few, lo, hi)
        Xv, _ = rp.window_arrays(val, lo, hi)
        Xt, _ = rp.window_arrays(test, lo, hi)
        y, yv = column_values(few, "FE_H"), column_values(val, "FE_H")
        return X, y, Xv, yv, Xt

    def scratch():
        X, y, Xv, yv, Xt = arrays()
        nn = dict(cfg_nn)
        fit_kw = {k: nn.pop(k) for k in ("epochs", "steps", "eval_every", "select_on", "seed") if k in nn}
        if steps is not None:
            fit_kw["steps"] = int(steps)
        m, s = ScratchMLP(**nn).fit(X, y, Xv, yv, y_err=column_values(few, "FE_H_err"),
                                    y_val_err=column_values(val, "FE_H_err"), **fit_kw).predict(Xt)
        return pd.DataFrame({"FE_H_pred": m, "FE_H_sigma": s})

    def ridge():
        X, y, Xv, yv, Xt = arrays()
        m, s = RidgeBaseline().fit(X, y, Xv, yv).predict(Xt)
        return pd.DataFrame({"FE_H_pred": m, "FE_H_sigma": s})

    return {"scratch_nn": cached(out / f"{tag}_scratch_nn.csv", scratch),
            "ridge": cached(out / f"{tag}_ridge.csv", ridge)}


# ------------------------------------------------------------------------------------------------ experiments
def learning_curve(cfg, rcfg, ctx) -> list:
    from spectrafm_hf.data import column_values
    from spectrafm_hf.training.run import select_stars

    e = cfg["learning_curve"]
    rows = []
    rich = {"FE_H": [float(rcfg["stage3_min_feh"]), None]}
    for k, size in enumerate(e["sizes"]):
        few = select_stars(ctx["pool"], rich, int(size), int(rcfg["selection_seed"]))
        if (column_values(few, "FE_H") <= float(rcfg["stage3_min_feh"])).any():
            raise AssertionError("a learning-curve training star is metal-poor")
        reproduced = ctx["rout"] / "stage3" / "final"
        if int(size) == int(rcfg["n_stage3_stars"]) and (reproduced / "config.json").is_file():
            final = reproduced  # the same stars (same seed and pool): the reproduction's stage 3
        else:
            final = rp.train_stage(f"learning curve n={size}", rcfg, rcfg["stage3"],
                                   ctx["out"] / "learning_curve" / f"n{size}", splits=(few, ctx["val"], None),
                                   model_name_or_path=str(ctx["stage2"]), **ctx["few_recipe"])
        pred = cached(ctx["pred"] / f"lc_n{size}_spectrafm_stage3.csv",
                      lambda: rp.predict_spectrafm(final, ctx["test"], ctx["lo"], ctx["hi"], ctx["predict"]))
        rows += metric_rows("learning_curve", "spectrafm_stage3", len(few), pred, ctx["truth"])
        steps = (e.get("scratch_nn_steps") or [None] * len(e["sizes"]))[k]
        for model, p in baselines(rcfg["scratch_nn"], few, ctx["val"], ctx["test"], ctx["lo"], ctx["hi"],
                                  ctx["pred"], f"lc_n{size}", steps).items():
            rows += metric_rows("learning_curve", model, len(few), p, ctx["truth"])
    return rows


def known_logg(cfg, rcfg, ctx) -> list:
    e = cfg["known_logg"]
    names = list(e.get("inputs", ["LOGG"]))
    few = ctx["few"]
    final = rp.train_stage("known logg", rcfg, rcfg["stage3"], ctx["out"] / "known_logg", splits=(few, ctx["val"], None),
                           model_name_or_path=str(ctx["stage2"]), input_label_names=names, input_label_prob=1.0,
                           **ctx["few_recipe"])
    with_logg = cached(ctx["pred"] / "known_logg_spectrafm_stage3.csv",
                       lambda: rp.predict_spectrafm(final, ctx["test"], ctx["lo"], ctx["hi"], ctx["predict"], names))
    without = pd.read_csv(ctx["rout"] / "predictions" / "spectrafm_stage3.csv")
    return (metric_rows("known_logg", "spectrafm_stage3", len(few), without, ctx["truth"])
            + metric_rows("known_logg", "spectrafm_stage3_known_" + "_".join(n.lower() for n in names), len(few),
                          with_logg, ctx["truth"]))


def second_instrument(cfg, rcfg, ctx) -> list:
    import datasets

    from spectrafm_hf.data import column_values, load_spectra_dataset
    from spectrafm_hf.training.run import select_stars

    e = cfg["second_instrument"]
    inst = e.get("instrument", "gaia_rvs")
    out = ctx["out"] / "second_instrument"
    cache = rcfg["dataset_cache_dir"]
    min_feh = float(e.get("min_feh", -1.0))
    rich = {"FE_H": [min_feh, None]}
    # 1. stage 1 pretrained further on synthetic APOGEE + RVS (5 labels, all pixels)
    pre = e["pretrain"]
    parts = [load_spectra_dataset(f"synthetic_{i}", cache_dir=cache, **pre[i]) for i in ("apogee", inst)]
    mix_train = datasets.concatenate_datasets([p["train"] for p in parts]).shuffle(seed=0)
    mix_val = datasets.concatenate_datasets([p["validation"] for p in parts])
    pretrained = rp.train_stage(f"{inst} pretraining", rcfg, pre.get("training", {}), out / "pretrain_apogee_rvs",
                                splits=(mix_train, mix_val, None), model_name_or_path=str(ctx["stage1"]),
                                pixel_range=None, train_selection={}, max_train_stars=None)
    # 2. the few-shot task on the observed domain of the second instrument
    obs = load_spectra_dataset(f"observed_{inst}", cache_dir=cache, **e["observed"])
    few = select_stars(obs["train"], rich, int(e["n_stars"]), int(e.get("selection_seed", 77)))
    val = select_stars(obs["validation"], rich, None, 0)
    if e.get("max_validation_stars") and len(val) > int(e["max_validation_stars"]):
        val = val.select(range(int(e["max_validation_stars"])))
    test = rp.make_test_set({"test": {**e["test"], "instrument": inst}, "observed": e["observed"]})
    truth = rp.label_frame(test)
    for name, d in (("training", few), ("validation", val)):
        if (column_values(d, "FE_H") <= min_feh).any():
            raise AssertionError(f"a {name} star of the {inst} few-shot task is metal-poor")
    recipe = dict(target_labels=["FE_H"], pixel_range=None, train_selection={}, max_train_stars=None)
    runs = {f"spectrafm_apogee_{inst}_pretrained": pretrained, "spectrafm_apogee_pretrained": ctx["stage1"]}
    rows = []
    for model, start in list(runs.items()) + [("spectrafm_no_pretraining", None)]:
        section = dict(e["finetune"])
        extra = dict(recipe)
        if start is None:
            arch, flux_norm = rp.fresh_architecture(Path(ctx["stage1"]))
            section.update(freeze=[], config_overrides=arch, flux_normalization=flux_norm)
        final = rp.train_stage(f"{inst} {model}", rcfg, section, out / model, splits=(few, val, None),
                               model_name_or_path=None if start is None else str(start), **extra)
        pred = cached(ctx["pred"] / f"{inst}_{model}.csv",
                      lambda: rp.predict_spectrafm(final, test, None, None, ctx["predict"]))
        rows += metric_rows("second_instrument", model, len(few), pred, truth)
    for model, p in baselines(e.get("scratch_nn", rcfg["scratch_nn"]), few, val, test, -np.inf, np.inf,
                              ctx["pred"], inst).items():
        rows += metric_rows("second_instrument", model, len(few), p, truth)
    ctx["rvs_truth"] = truth
    return rows


# ------------------------------------------------------------------------------------------------ report
def figures(table: pd.DataFrame, ctx, results: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spectrafm_hf import plots

    paths = {}
    lc = table[table.experiment == "learning_curve"]
    if len(lc):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        for ax, split, title in zip(axes, ("all", "feh_lt_-1"), ("whole test set", "[Fe/H] < -1 (never trained on)")):
            for model, g in lc[lc.split == split].groupby("model"):
                g = g.sort_values("n_train")
                ax.plot(g.n_train, g.rmse, "o-", label=model, lw=2 if model.startswith("spectrafm") else 1)
            ax.set_xscale("log")
            ax.set_xlabel("training stars ([Fe/H] > -1)")
            ax.set_ylabel("[Fe/H] RMSE [dex]")
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths["learning_curve"] = results / "learning_curve_fe_h.png"
        fig.savefig(paths["learning_curve"], dpi=120)
        plt.close(fig)
    si = table[table.experiment == "second_instrument"]
    if len(si):
        models = list(dict.fromkeys(si.model))
        fig, axes = plt.subplots(1, len(models), figsize=(3.8 * len(models), 3.9), squeeze=False)
        truth = ctx["rvs_truth"]
        inst = ctx["instrument"]
        for ax, model in zip(axes[0], models):
            p = pd.read_csv(ctx["pred"] / f"{inst}_{model}.csv")
            ax.axvspan(-2.6, -1.0, color="0.93", zorder=0)
            plots.plot_predicted_vs_true(truth["FE_H"], p["FE_H_pred"], p["FE_H_sigma"], None, ax=ax,
                                         title=model.replace("spectrafm_", "SpectraFM ").replace("_", " "))
        fig.tight_layout()
        paths["second_instrument"] = results / f"{inst}_fewshot_fe_h.png"
        fig.savefig(paths["second_instrument"], dpi=110)
        plt.close(fig)
    return paths


def summarise(table: pd.DataFrame) -> dict:
    def rmse(exp, model, split):
        t = table[(table.experiment == exp) & (table.model == model) & (table.split == split)]
        return {int(r.n_train): float(r.rmse) for r in t.itertuples()}

    out = {}
    for exp in table.experiment.unique():
        t = table[table.experiment == exp]
        out[exp] = {m: {s: rmse(exp, m, s) for s in ("all", "feh_lt_-1")} for m in t.model.unique()}
        out[exp]["coverage68"] = {f"{r.model}/{r.split}/{int(r.n_train)}": float(r.coverage68)
                                  for r in t.itertuples() if r.model.startswith("spectrafm")}
    si = table[(table.experiment == "second_instrument") & (table.split == "feh_lt_-1")].set_index("model")
    if len(si) and "scratch_nn" in si.index:
        out["second_instrument"]["metal_poor_rmse_ratio_scratch_over_model"] = {
            m: float(si.loc["scratch_nn", "rmse"] / si.loc[m, "rmse"]) for m in si.index if m.startswith("spectrafm")}
    return out


def run(cfg, experiments) -> dict:
    from spectrafm_hf.training.presets import read_yaml  # 5e-4 read as a number
    rcfg = read_yaml(Path(cfg["reproduce_config"]).read_text())
    if cfg.get("reproduce_output_dir"):
        rcfg["output_dir"] = cfg["reproduce_output_dir"]
    rout = Path(rcfg["output_dir"])
    rcfg["dataset_cache_dir"] = rcfg.get("dataset_cache_dir") or str(rout / "data_cache")
    out = Path(cfg["output_dir"])
    results = Path(cfg.get("results_dir") or out / "results")
    results.mkdir(parents=True, exist_ok=True)
    csv_path = Path(cfg.get("results_csv") or results / "beyond_paper.csv")
    from spectrafm_hf.training.run import DataArguments, _window

    stage1 = rp.first_reusable(rcfg["stage1"].get("reuse")) or rout / "stage1" / "final"
    stage2 = rp.first_reusable(rcfg["stage2"].get("reuse")) or rout / "stage2" / "final"
    for name, path in (("stage 1", stage1), ("stage 2", stage2)):
        if not (Path(path) / "config.json").is_file():
            raise SystemExit(f"{name} model {path} not found: run scripts/reproduce_paper.py {cfg['reproduce_config']}"
                             " first")
    t0 = time.time()
    pool, few, val, test, frames = rp.prepare_data(rcfg, rout)
    lo, hi = _window(DataArguments(pixel_range=list(rcfg["fe_pixel_range"])))
    ctx = dict(out=out, rout=rout, pred=out / "predictions", pool=pool, few=few, val=val, test=test,
               truth=frames["test"], lo=lo, hi=hi, stage1=stage1, stage2=stage2, predict=rcfg.get("predict") or {},
               instrument=(cfg.get("second_instrument") or {}).get("instrument", "gaia_rvs"),
               few_recipe=dict(pixel_range=list(rcfg["fe_pixel_range"]), target_labels=["FE_H"], train_selection={},
                               max_train_stars=None))
    rows = []
    for name, fn in (("learning_curve", learning_curve), ("known_logg", known_logg),
                     ("second_instrument", second_instrument)):
        if name in experiments and cfg.get(name):
            rows += fn(cfg, rcfg, ctx)
    table = pd.DataFrame(rows, columns=COLUMNS)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_suffix(".tmp")
    table.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(csv_path)
    summary = summarise(table)
    summary["figures"] = {k: str(v) for k, v in figures(table, ctx, results).items()}
    (results / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    log(f"done in {time.time() - t0:.0f} s: {csv_path}")
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table[table.split.isin(["all", "feh_lt_-1"])].to_string(index=False, float_format="%.3f"))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--experiments", default="learning_curve,known_logg,second_instrument")
    parser.add_argument("--output_dir")
    parser.add_argument("--reproduce_output_dir")
    parser.add_argument("--results_dir")
    parser.add_argument("--results_csv")
    args = parser.parse_args(argv)
    from spectrafm_hf.training.presets import read_yaml  # 5e-4 read as a number
    cfg = read_yaml(Path(args.config).read_text())
    for key in ("output_dir", "reproduce_output_dir", "results_dir", "results_csv"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    run(cfg, [e.strip() for e in args.experiments.split(",") if e.strip()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
