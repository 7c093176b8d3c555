#!/usr/bin/env python
"""Does weight averaging (``ema_decay``) help the MLP baseline as it helps SpectraFM? (issue 14: the same care)

SpectraFM's ``ema_decay`` (a running average of the weights used for evaluation, checkpoint choice and the final
model) is a training technique any network can use, so the MLP baseline of ``xp_full`` gets it too before the two
are compared. This fits xp_full's MLP (architecture, learning rate, batch and epoch budget of
``scripts/configs/real_xp_cpu.yaml`` for that size) on the same training stars at each ``--ema`` value and scores it
on the VALIDATION split (best validation NLL, the epoch it came at, robust scatter per label), which is what a
choice may use. The test split's robust scatter is written too (``test``), to be read only after that choice.

    OMP_NUM_THREADS=1 python benchmarks/xp_weight_average.py [--size all] [--ema 0,0.999]
        [--out benchmarks/results/xp_weight_average_mlp.json]

~30 min per value on one core with every training star (400 epochs); results already in ``--out`` are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import real_data  # noqa: E402
from spectrafm_hf.baselines import ScratchMLP  # noqa: E402
from spectrafm_hf.training.metrics import label_metrics  # noqa: E402
from spectrafm_hf.training.run import select_stars  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    p.add_argument("--size", default="all", help="training stars: all, or one of xp_full.sizes")
    p.add_argument("--ema", default="0,0.999", help="ema_decay values (0 = no averaging)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/xp_weight_average_mlp.json"))
    a = p.parse_args(argv)
    cfg = yaml.safe_load(open(a.config))
    e = cfg["xp_full"]
    size = None if a.size == "all" else int(a.size)
    params = dict(e["baselines"]["mlp"])
    params["epochs"] = int(params.pop("epochs_by_size")[e["sizes"].index(size)])
    fit_kw = {k: params.pop(k) for k in ("epochs", "eval_every") if k in params}
    labels = list(cfg["labels"])
    train, val, test = real_data.load_splits(cfg)
    sub = train if size is None else select_stars(train, {}, size, int(e.get("selection_seed", 77)))
    x, y = real_data.flux_matrix(sub), real_data.frame(sub, labels)[labels].to_numpy()
    xv, yv = real_data.flux_matrix(val), real_data.frame(val, labels)[labels].to_numpy()
    xt, yt = real_data.flux_matrix(test), real_data.frame(test, labels)[labels].to_numpy()
    out_path = Path(a.out)
    out = json.loads(out_path.read_text()) if out_path.is_file() else {}
    out.update({"split": "validation", "n_train": len(sub), "mlp": {**params, **fit_kw}})
    out.setdefault("runs", {})
    for decay in (float(v) for v in a.ema.split(",")):
        t = time.time()
        model = ScratchMLP(**params, ema_decay=decay).fit(x, y, xv, yv, **fit_kw)
        mean, sigma = model.predict(xv)
        tmean, tsigma = model.predict(xt)
        best = model.history_[model.best_epoch_ - 1]
        out["runs"][f"ema_decay_{decay:g}"] = {
            "best_epoch": int(model.best_epoch_), "epochs": len(model.history_),
            "best_val_nll": round(float(best["val_nll"]), 4), "minutes": round((time.time() - t) / 60, 1),
            **{n: round(float(label_metrics(mean[:, k], yv[:, k], sigma[:, k])["robust_scatter"]), 4)
               for k, n in enumerate(labels)},
            "test": {n: round(float(label_metrics(tmean[:, k], yt[:, k], tsigma[:, k])["robust_scatter"]), 4)
                     for k, n in enumerate(labels)}}
        print(json.dumps({f"ema_decay_{decay:g}": out["runs"][f"ema_decay_{decay:g}"]}), flush=True)
        if out_path.is_file():  # another process may have written other values meanwhile: keep them
            out["runs"] = {**json.loads(out_path.read_text()).get("runs", {}), **out["runs"]}
        out_path.write_text(json.dumps(out, indent=1) + "\n")  # after every value: a killed run keeps the others


if __name__ == "__main__":
    main()
