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

``--fewshot`` asks the same of xp_fewshot's scratch network (``scratch_nn``: the paper's recipe in
``xp_fewshot.baselines.mlp``), fitted on each draw's 100 metal-rich stars and validated on the metal-rich validation
stars ([Fe/H] only), as xp_fewshot fits it; its ``test`` holds the metal-poor and whole-set RMSE (~1 min per draw):

    OMP_NUM_THREADS=1 python benchmarks/xp_weight_average.py --fewshot
        --out benchmarks/results/xp_weight_average_scratch_nn.json
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
    p.add_argument("--size", default="all", help="training stars: all, or one of xp_full.sizes")
    p.add_argument("--ema", default="0,0.999", help="ema_decay values (0 = no averaging)")
    p.add_argument("--seed", type=int, default=None, help="the MLP's training seed (default: ScratchMLP.fit's)")
    p.add_argument("--fewshot", action="store_true", help="xp_fewshot's scratch network instead of xp_full's MLP")
    p.add_argument("--student_t_dof", type=float, default=0.0,
                   help="train on a Student-t likelihood with these degrees of freedom (ScratchMLP's student_t_dof; "
                        "0 = the Gaussian NLL); its runs are named ..._student_t<dof>")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/xp_weight_average_mlp.json"))
    p.add_argument("--predictions", help="also write each fit's validation and test predictions here "
                                         "(<split>_ema<decay>.csv: object_id, <label>_pred, <label>_sigma)")
    a = p.parse_args(argv)
    cfg = read_yaml(Path(a.config).read_text())
    if a.fewshot:
        return fewshot(cfg, [float(v) for v in a.ema.split(",")], Path(a.out))
    e = cfg["xp_full"]
    size = None if a.size == "all" else int(a.size)
    params = real_data.per_size_params(e["baselines"]["mlp"], e["sizes"].index(size))
    params.pop("ema_decay", None)  # the preset's value; --ema sets it here
    fit_kw = {k: params.pop(k) for k in ("epochs", "eval_every", "patience") if k in params}
    if a.seed is not None:
        fit_kw["seed"] = a.seed
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
    if a.student_t_dof:
        params["student_t_dof"] = a.student_t_dof
    suffix = f"_student_t{a.student_t_dof:g}" if a.student_t_dof else ""
    for decay in (float(v) for v in a.ema.split(",")):
        t = time.time()
        model = ScratchMLP(**params, ema_decay=decay).fit(x, y, xv, yv, **fit_kw)
        mean, sigma = model.predict(xv)
        tmean, tsigma = model.predict(xt)
        best = model.history_[model.best_epoch_ - 1]
        if a.predictions:
            for name, ds, (m, sg) in (("validation", val, (mean, sigma)), ("test", test, (tmean, tsigma))):
                write_predictions(Path(a.predictions) / f"{name}_ema{decay:g}{suffix}.csv", ds["object_id"], labels,
                                  m, sg)
        out["runs"][f"ema_decay_{decay:g}{suffix}"] = {
            "best_epoch": int(model.best_epoch_), "epochs": len(model.history_),
            "best_val_nll": round(float(best["val_nll"]), 4), "minutes": round((time.time() - t) / 60, 1),
            **{n: round(float(label_metrics(mean[:, k], yv[:, k], sigma[:, k])["robust_scatter"]), 4)
               for k, n in enumerate(labels)},
            "test": {n: round(float(label_metrics(tmean[:, k], yt[:, k], tsigma[:, k])["robust_scatter"]), 4)
                     for k, n in enumerate(labels)}}
        print(json.dumps({f"ema_decay_{decay:g}{suffix}": out["runs"][f"ema_decay_{decay:g}{suffix}"]}), flush=True)
        if out_path.is_file():  # another process may have written other values meanwhile: keep them
            out["runs"] = {**json.loads(out_path.read_text()).get("runs", {}), **out["runs"]}
        out_path.write_text(json.dumps(out, indent=1) + "\n")  # after every value: a killed run keeps the others


def write_predictions(path: Path, object_ids, labels, mean, sigma):
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"object_id": list(object_ids), **{f"{n}_pred": mean[:, k] for k, n in enumerate(labels)},
                  **{f"{n}_sigma": sigma[:, k] for k, n in enumerate(labels)}}).to_csv(path, index=False)


def fewshot(cfg, decays, out_path: Path):
    """xp_fewshot's scratch network at each decay, every draw: validation NLL (the choice) and test RMSE."""
    e = cfg["xp_fewshot"]
    min_feh = float(e.get("min_feh", -1.0))
    train, val, test = real_data.load_splits(cfg)
    val_rich = select_stars(val, {"FE_H": [min_feh, None]}, None, 0)
    xv, yv = real_data.flux_matrix(val_rich), np.asarray(val_rich["FE_H"], np.float64)[:, None]
    xt, yt = real_data.flux_matrix(test), np.asarray(test["FE_H"], np.float64)
    params = dict(e["baselines"]["mlp"])
    params.pop("ema_decay", None)
    fit_kw = {k: params.pop(k) for k in ("epochs", "eval_every", "seed") if k in params}
    runs = {}
    for decay in decays:
        per_draw = {}
        for draw in e.get("draws", [77]):
            few = select_stars(train, {"FE_H": [min_feh, None]}, int(e["n_stars"]), int(draw))
            x, y = real_data.flux_matrix(few), np.asarray(few["FE_H"], np.float64)[:, None]
            model = ScratchMLP(**params, ema_decay=decay).fit(x, y, xv, yv, **fit_kw)
            mean, sigma = (np.asarray(v, np.float64).reshape(-1) for v in model.predict(xt))
            rmse = {split: round(float(label_metrics(mean[m], yt[m], sigma[m])["rmse"]), 4)
                    for split, m in (("rmse_feh_lt_-1", yt < min_feh), ("rmse_all", slice(None)))}
            per_draw[str(draw)] = {"best_epoch": int(model.best_epoch_),
                                   "best_val_nll": round(float(model.history_[model.best_epoch_ - 1]["val_nll"]), 4),
                                   "test": rmse}
        runs[f"ema_decay_{decay:g}"] = {
            "mean_best_val_nll": round(float(np.mean([d["best_val_nll"] for d in per_draw.values()])), 4),
            "test_mean": {k: round(float(np.mean([d["test"][k] for d in per_draw.values()])), 4)
                          for k in ("rmse_feh_lt_-1", "rmse_all")},
            "draws": per_draw}
        print(json.dumps({f"ema_decay_{decay:g}": runs[f"ema_decay_{decay:g}"]}), flush=True)
    out_path.write_text(json.dumps({"experiment": "xp_fewshot", "model": "scratch_nn", "n_stars": int(e["n_stars"]),
                                    "validation": f"[Fe/H] > {min_feh} validation stars ({len(val_rich)})",
                                    "mlp": {**params, **fit_kw}, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
