#!/usr/bin/env python
"""Does a larger flux-embedding initialisation let SpectraFM read [Fe/H] from Gaia XP spectra?

    python benchmarks/xp_flux_embedding_check.py [--bounds 0.02778 1.0] [--out benchmarks/results/xp_flux_embedding_check.json]

The real_xp_cpu.yaml recipe (hidden 64, all 343 pixels) trained for 600 steps on 3,000 XP training stars, once per
``embedding_init_bound`` (the default 0.02778, and 1.0), scored on 500 validation stars (robust scatter per label).
"""

import argparse
import importlib.util
import json
from pathlib import Path


from spectrafm_hf.training.presets import read_yaml

REPO = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bounds", type=float, nargs="+", default=[0.02778, 1.0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "xp_flux_embedding_check.json"))
    parser.add_argument("--runs", default=str(REPO / "runs" / "xp_flux_embedding_check"))
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("real_data", REPO / "scripts" / "real_data.py")
    rd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rd)
    from spectrafm_hf.training.run import select_stars, train_or_reuse

    cfg = read_yaml((REPO / "scripts" / "configs" / "real_xp_cpu.yaml").read_text())
    train, val, _ = rd.load_splits(cfg)
    sub, val = select_stars(train, {}, 3000, 5), val.select(range(500))
    results = {"command": "python benchmarks/xp_flux_embedding_check.py", "train_stars": len(sub),
               "validation_stars": len(val), "steps": 600, "robust_scatter": {}}
    for bound in args.bounds:
        run = Path(args.runs) / f"bound{bound}"
        values = rd.spectrafm_values(cfg, run, 600, cfg["labels"])
        values["config_overrides"] = {**values["config_overrides"], "embedding_init_bound": bound}
        values.update(save_strategy="no", load_best_model_at_end=False, eval_steps=200)
        train_or_reuse(values, splits=(sub, val, None))
        metrics = json.loads((run / "final_metrics.json").read_text())
        results["robust_scatter"][str(bound)] = {k[5:-15]: v for k, v in metrics.items()
                                                 if k.endswith("_robust_scatter")}
        print(bound, results["robust_scatter"][str(bound)], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
