#!/usr/bin/env python
"""Does reading all 343 Gaia XP pixels close SpectraFM's gap to the MLP? (issue 14)

The recommended XP recipe reads every 3rd pixel (115 tokens) and has converged (validation plateau at 45,000 of 50,000
steps); the MLP reads all 343. This continues that converged model on all 343 pixels in one context
(`context_length` 343, the per-pixel flux normalisation refitted on the full grid exactly as a fresh run fits it)
for ``--steps`` optimizer steps per learning rate, and scores both on the VALIDATION split (the test split is never
used here). Needs the xp_full all-star run of ``scripts/configs/real_xp_cpu.yaml`` (``runs/real_xp_cpu``).

    OMP_NUM_THREADS=1 python benchmarks/xp_all_pixels.py [--learning_rates 5e-4,1.5e-3] [--steps 3000]

Runs go to ``runs/xp_all_pixels/`` and are reused when their ``final/`` exists; ~30 min per run on one core.
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
from spectrafm_hf import SpectraFMModel, SpectraFMProcessor  # noqa: E402
from spectrafm_hf.training.presets import read_yaml  # noqa: E402
from spectrafm_hf.training.run import train_or_reuse  # noqa: E402


def all_pixel_start(source: Path, train, folder: Path) -> Path:
    """``source`` ready to read every pixel: context 343, per-pixel normalisation refitted on the full grid."""
    if (folder / "config.json").is_file():
        return folder
    model = SpectraFMModel.from_pretrained(source, context_length=343)
    processor = SpectraFMProcessor.from_pretrained(source)
    old_wl, old_centers = np.array(processor.reference_wavelength), np.array(processor.pixel_centers)
    sample = train.select(range(min(len(train), 2000))).with_format("numpy")  # the rows a fresh run fits on
    flux = np.stack([np.where(np.asarray(r["ivar"]) > 0, r["flux"], np.nan) for r in sample]).astype(np.float64)
    processor.fit_flux(flux, np.asarray(sample[0]["wavelength"], np.float64))
    processor.context_length = 343
    # the strided pixels keep their statistics (up to the median division, now over 343 pixels instead of 115)
    if not (np.allclose(processor.reference_wavelength[::3], old_wl)
            and np.allclose(processor.pixel_centers[::3], old_centers, rtol=0.03)):
        raise RuntimeError("the refitted normalisation does not extend the strided one")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def validation_scores(folder, ds, labels) -> dict:
    rows = real_data.metrics_rows("xp_all_pixels", "", real_data.predict_spectrafm(folder, ds, labels),
                                  real_data.frame(ds, labels), labels)
    return {r["label"]: {"robust_scatter": round(float(r["robust_scatter"]), 4),
                         "coverage68": round(float(r["coverage68"]), 3)} for r in rows if r["split"] == "all"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    parser.add_argument("--learning_rates", default="5e-4,1.5e-3")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--output_dir", default=str(REPO / "runs/xp_all_pixels"))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/xp_all_pixels.json"))
    args = parser.parse_args()
    cfg = read_yaml(Path(args.config).read_text())
    labels = list(cfg["labels"])
    train, val, _ = real_data.load_splits(cfg)
    source = REPO / cfg["output_dir"] / "xp_full" / f"n{len(train)}" / "final"
    if not (source / "config.json").is_file():
        raise SystemExit(f"{source} missing: run scripts/real_data.py {args.config} --experiments xp_full --sizes all")
    out_dir = Path(args.output_dir)
    start = all_pixel_start(source, train, out_dir / "start")
    result = {"steps": args.steps, "split": "validation",
              "every_3rd_pixel_converged": validation_scores(source, real_data.strided(val, 3), labels)}
    for lr in (float(v) for v in args.learning_rates.split(",")):
        values = real_data.spectrafm_values(cfg, out_dir / f"lr{lr:g}_s{args.steps}", args.steps, labels,
                                            model_name_or_path=str(start), learning_rate=lr, warmup_steps=100)
        for fresh_only in ("config_overrides", "flux_normalization", "divide_by_median"):
            values.pop(fresh_only, None)
        final = train_or_reuse(values, splits=(train, val, None), log=real_data.log)
        result[f"all_343_pixels_lr{lr:g}"] = validation_scores(final, val, labels)
        real_data.log(f"lr {lr:g}: {result[f'all_343_pixels_lr{lr:g}']}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
