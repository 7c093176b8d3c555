#!/usr/bin/env python
"""Does bf16 autocast training on a CPU cost accuracy? The CPU preset trained twice from the same seed, fp32 and
bf16 autocast (the Trainer's ``bf16: true``), then both evaluated in fp32 on the same held-out stars.

    python benchmarks/bf16_training_check.py [--steps 600] [--out benchmarks/results/bf16_training_cpu.json]

Only meaningful on a CPU with bf16 matrix units (AVX-512 BF16, AMX): elsewhere the bf16 run is far slower.
Uses scripts/configs/pretrain_cpu.yaml with a smaller dataset and ``--steps`` steps; runs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


from spectrafm_hf.training.info import hardware, library_versions
from spectrafm_hf.training.presets import read_yaml
from spectrafm_hf.training.run import args_from_dict, run_evaluation, train_or_reuse

REPO = Path(__file__).resolve().parents[1]
LABELS = ["TEFF", "LOGG", "FE_H", "MG_FE", "O_FE"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bf16_training_cpu.json"))
    args = parser.parse_args()
    preset = read_yaml((REPO / "scripts/configs/pretrain_cpu.yaml").read_text())
    results = {"machine": {**hardware(), "versions": library_versions()}, "command": " ".join(["python"] + sys.argv),
               "preset": "scripts/configs/pretrain_cpu.yaml", "steps": args.steps, "n_train": args.n_train, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, bf16 in (("fp32", False), ("bf16_autocast", True)):
            values = {**preset, "output_dir": f"{tmp}/{name}", "dataset_cache_dir": f"{tmp}/cache",
                      "max_steps": args.steps, "bf16": bf16, "eval_strategy": "no", "save_strategy": "no",
                      "warmup_steps": min(100, args.steps // 10),
                      "dataset_kwargs": {**preset["dataset_kwargs"], "n_train": args.n_train}}
            t = time.perf_counter()
            final = train_or_reuse(values, log=lambda m: print(m, file=sys.stderr))
            seconds = time.perf_counter() - t
            _, data_args, _ = args_from_dict(values)
            metrics, _ = run_evaluation(final, data_args, label_names=LABELS)
            results["runs"][name] = {"train_seconds": seconds, **metrics}
            print(f"{name}: {seconds:.0f} s; " + ", ".join(f"{k} RMSE {metrics[f'{k}_rmse']:.4g}" for k in LABELS),
                  flush=True)
    fp32, bf16 = results["runs"]["fp32"], results["runs"]["bf16_autocast"]
    results["train_speedup_bf16"] = fp32["train_seconds"] / bf16["train_seconds"]
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"bf16 training {results['train_speedup_bf16']:.2f}x; wrote {args.out}")


if __name__ == "__main__":
    main()
