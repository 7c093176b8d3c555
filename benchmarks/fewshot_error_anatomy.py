#!/usr/bin/env python
"""Where the few-shot metal-poor error lives (issue 14), read from the CPU presets' own test predictions.

- MILES (``--miles_runs``, the preset's ``output_dir``): per draw, each model's metal-poor ([Fe/H] < -1) RMSE, the one
  test star with the largest share of its squared error (MILES id, labels, prediction, share) and the RMSE without it;
  the scratch / SpectraFM ratio with and without that star. Found by reading test errors: a diagnostic, never a domain.
- Gaia XP (``--xp_runs``): per [Fe/H] bin of the test stars, each model's mean prediction, bias and RMSE, mean of the
  draws: does a model follow [Fe/H] below the 100 fine-tuning stars' range, or saturate?

    python benchmarks/fewshot_error_anatomy.py   # after both presets, ~1 min
    # -> benchmarks/results/fewshot_error_anatomy.json
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
import real_data  # noqa: E402

XP_BINS = [(-3.0, -2.0), (-2.0, -1.5), (-1.5, -1.0), (-1.0, -0.5), (-0.5, 0.6)]


def rmse(x) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def miles(config: str, runs: Path, models=("spectrafm", "scratch_nn")) -> dict:
    cfg = real_data.load_preset(config, [])
    draws = [int(d) for d in cfg["fewshot"]["draws"]]
    sets = miles_fewshot.miles_sets(cfg, draws)
    out = {}
    for draw in draws:
        truth = real_data.frame(sets[draw][1], ["FE_H", "TEFF", "LOGG"])
        poor = (truth.FE_H < -1).to_numpy()
        t = truth.FE_H.to_numpy()
        preds = {m: pd.read_csv(runs / "predictions" / f"{m}_draw{draw}.csv").FE_H_pred.to_numpy() for m in models}
        row = {}
        for model, pred in preds.items():
            sq = (pred - t) ** 2
            worst = int(np.flatnonzero(poor)[np.argmax(sq[poor])])
            rest = poor.copy()
            rest[worst] = False
            star = truth.iloc[worst]
            row[model] = {"metal_poor_rmse": rmse(pred[poor] - t[poor]), "n_metal_poor": int(poor.sum()),
                          "worst_star": {"object_id": str(star.object_id), "TEFF": float(star.TEFF),
                                         "LOGG": float(star.LOGG), "FE_H": float(star.FE_H),
                                         "FE_H_pred": float(pred[worst]),
                                         "share_of_squared_error": float(sq[worst] / sq[poor].sum())},
                          "metal_poor_rmse_without_worst_star": rmse(pred[rest] - t[rest])}
        if {"spectrafm", "scratch_nn"} <= set(preds):  # the ratio, and without SpectraFM's worst star
            keep = poor & (truth.object_id != row["spectrafm"]["worst_star"]["object_id"]).to_numpy()
            row["ratio"] = row["scratch_nn"]["metal_poor_rmse"] / row["spectrafm"]["metal_poor_rmse"]
            row["ratio_without_spectrafms_worst_star"] = (rmse(preds["scratch_nn"][keep] - t[keep])
                                                          / rmse(preds["spectrafm"][keep] - t[keep]))
        out[str(draw)] = row
    return out


def xp(config: str, runs: Path) -> dict:
    cfg = real_data.load_preset(config, [])
    _, _, test = real_data.load_splits(cfg)
    feh = real_data.frame(test, ["FE_H"]).FE_H.to_numpy()
    draws = [int(d) for d in cfg["xp_fewshot"]["draws"]]
    files = {"spectrafm": "xp_fewshot_spectrafm_draw{}_masked_flux.csv", "scratch_nn": "xp_fewshot_mlp_draw{}.csv",
             "spectrafm_no_pretraining": "xp_fewshot_spectrafm_no_pretraining_draw{}.csv",
             "ridge": "xp_fewshot_ridge_draw{}.csv"}
    out = {}
    for model, pattern in files.items():
        preds = [pd.read_csv(runs / "predictions" / pattern.format(d)).FE_H_pred.to_numpy() for d in draws]
        bins = {}
        for lo, hi in XP_BINS:
            m = (feh >= lo) & (feh < hi)
            bins[f"[{lo}, {hi})"] = {"n": int(m.sum()),
                                     "mean_prediction": float(np.mean([p[m].mean() for p in preds])),
                                     "bias": float(np.mean([(p[m] - feh[m]).mean() for p in preds])),
                                     "rmse": float(np.mean([rmse(p[m] - feh[m]) for p in preds]))}
        out[model] = bins
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--miles_config", default=str(REPO / "scripts/configs/miles_fewshot_cpu.yaml"))
    p.add_argument("--miles_runs", help="the MILES preset's output_dir (default: the preset's)")
    p.add_argument("--xp_config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    p.add_argument("--xp_runs", help="the XP preset's output_dir (default: the preset's)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/fewshot_error_anatomy.json"))
    a = p.parse_args(argv)
    miles_runs = Path(a.miles_runs or real_data.load_preset(a.miles_config, [])["output_dir"])
    xp_runs = Path(a.xp_runs or real_data.load_preset(a.xp_config, [])["output_dir"])
    result = {"command": "python benchmarks/fewshot_error_anatomy.py", "miles_runs": miles_runs.name,
              "xp_runs": xp_runs.name, "miles_metal_poor": miles(a.miles_config, miles_runs),
              "xp_fewshot_by_fe_h": xp(a.xp_config, xp_runs)}
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
