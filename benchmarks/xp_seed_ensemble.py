#!/usr/bin/env python
"""Do seed ensembles close SpectraFM's gap to the MLP on Gaia XP? Measured on the validation split (issue 14).

SpectraFM (the ``spectrafm`` recipe of scripts/configs/real_xp_cpu.yaml, every 3rd pixel) and the MLP baseline (its
xp_full recipe) are each trained with several seeds on the same training stars; each model's predictions are scored
alone and as an ensemble (mean of the means; sigma^2 = mean of the sigma^2 + variance of the means). The question is
whether averaging helps SpectraFM more than the MLP, i.e. whether the gap is variance a full-scale ensemble would
remove. Validation split only (the test split is never read here); ``--stars`` training stars picked as xp_full does.

    OMP_NUM_THREADS=1 python benchmarks/xp_seed_ensemble.py [--stars 10000] [--steps 4000] [--mlp_epochs 60]
        [--seeds 0,1] [--out benchmarks/results/xp_seed_ensemble.json]
        [--variant NAME --config_overrides '{"embedding_init_bound": 0.25}']

``--variant`` trains SpectraFM with ``--config_overrides`` merged into the recipe's and ``--train_args`` (training
argument fields, e.g. ``label_loss_weights``) added to its arguments (its runs are named
``spectrafm_NAME_seedK``); the MLP runs are shared with the plain recipe. ``benchmarks/results/
xp_seed_ensemble_bound0.25.json`` is ``--variant bound0.25 --config_overrides '{"embedding_init_bound": 0.25}'``,
seeds 0 and 1: the flux embedding's larger initialisation that recipe v3 adopts. ``xp_seed_ensemble.json`` was made
with recipe v2 (the config before v3: ``embedding_init_bound`` unset).

Runs go to ``runs/xp_seed_ensemble/`` and are reused when they exist; run two seeds side by side with
``--seeds 0`` and ``--seeds 1`` in two processes (one core each), then once more with ``--seeds 0,1`` to score.
One seed at the defaults: SpectraFM ~13 min, the MLP ~3.5 min on one of two busy cores.
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
from spectrafm_hf.training.presets import read_yaml  # noqa: E402
from spectrafm_hf.training.run import select_stars, train_or_reuse  # noqa: E402


def scores(pred, truth, labels) -> dict:
    rows = real_data.metrics_rows("seed_ensemble", "", pred, truth, labels)
    return {r["label"]: {"robust_scatter": r["robust_scatter"], "coverage68": r["coverage68"]}
            for r in rows if r["split"] == "all"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    ap.add_argument("--stars", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--mlp_epochs", type=int, default=60)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--variant", default="", help="name of a SpectraFM variant (with --config_overrides)")
    ap.add_argument("--config_overrides", default="{}", help="JSON merged into the recipe's config_overrides")
    ap.add_argument("--train_args", default="{}", help="JSON of training-argument fields for the variant, e.g. "
                    "'{\"label_loss_weights\": {\"FE_H\": 2.0}}'")
    ap.add_argument("--output_dir", default="runs/xp_seed_ensemble")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/xp_seed_ensemble.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = read_yaml(Path(a.config).read_text())
    labels = list(cfg["labels"])
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    train, val, _ = real_data.load_splits(cfg)
    sub = select_stars(train, {}, a.stars, int(cfg["xp_full"].get("selection_seed", 77)))
    truth = real_data.frame(val, labels)
    out_dir = Path(a.output_dir) / f"n{len(sub)}"
    runner = real_data.Runner(cfg, out_dir)
    X, Y = real_data.flux_matrix(sub), real_data.frame(sub, labels)[labels].to_numpy()
    Xv = real_data.flux_matrix(val)
    mlp = dict(cfg["xp_full"]["baselines"]["mlp"])
    mlp.pop("epochs_by_size", None)
    overrides, train_args = json.loads(a.config_overrides), json.loads(a.train_args)
    if (overrides or train_args) and not a.variant:
        ap.error("--config_overrides and --train_args need a --variant name (its runs must not reuse the plain "
                 "recipe's)")
    fm = f"spectrafm_{a.variant}" if a.variant else "spectrafm"
    preds = {"spectrafm": [], "mlp": []}
    for seed in seeds:
        values = real_data.spectrafm_values(cfg, out_dir / f"{fm}_seed{seed}", a.steps, labels, seed=seed,
                                            **train_args)
        values["config_overrides"] = {**values.get("config_overrides", {}), **overrides}
        final = train_or_reuse(values, splits=(real_data.fm_data(cfg, sub), real_data.fm_data(cfg, val), None),
                               log=real_data.log)
        preds["spectrafm"].append(runner.cached(f"{fm}_seed{seed}", lambda: real_data.predict_spectrafm(
            final, real_data.fm_data(cfg, val), labels)))
        params = {**mlp, "epochs": a.mlp_epochs, "seed": seed}
        preds["mlp"].append(runner.cached(f"mlp_seed{seed}", lambda: real_data.fit_baseline(
            "mlp", params, X, Y, Xv, truth[labels].to_numpy(), Xv, labels)))
    if len(seeds) < 2:
        real_data.log(f"trained seed(s) {seeds}; run again with two or more seeds to score the ensemble")
        return 0
    result = {"variant": a.variant or None, "config_overrides": overrides, "train_args": train_args,
              "stars": len(sub), "steps": a.steps,
              "mlp_epochs": a.mlp_epochs, "seeds": seeds, "split": "validation", "n_validation": len(val), "models": {}}
    for model, p in preds.items():
        single = [scores(q, truth, labels) for q in p]
        result["models"][model] = {
            "single_seeds": single,
            "single_mean_robust_scatter": {n: float(np.mean([s[n]["robust_scatter"] for s in single])) for n in labels},
            "ensemble": scores(real_data.seed_mixture(p, labels), truth, labels)}
    r = result["models"]
    result["ensemble_gain_percent"] = {
        m: {n: round(100 * (1 - r[m]["ensemble"][n]["robust_scatter"] / r[m]["single_mean_robust_scatter"][n]), 1)
            for n in labels} for m in r}
    result["spectrafm_over_mlp"] = {
        "single": {n: round(r["spectrafm"]["single_mean_robust_scatter"][n] / r["mlp"]["single_mean_robust_scatter"][n], 3)
                   for n in labels},
        "ensemble": {n: round(r["spectrafm"]["ensemble"][n]["robust_scatter"] / r["mlp"]["ensemble"][n]["robust_scatter"], 3)
                     for n in labels}}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("ensemble_gain_percent", "spectrafm_over_mlp")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
