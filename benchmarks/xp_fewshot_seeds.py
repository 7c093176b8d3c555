#!/usr/bin/env python
"""Gaia XP few-shot: row ``spectrafm``'s metal-poor [Fe/H] RMSE at other training seeds, alone and mixed.

Each ``--runs`` folder is a `scripts/real_data.py` output_dir of the XP preset's ``xp_fewshot`` at another
``training_defaults.seed`` (the masked-flux pretraining and the read-out both change; the stars, the draws and the
test split do not). Per draw, row ``spectrafm``'s test predictions of every seed are scored alone and as an
equal-weight mixture (`real_data.seed_mixture`: mean of the means, sigma^2 = mean of the sigma^2 + variance of the
means): RMSE on the whole test split and on its metal-poor ([Fe/H] < -1) stars, 68 % coverage on the metal-rich ones.
The scratch NN's metal-poor RMSE, for the ratio, is read from ``--scratch`` (the preset's committed table; the
scratch NN's own seed is not ``training_defaults.seed``, and its runs at seeds 1 and 2 gave the same numbers).
``--model`` scores another row the same way (an ablation, or a candidate added with ``--set``), and ``--summaries``
(each run's ``summary.json``, in ``--runs`` order) adds its extrapolation-check score per seed, the rule that chooses
row ``spectrafm``.

    python scripts/real_data.py scripts/configs/real_xp_cpu.yaml --experiments xp_fewshot --jobs 1 \\
        --set training_defaults.seed=1 --set 'xp_fewshot.ablations={}' --output_dir runs/xp_fewshot_seed1 \\
        --results_dir runs/xp_fewshot_seed1/results --results_csv runs/xp_fewshot_seed1/results/real_data.csv
        # ~34 min on one core; the same with seed 2
    python benchmarks/xp_fewshot_seeds.py --runs runs/real_xp_cpu_v9 runs/xp_fewshot_seed1 runs/xp_fewshot_seed2 \\
        --out benchmarks/results/xp_fewshot_seeds.json   # recipe v9's row spectrafm (session 38)
    # recipe v10 (session 39): the runs re-made with the v10 preset, every run reused (the whole procedure, ~5 min
    # per seed), then --runs runs/real_xp_cpu_v10 ... --summaries ... --out .../xp_fewshot_seeds_v10.json
    # less covariance shrinkage for the generative read-out, as extra candidates at each seed:
    python scripts/real_data.py scripts/configs/real_xp_cpu.yaml --experiments xp_fewshot --jobs 1 \\
        --set training_defaults.seed=1 --output_dir runs/xp_fewshot_seed1 --results_dir runs/shrink_seed1 \\
        --results_csv runs/shrink_seed1/real_data.csv --set 'xp_fewshot.ablations={spectrafm_generative_shrink0.1:
        {linear_probe: true, method: generative, shrink: 0.1}, ...}'   # ~2.5 min on one core reusing the runs
    python benchmarks/xp_fewshot_seeds.py --runs <the three output_dirs> --model spectrafm_generative_shrink0.1 \\
        --summaries runs/shrink_seed0/summary.json runs/shrink_seed1/summary.json runs/shrink_seed2/summary.json \\
        --out benchmarks/results/xp_fewshot_seeds_shrink0.1.json
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

import real_data  # noqa: E402
from spectrafm_hf.training.presets import load_preset  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    ap.add_argument("--runs", nargs="+", required=True, help="output_dir of each seed's run")
    ap.add_argument("--model", default="spectrafm", help="the row to score (default: the recommended recipe)")
    ap.add_argument("--summaries", nargs="+", help="each run's summary.json, for the extrapolation-check scores")
    ap.add_argument("--scratch", default=str(REPO / "benchmarks/results/real_data.csv"))
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.summaries and len(a.summaries) != len(a.runs):
        ap.error(f"--summaries lists {len(a.summaries)} files for {len(a.runs)} --runs")
    cfg = load_preset(a.config, [])
    draws = [int(d) for d in cfg["xp_fewshot"]["draws"]]
    truth = real_data.frame(real_data.load_splits(cfg)[2], ["FE_H", "LOGG"])
    table = pd.read_csv(a.scratch)
    table = table[(table.experiment == "xp_fewshot") & (table.model == "scratch_nn") & (table.label == "FE_H")
                  & (table.split == "feh_lt_-1")].set_index("draw")

    def score(pred):
        if len(pred) != len(truth):
            raise ValueError(f"{len(pred)} predictions for {len(truth)} test stars")
        return real_data.fe_h_scores("xp_fewshot", pred, truth)

    out = {"runs": a.runs, "model": a.model, "draws": {}}
    for draw in draws:
        name = real_data.fewshot_run_name(cfg, a.model, draw)
        preds = [pd.read_csv(Path(r) / "predictions" / f"xp_fewshot_{name}.csv") for r in a.runs]
        out["draws"][str(draw)] = {"seeds": [score(p) for p in preds],
                                   "mixture": score(real_data.seed_mixture(preds, ["FE_H"])),
                                   "scratch_nn_metal_poor_rmse": float(table.loc[draw, "rmse"])}

    def draw_mean(get, digits=4):
        return round(float(np.mean([get(out["draws"][str(d)]) for d in draws])), digits)

    seeds = range(len(a.runs))
    poor = [draw_mean(lambda r, s=s: r["seeds"][s]["feh_lt_-1"]["rmse"]) for s in seeds]
    mixed = draw_mean(lambda r: r["mixture"]["feh_lt_-1"]["rmse"])
    scratch = draw_mean(lambda r: r["scratch_nn_metal_poor_rmse"])
    out["mean_of_draws"] = {
        "metal_poor_rmse_seeds": poor, "metal_poor_rmse_mixture": mixed,
        "whole_set_rmse_seeds": [draw_mean(lambda r, s=s: r["seeds"][s]["all"]["rmse"]) for s in seeds],
        "whole_set_rmse_mixture": draw_mean(lambda r: r["mixture"]["all"]["rmse"]),
        "metal_rich_coverage68_seeds": [draw_mean(lambda r, s=s: r["seeds"][s]["feh_ge_-1"]["coverage68"], 3)
                                        for s in seeds],
        "metal_rich_coverage68_mixture": draw_mean(lambda r: r["mixture"]["feh_ge_-1"]["coverage68"], 3),
        "scratch_nn_metal_poor_rmse": scratch,
        "ratio_seeds": [round(scratch / v, 3) for v in poor], "ratio_mixture": round(scratch / mixed, 3),
        "ratio_per_draw_seeds": [[round(out["draws"][str(d)]["scratch_nn_metal_poor_rmse"]
                                        / out["draws"][str(d)]["seeds"][s]["feh_lt_-1"]["rmse"], 3) for d in draws]
                                 for s in seeds]}
    if a.summaries:   # the rule's score: RMSE below the cut when fitted above it, mean of the draws
        out["mean_of_draws"]["check_seeds"] = [
            round(json.loads(Path(f).read_text())["recipe_selection"]["xp_fewshot"]["extrapolation_fe_h_rmse"][a.model],
                  4) for f in a.summaries]
    text = json.dumps(out, indent=1) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(json.dumps(out["mean_of_draws"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
