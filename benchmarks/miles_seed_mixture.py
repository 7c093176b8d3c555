#!/usr/bin/env python
"""MILES few-shot: how much of row ``spectrafm``'s metal-poor error is seed noise? Seeds alone and mixed.

Each ``--runs`` folder is a `scripts/miles_fewshot.py` output_dir of the same preset at another
``training_defaults.seed`` (pretraining and fine-tune both change; the synthetic spectra and the draws do not). Per
draw, the row's test predictions of every seed are scored alone and as an equal-weight mixture
(`real_data.seed_mixture`: mean of the means, sigma^2 = mean of the sigma^2 + variance of the means), and so are the
extrapolation check's refits on the validation stars below the cut (the preset's recipe rule); the pretrained model
before fine-tuning (``spectrafm_synthetic_only``) is scored per seed beside them. The scratch NN's metal-poor RMSE,
for the ratio, is read from ``--scratch`` (the preset's committed table). One folder scores one run alone (a ``--set``
variant of the preset, say).

    python scripts/miles_fewshot.py scripts/configs/miles_fewshot_cpu.yaml --output_dir runs/seed1 \\
        --results_dir runs/seed1/results --results_csv runs/seed1/results/miles.csv --set training_defaults.seed=1 \\
        --set 'fewshot.ablations={}' --set fewshot.label_affine=false --set 'fewshot.baselines={}'   # ~42 min, one core
    python benchmarks/miles_seed_mixture.py --runs runs/miles_fewshot_cpu_v4 runs/seed1 runs/seed2 \\
        --out benchmarks/results/miles_seed_mixture.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import miles_fewshot  # noqa: E402
from spectrafm_hf.training.presets import read_yaml  # noqa: E402

rd = miles_fewshot.rd
MODEL = "spectrafm"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "scripts/configs/miles_fewshot_cpu.yaml"))
    ap.add_argument("--runs", nargs="+", required=True, help="output_dir of each seed's run")
    ap.add_argument("--scratch", default=str(REPO / "benchmarks/results/real_data_miles.csv"))
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    cfg = read_yaml(Path(a.config).read_text())
    e = cfg["fewshot"]
    draws = [int(d) for d in e["draws"]]
    sets = miles_fewshot.miles_sets(cfg, draws)
    check = e["extrapolation_check"]
    out = {"runs": a.runs, "draws": {}}

    def score(pred, truth):
        return rd.fe_h_scores("miles_fewshot", pred, truth)

    for draw in draws:
        few, test = sets[draw]
        truth = rd.frame(test, ["FE_H", "LOGG", "TEFF"])
        scored = rd.extrapolation_sets(few, sets["val"], check)[3]
        below = np.asarray(scored["FE_H"], float)
        preds = [pd.read_csv(Path(r) / "predictions" / f"{MODEL}_draw{draw}.csv") for r in a.runs]
        refits = [pd.read_csv(Path(r) / "predictions" / f"{rd.extrapolation_run_name(f'{MODEL}_draw{draw}', check)}"
                              "_validation_below_cut.csv") for r in a.runs]
        for p in preds:
            if len(p) != len(truth):
                raise ValueError(f"{len(p)} predictions for {len(truth)} test stars of draw {draw}")
        check_rmse = [float(np.sqrt(np.mean((p.FE_H_pred.to_numpy() - below) ** 2))) for p in refits]
        mixed_check = rd.seed_mixture(refits, ["FE_H"]).FE_H_pred.to_numpy()
        synthetic_only = [pd.read_csv(Path(r) / "predictions" / f"spectrafm_synthetic_only_draw{draw}.csv")
                          for r in a.runs]  # the pretraining alone, before fine-tuning
        out["draws"][str(draw)] = {
            "seeds": [score(p, truth) for p in preds],
            "synthetic_only_seeds": [score(p, truth) for p in synthetic_only],
            "mixture": score(rd.seed_mixture(preds, ["FE_H"]), truth),
            "check_seeds": [round(c, 4) for c in check_rmse],
            "check_mixture": round(float(np.sqrt(np.mean((mixed_check - below) ** 2))), 4)}
    scratch_poor = miles_fewshot.committed_scratch_rmse(draws, a.scratch)

    def draw_mean(get, digits=4):
        return round(float(np.mean([get(out["draws"][str(d)]) for d in draws])), digits)

    seeds = range(len(a.runs))
    poor = [draw_mean(lambda r, s=s: r["seeds"][s]["feh_lt_-1"]["rmse"]) for s in seeds]
    mixed_poor = draw_mean(lambda r: r["mixture"]["feh_lt_-1"]["rmse"])
    out["mean_of_draws"] = {
        "metal_poor_rmse_seeds": poor, "metal_poor_rmse_mixture": mixed_poor,
        "synthetic_only_metal_poor_rmse_seeds": [
            draw_mean(lambda r, s=s: r["synthetic_only_seeds"][s]["feh_lt_-1"]["rmse"]) for s in seeds],
        "whole_set_rmse_mixture": draw_mean(lambda r: r["mixture"]["all"]["rmse"]),
        "metal_rich_coverage68_mixture": draw_mean(lambda r: r["mixture"]["feh_ge_-1"]["coverage68"], 3),
        "check_seeds": [draw_mean(lambda r, s=s: r["check_seeds"][s]) for s in seeds],
        "check_mixture": draw_mean(lambda r: r["check_mixture"]),
        "scratch_nn_metal_poor_rmse": round(scratch_poor, 4),
        "ratio_seeds": [round(scratch_poor / v, 3) for v in poor],
        "ratio_mixture": round(scratch_poor / mixed_poor, 3)}
    text = json.dumps(out, indent=1) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(json.dumps(out["mean_of_draws"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
