#!/usr/bin/env python
"""Test robust scatter of runs that differ only in their training seed, alone and as an equal-weight mixture.

xp_full with every training star: each model's seeds are scored alone and mixed (`real_data.seed_mixture`: mean of
the means, sigma^2 = mean of the sigma^2 + variance of the means) on the test split, so SpectraFM and the MLP get the
same ensemble. Prediction files are in the test split's order (`scripts/real_data.py`'s cached
``predictions/xp_full_n28643_<model>.csv``, or ``benchmarks/xp_weight_average.py --predictions``'s ``test_*.csv``).

    python benchmarks/xp_seed_mixture.py \\
        --runs spectrafm=runs/real_xp_cpu_v4/predictions/xp_full_n28643_spectrafm.csv,runs/seed1/predictions/xp_full_n28643_spectrafm.csv \\
        --runs mlp=runs/real_xp_cpu_v4/predictions/xp_full_n28643_mlp.csv,runs/mlp_seed1/test_ema0.999.csv \\
        --out benchmarks/results/xp_seed_mixture_all_stars.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import real_data  # noqa: E402
from spectrafm_hf.training.presets import load_preset  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    ap.add_argument("--runs", action="append", required=True, metavar="MODEL=CSV,CSV[,...]",
                    help="one model's test predictions, one file per seed (repeatable)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    cfg = load_preset(a.config, [])
    labels = list(cfg["labels"])
    _, _, test = real_data.load_splits(cfg)
    truth = real_data.frame(test, labels)

    def scores(pred):
        if len(pred) != len(truth):
            raise ValueError(f"{len(pred)} predictions for {len(truth)} test stars")
        rows = real_data.metrics_rows("xp_full", "", pred, truth, labels)
        return {r["label"]: {"robust_scatter": round(r["robust_scatter"], 4), "coverage68": round(r["coverage68"], 3)}
                for r in rows if r["split"] == "all"}

    out = {"split": "test", "n_test": len(truth), "models": {}}
    for spec in a.runs:
        model, files = spec.split("=", 1)
        preds = [pd.read_csv(f) for f in files.split(",")]
        for p, f in zip(preds, files.split(",")):
            if "object_id" in p and not (p["object_id"].astype(str).to_numpy() == truth["object_id"].to_numpy()).all():
                raise ValueError(f"{f} lists other stars than the test split, or in another order")
        out["models"][model] = {"files": files.split(","), "seeds": [scores(p) for p in preds],
                                "mixture": scores(real_data.seed_mixture(preds, labels))}
    text = json.dumps(out, indent=1) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
