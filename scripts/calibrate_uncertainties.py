#!/usr/bin/env python
"""Recalibrate a model's 68 % intervals on the validation split of a training YAML and store the factors in its
preprocessor_config.json (what `run_training` does after every run; use this for a model trained before, or on
another validation set).

    python scripts/calibrate_uncertainties.py MODEL_FOLDER scripts/configs/default_model_cpu.yaml [--max-stars 1000]

The YAML's data fields (dataset_config, dataset_kwargs, eval_split, pixel_range...) choose the stars; never
calibrate on the test split.
"""

import argparse
import json
import sys
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a pipeline folder (its preprocessor_config.json is rewritten)")
    parser.add_argument("config", help="a training YAML whose validation split is used")
    parser.add_argument("--max-stars", type=int, default=None, help="at most this many validation stars")
    args = parser.parse_args(argv)

    from spectrafm_hf import SpectraFMPipeline
    from spectrafm_hf.training.run import DataArguments, _window, calibrate_on_split, load_data

    from spectrafm_hf.training.presets import read_yaml  # 5e-4 read as a number
    fields = {k: v for k, v in (read_yaml(Path(args.config).read_text()) or {}).items()
              if k in DataArguments.__dataclass_fields__}
    data_args = DataArguments(**fields)
    if args.max_stars:
        data_args.max_eval_stars = args.max_stars
    _, evald, _ = load_data(data_args)
    if evald is None:
        print(f"error: {args.config} gives no '{data_args.eval_split}' split", file=sys.stderr)
        return 2
    pipe = SpectraFMPipeline.from_pretrained(args.model, device="cpu")
    scales = calibrate_on_split(pipe.model, pipe.processor, evald.with_format("numpy"), pipe.label_names,
                                _window(data_args))
    pipe.processor.save_pretrained(args.model)
    print(json.dumps({"model": args.model, "validation_stars": len(evald), "uncertainty_scale": scales,
                      "uncertainty_scale_subsets": pipe.processor.uncertainty_scale_subsets}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
