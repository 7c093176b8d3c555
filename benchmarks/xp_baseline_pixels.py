#!/usr/bin/env python
"""Does the MLP baseline gain from the XP pixels SpectraFM skips? (issue 14: "same stars, same pixels")

xp_full's baselines read all 343 Gaia XP pixels; SpectraFM reads every 3rd (115). This fits xp_full's MLP (same
architecture, learning rate, batch and epoch budget as ``scripts/configs/real_xp_cpu.yaml`` for that size) on the
same training stars twice, on all pixels and on SpectraFM's 115, and scores both on the VALIDATION split (robust
scatter per label; the test split is never used here). If the two agree, the baselines' extra pixels give them no
edge and the comparison is a like-for-like one.

    OMP_NUM_THREADS=1 python benchmarks/xp_baseline_pixels.py [--size 10000] [--strides 1,3]
        [--out benchmarks/results/xp_baseline_pixels.json]

~8 min per stride on one core at 10,000 stars.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import real_data  # noqa: E402
from spectrafm_hf.baselines import ScratchMLP  # noqa: E402
from spectrafm_hf.training.metrics import label_metrics  # noqa: E402
from spectrafm_hf.training.presets import read_yaml  # noqa: E402
from spectrafm_hf.training.run import select_stars  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    p.add_argument("--size", type=int, default=10000)
    p.add_argument("--strides", default="1,3")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/xp_baseline_pixels.json"))
    a = p.parse_args(argv)
    cfg = read_yaml(Path(a.config).read_text())
    e = cfg["xp_full"]
    params = dict(e["baselines"]["mlp"])
    params["epochs"] = int(params.pop("epochs_by_size")[e["sizes"].index(a.size)])
    fit_kw = {k: params.pop(k) for k in ("epochs", "eval_every") if k in params}
    labels = list(cfg["labels"])
    train, val, _ = real_data.load_splits(cfg)
    sub = select_stars(train, {}, a.size, int(e.get("selection_seed", 77)))
    x, y = real_data.flux_matrix(sub), real_data.frame(sub, labels)[labels].to_numpy()
    xv, yv = real_data.flux_matrix(val), real_data.frame(val, labels)[labels].to_numpy()
    out = {"split": "validation", "n_train": len(sub), "mlp": {**params, **fit_kw}, "runs": {}}
    for k in (int(s) for s in a.strides.split(",")):
        t = time.time()
        model = ScratchMLP(**params).fit(x[:, ::k], y, xv[:, ::k], yv, **fit_kw)
        mean, sigma = model.predict(xv[:, ::k])
        mean, sigma = np.atleast_2d(mean.T).T, np.atleast_2d(sigma.T).T
        out["runs"][f"pixel_stride_{k}"] = {
            "n_pixels": int(x[:, ::k].shape[1]), "best_epoch": int(model.best_epoch_),
            "minutes": round((time.time() - t) / 60, 1),
            **{n: round(float(label_metrics(mean[:, j], yv[:, j], sigma[:, j])["robust_scatter"]), 4)
               for j, n in enumerate(labels)}}
        print(json.dumps(out["runs"]), flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
