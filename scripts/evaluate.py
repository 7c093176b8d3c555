#!/usr/bin/env python
"""Evaluate a SpectraFM pipeline on a dataset split: per-label metrics in physical units and per-star predictions.

    python scripts/evaluate.py scripts/configs/evaluate_cpu.yaml --model_name_or_path runs/pretrain_cpu/final

Spectra are predicted whole (every usable pixel, in several subsets combined by inverse variance), not one random
subset as during training. Writes <output_dir>/metrics.json and <output_dir>/predictions.csv.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from transformers import HfArgumentParser

from spectrafm_hf.training.presets import read_yaml
from spectrafm_hf.training.run import DataArguments, ModelArguments, run_evaluation


@dataclass
class EvalArguments:
    output_dir: str = "runs/evaluate"
    seed: int = 0
    n_repeats: int = 1


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, EvalArguments))
    if argv and argv[0].endswith((".yaml", ".yml")):
        parser.set_defaults(**(read_yaml(Path(argv.pop(0)).read_text()) or {}))
    model_args, data_args, eval_args = parser.parse_args_into_dataclasses(args=argv)
    if not model_args.model_name_or_path:
        raise SystemExit("evaluate needs --model_name_or_path")
    metrics, table = run_evaluation(model_args.model_name_or_path, data_args, model_args.target_labels,
                                    seed=eval_args.seed, n_repeats=eval_args.n_repeats)
    out = Path(eval_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    table.to_csv(out / "predictions.csv", index=False)
    for key, value in metrics.items():
        if key.endswith(("_rmse", "_bias", "_robust_scatter", "_coverage68")):
            print(f"{key:28s} {value:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
