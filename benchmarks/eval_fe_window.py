#!/usr/bin/env python
"""[Fe/H] in the paper's stage-3 window (16106-16220 A) on held-out observed-domain stars, whole-window prediction,
split by metallicity, for the CPU preset models (writes benchmarks/results/fe_window_cpu.json).

    python benchmarks/eval_fe_window.py [--models stage3=runs/stage3_cpu/final stage2=runs/stage2_cpu/final ...]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from spectrafm_hf.training.metrics import label_metrics
from spectrafm_hf.training.run import DataArguments, run_evaluation

REPO = Path(__file__).resolve().parents[1]
DEFAULT = ["stage3=runs/stage3_cpu/final", "stage2_on_window=runs/stage2_cpu/final",
           "stage1_on_window=runs/pretrain_cpu/final"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fe_window_cpu.json"))
    args = p.parse_args()
    data = DataArguments(dataset_config="observed_apogee", dataset_cache_dir="data_cache", pixel_range=[4107, 4619],
                         dataset_kwargs={"n_train": 10000, "n_validation": 1000, "n_test": 2000, "seed": 1,
                                         "continuum": "pseudo"})  # the test split of finetune_stage3_cpu.yaml
    out = {"command": "python benchmarks/eval_fe_window.py", "data": "observed_apogee test split (seed 1), 2000 stars"}
    for item in args.models:
        name, path = item.split("=", 1)
        _, t = run_evaluation(path, data, ["FE_H"])
        out[name] = {}
        for split, sel in [("all", np.ones(len(t), bool)), ("feh_lt_-1", t.FE_H_true < -1),
                           ("feh_ge_-1", t.FE_H_true >= -1)]:
            out[name][split] = label_metrics(t.FE_H[sel], t.FE_H_true[sel], t.FE_H_err[sel])
        print(name, {k: round(v["rmse"], 3) for k, v in out[name].items()})
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
