#!/usr/bin/env python
"""Which pixels of the 343-point Gaia XP grid SpectraFM reads, in training and at inference (issue 14).

Recipe v4 reads every 3rd pixel, always the same 115 (``spectrafm.pixel_stride: 3``). A model trained on the whole
grid with ``context_length`` 115 reads a different subset of the 343 pixels each step (an augmentation) and, at
inference, the pipeline reads all 343 as subsets and averages them (inverse-variance weights). The processor's
``pixel_subset_rule`` says how: ``random`` pixels, or ``interleaved``, every 3rd pixel at a random phase (training)
and all three phases (inference). This scores final models on the VALIDATION split (what a choice is made on), each
read two ways: ``every_3rd`` (v4's 115 pixels only: one subset) and ``all_pixels`` (every subset the processor
covers the grid with). A model whose per-pixel normalisation was fitted on the strided grid (v4) masks the other
pixels, so it reads the same 115 both ways (only the division by the spectrum's median sees all 343). The test
split is scored by ``scripts/real_data.py`` itself.

    OMP_NUM_THREADS=1 python benchmarks/xp_pixel_subsets.py \\
        --runs v4=runs/real_xp_cpu_v4/xp_full/n28643/final,random=runs/rand115/xp_full/n28643/final \\
        --out benchmarks/results/xp_pixel_subsets.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import real_data  # noqa: E402
from spectrafm_hf.training.presets import load_preset  # noqa: E402


def gaussian_nll(pred, true, sigma) -> float:
    """Mean Gaussian negative log-likelihood of the stars with a finite reference value (physical units)."""
    ok = np.isfinite(true) & np.isfinite(pred) & (sigma > 0)
    z = (pred[ok] - true[ok]) / sigma[ok]
    return float(np.mean(0.5 * z**2 + np.log(sigma[ok]) + 0.5 * np.log(2 * np.pi)))


def scores(folder, ds, labels) -> dict:
    pred = real_data.predict_spectrafm(folder, ds, labels)
    truth = real_data.frame(ds, labels)
    out = {}
    for row in real_data.metrics_rows("xp_pixel_subsets", "", pred, truth, labels):
        if row["split"] == "all":
            n = row["label"]
            out[n] = {"robust_scatter": round(float(row["robust_scatter"]), 4),
                      "coverage68": round(float(row["coverage68"]), 3),
                      "nll": round(gaussian_nll(pred[f"{n}_pred"].to_numpy(), truth[n].to_numpy(),
                                                pred[f"{n}_sigma"].to_numpy()), 4)}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    parser.add_argument("--runs", required=True, help="name=final_model_folder,...")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/xp_pixel_subsets.json"))
    args = parser.parse_args()
    cfg = load_preset(args.config)
    labels = list(cfg["labels"])
    _, val, _ = real_data.load_splits(cfg)
    views = {"every_3rd": real_data.strided(val, 3), "all_pixels": val}
    result = {"split": "validation", "n": len(val), "runs": {}}
    for spec in args.runs.split(","):
        name, folder = spec.split("=", 1)
        if not (Path(folder) / "config.json").is_file():
            raise SystemExit(f"{name}: no model in {folder}")
        result["runs"][name] = {"folder": folder, **{v: scores(folder, ds, labels) for v, ds in views.items()}}
        print(name, json.dumps(result["runs"][name]), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
