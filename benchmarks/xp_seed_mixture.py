#!/usr/bin/env python
"""Robust scatter, coverage and NLL of runs differing only in their seed, alone and as an equal-weight mixture.

xp_full with every training star: each model's seeds are scored alone and mixed (`real_data.seed_mixture`: mean of
the means, sigma^2 = mean of the sigma^2 + variance of the means) on the test split (or ``--split validation``, how
a recipe is chosen), so SpectraFM and the MLP get the same ensemble. Each seed is a prediction file in the split's
order (`scripts/real_data.py`'s cached ``predictions/xp_full_n28643_<model>.csv``, or
``benchmarks/xp_weight_average.py --predictions``'s ``test_*.csv``) or a SpectraFM run's ``final/`` folder, whose
predictions of the split are made once and cached beside it (``<run>/<split>_predictions.csv``). ``mean_nll`` is the
Gaussian NLL averaged over stars and labels in physical units: only differences between entries mean anything.

    python benchmarks/xp_seed_mixture.py \\
        --runs spectrafm=runs/real_xp_cpu_v4/predictions/xp_full_n28643_spectrafm.csv,runs/seed1/predictions/xp_full_n28643_spectrafm.csv \\
        --runs mlp=runs/real_xp_cpu_v4/predictions/xp_full_n28643_mlp.csv,runs/mlp_seed1/test_ema0.999.csv \\
        --out benchmarks/results/xp_seed_mixture_all_stars.json
    python benchmarks/xp_seed_mixture.py --split validation \\
        --runs spectrafm_30k=runs/real_xp_cpu_v13/xp_full/n28643/final,<seed 1 run>/xp_full/n28643/final \\
        --runs spectrafm_15k=<15,000-step run>/xp_full/n28643/final,<its seed 1>/xp_full/n28643/final
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
    ap.add_argument("--runs", action="append", required=True, metavar="MODEL=CSV,CSV[,...]",
                    help="one model's predictions, one file or SpectraFM final/ folder per seed (repeatable)")
    ap.add_argument("--split", choices=("test", "validation"), default="test")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    cfg = load_preset(a.config, [])
    labels = list(cfg["labels"])
    _, val, test = real_data.load_splits(cfg)
    stars = test if a.split == "test" else val
    truth = real_data.frame(stars, labels)

    def predictions(path: str) -> pd.DataFrame:
        path = Path(path)
        if not path.is_dir():
            return pd.read_csv(path)
        cache = path.parent / f"{a.split}_predictions.csv"
        if not cache.is_file():  # the every-star recipe's pixels, phases averaged, as the table reads them
            pred = real_data.predict_spectrafm(path, real_data.fm_data(cfg, stars), labels)
            pred.insert(0, "object_id", truth["object_id"].to_numpy())
            pred.to_csv(cache.with_suffix(".tmp"), index=False)
            cache.with_suffix(".tmp").replace(cache)  # an interrupted run leaves no half-written cache
        return pd.read_csv(cache)

    def scores(pred):
        if len(pred) != len(truth):
            raise ValueError(f"{len(pred)} predictions for {len(truth)} {a.split} stars")
        rows = real_data.metrics_rows("xp_full", "", pred, truth, labels)
        out = {r["label"]: {"robust_scatter": round(r["robust_scatter"], 4), "coverage68": round(r["coverage68"], 3)}
               for r in rows if r["split"] == "all"}
        for n in labels:
            out[n]["nll"] = round(real_data.prediction_nll(pred, n, truth[n]), 4)
        out["mean_nll"] = round(float(np.mean([out[n]["nll"] for n in labels])), 4)
        return out

    out = {"split": a.split, f"n_{a.split}": len(truth), "models": {}}
    for spec in a.runs:
        model, files = spec.split("=", 1)
        preds = [predictions(f) for f in files.split(",")]
        for p, f in zip(preds, files.split(",")):
            if "object_id" in p and not (p["object_id"].astype(str).to_numpy() == truth["object_id"].to_numpy()).all():
                raise ValueError(f"{f} lists other stars than the {a.split} split, or in another order")
        out["models"][model] = {"files": files.split(","), "seeds": [scores(p) for p in preds],
                                "mixture": scores(real_data.seed_mixture(preds, labels))}
    text = json.dumps(out, indent=1) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
