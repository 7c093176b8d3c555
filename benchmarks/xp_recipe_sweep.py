#!/usr/bin/env python
"""Compute-matched recipe sweep for SpectraFM trained from scratch on real Gaia XP (issue 14).

Every variant gets the same optimizer-step budget (``--steps``, batch 32 unless the variant says otherwise) on all
XP training stars, starting from the ``spectrafm`` recipe of ``scripts/configs/real_xp_cpu.yaml``, and is scored on
the VALIDATION split (robust scatter and 68 % coverage per label; the test split is never used here). Varied: the
network width (hidden 64 vs 128), the peak learning rate (warm-up + cosine), tokens per spectrum (115 = a random third of the 343 XP pixels per step, the
pipeline averaging three disjoint thirds at prediction; every 3rd pixel, a fixed 115; or all 343 in one context) and gradient clipping (the
Trainer's max_grad_norm 1.0 vs none; the clip rate is the fraction of logged steps whose gradient norm exceeded
it; without clipping, the fraction above 1.0). The collapse guard is off here (the sweep measures, it does not
stop runs); ``final_spread`` is std(pred) / std(true) on validation. One core: ``OMP_NUM_THREADS=1``.

    OMP_NUM_THREADS=1 python benchmarks/xp_recipe_sweep.py [--steps 1000] [--variants lr2e-3,...]
        [--out benchmarks/results/xp_recipe_sweep.csv]

Runs go to ``runs/xp_recipe_sweep/<variant>`` and are reused when their ``final/`` exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import real_data  # noqa: E402
from spectrafm_hf.training.presets import read_yaml  # noqa: E402
from spectrafm_hf.training.run import train_or_reuse  # noqa: E402

CTX115 = {"context_length": 115}
HIDDEN128 = {**CTX115, "hidden_size": 128, "encoder_ffn_dims": [512, 512], "decoder_ffn_dims": [512, 512, 256]}
VARIANTS = {  # name: (training overrides, config overrides)
    "lr5e-4": ({"learning_rate": 5e-4}, CTX115),
    "lr1e-3": ({"learning_rate": 1e-3}, CTX115),
    "lr2e-3": ({"learning_rate": 2e-3}, CTX115),
    "lr4e-3": ({"learning_rate": 4e-3}, CTX115),
    "lr2e-3_noclip": ({"learning_rate": 2e-3, "max_grad_norm": 0.0}, CTX115),
    "lr2e-3_ctx343": ({"learning_rate": 2e-3}, {"context_length": 343}),
    "lr2e-3_stride3": ({"learning_rate": 2e-3, "_stride": 3}, CTX115),  # every 3rd pixel: fixed 115 tokens
    "lr2e-3_stride3_noclip": ({"learning_rate": 2e-3, "_stride": 3, "max_grad_norm": 0.0}, CTX115),
    # width: hidden 128 (feed-forward layers doubled with it) against the recipe's 64, same tokens and steps
    "lr2e-3_stride3_hidden128": ({"learning_rate": 2e-3, "_stride": 3}, HIDDEN128),
    "lr1e-3_stride3_hidden128": ({"learning_rate": 1e-3, "_stride": 3}, HIDDEN128),
}


def clip_rate(run_dir: Path, threshold: float):
    """Fraction of logged training steps whose (pre-clipping) gradient norm exceeded ``threshold``."""
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return None, None
    norms = [h["grad_norm"] for h in json.loads(states[-1].read_text())["log_history"] if "grad_norm" in h]
    norms = np.asarray([n for n in norms if n is not None], float)
    return (float((norms > threshold).mean()) if norms.size else None), (float(np.median(norms)) if norms.size
                                                                            else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output_dir", default="runs/xp_recipe_sweep")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/xp_recipe_sweep.csv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = read_yaml(Path(args.config).read_text())
    labels = list(cfg["labels"])
    train, val, _ = real_data.load_splits(cfg)
    truth = real_data.frame(val, labels)
    out_csv = Path(args.out)
    rows = pd.read_csv(out_csv).to_dict("records") if out_csv.is_file() else []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
        train_kw, cfg_kw = dict(VARIANTS[name][0]), VARIANTS[name][1]
        stride = train_kw.pop("_stride", None)
        run_dir = Path(args.output_dir) / name
        base = cfg.get("spectrafm") or {}
        extra = {**train_kw, "config_overrides": {**base.get("config_overrides", {}), **cfg_kw},
                 "logging_steps": 20, "eval_steps": max(1, args.steps // 5), "save_steps": max(1, args.steps // 5),
                 "early_stopping_patience": None, "collapse_min_spread": 0.0}  # measure, do not stop
        values = real_data.spectrafm_values(cfg, run_dir, args.steps, labels, **extra)
        t = time.time()
        fresh = not (run_dir / "final" / "config.json").is_file()
        final = train_or_reuse(values, splits=(real_data.strided(train, stride), real_data.strided(val, stride),
                                               None), log=real_data.log)
        train_s = time.time() - t if fresh else None
        pred = real_data.predict_spectrafm(final, real_data.strided(val, stride), labels)
        rate, median_norm = clip_rate(run_dir, float(values.get("max_grad_norm") or 1.0))
        rows = [r for r in rows if r["variant"] != name or r["steps"] != args.steps]
        for n in labels:
            m = real_data.metrics_rows("sweep", name, pred, truth, [n])[0]
            rows.append({"variant": name, "steps": args.steps, "label": n, "split": "validation",
                         "n_train": len(train), "batch_size": values["per_device_train_batch_size"],
                         "learning_rate": values["learning_rate"],
                         "context_length": values["config_overrides"]["context_length"],
                         "pixel_stride": stride or 1,
                         "max_grad_norm": values.get("max_grad_norm", 1.0), "clip_rate": rate,
                         "median_grad_norm": median_norm, "train_seconds": train_s,
                         "robust_scatter": m["robust_scatter"], "rmse": m["rmse"], "coverage68": m["coverage68"],
                         "final_spread": float(np.std(pred[f"{n}_pred"]) / np.std(truth[n]))})
        real_data.log(f"{name}: " + ", ".join(f"{r['label']} {r['robust_scatter']:.3g}" for r in rows
                                              if r["variant"] == name and r["steps"] == args.steps))
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(out_csv, index=False, float_format="%.6g")
    print(pd.DataFrame(rows).pivot_table(index=["variant", "steps"], columns="label", values="robust_scatter"))


if __name__ == "__main__":
    main()
