#!/usr/bin/env python
"""Train a 5-label emulator on a MOOG grid (CPU torch, one core, ~10-15 min): APOGEE (H band) or Gaia RVS.

    nice -n 10 .venv/bin/python scripts/train_emulator.py --config scripts/configs/emulator_apogee.yaml
    nice -n 10 .venv/bin/python scripts/train_emulator.py --config scripts/configs/emulator_gaia_rvs.yaml

What it does:
1. loads the MOOG grid (``data`` in the config: flux (N, 7514), labels (N, 5) TEFF LOGG O_FE MG_FE FE_H);
2. splits off a FIXED held-out set (``holdout_fraction``, seeded by ``split_seed``); it is never trained on
   and never used for model selection. ``--validate`` instead carves a validation set out of the training part
   (for architecture search) and writes nothing to the package;
3. builds a PCA basis of the training flux (``n_components`` rows) and trains the MLP of
   :class:`spectrafm_hf.synth.emulator.EmulatorNet` with AdamW + cosine decay on the flux MSE;
4. measures per-pixel absolute flux error pooled over the held-out spectra (median, 95th pct, max) and
   writes the weights (safetensors, basis in float16, metrics + held-out indices in the metadata) and a
   ``training_info`` JSON record (config, data file + sha256, seed, library versions, hardware, metrics).

``--set key=value`` overrides a config entry (e.g. ``--set epochs=200``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from spectrafm_hf.synth.emulator import (  # noqa: E402
    LABEL_NAMES,
    EmulatorNet,
    labels_to_features,
    load_emulator,
    save_emulator,
)
from spectrafm_hf.training.info import cpu_model  # noqa: E402
from spectrafm_hf.training.presets import read_yaml  # noqa: E402


def split_indices(n: int, holdout_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) index arrays; the same for the same (n, fraction, seed) on any machine."""
    perm = np.random.default_rng(split_seed).permutation(n)
    n_hold = int(round(holdout_fraction * n))
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def error_stats(pred: np.ndarray, true: np.ndarray) -> dict:
    e = np.abs(pred - true)
    return {"median_abs": float(np.median(e)), "p95_abs": float(np.percentile(e, 95)),
            "p99_abs": float(np.percentile(e, 99)), "max_abs": float(e.max()),
            "rms": float(np.sqrt(np.mean(e**2))), "n_spectra": int(len(true))}


def train(cfg: dict, flux_tr, lab_tr, wavelength, label_lo, label_hi, log=print) -> EmulatorNet:
    torch.manual_seed(cfg["seed"])
    ftr = torch.from_numpy(flux_tr.astype(np.float64))
    mean = ftr.mean(0)
    _, _, vt = torch.linalg.svd(ftr - mean, full_matrices=False)
    basis = vt[: cfg["n_components"]]
    coef = ((ftr - mean) @ basis.T).float()
    net = EmulatorNet(n_pixels=flux_tr.shape[1], n_components=cfg["n_components"], hidden=cfg["hidden"],
                      n_hidden=cfg["n_hidden"])
    net.basis.copy_(basis.float())
    net.mean_flux.copy_(mean.float())
    net.coef_scale.copy_(coef.std(0))
    feats = labels_to_features(torch.from_numpy(np.asarray([label_lo, label_hi], np.float32)))
    net.feature_lo.copy_(feats.min(0).values)  # theta = 5040/Teff reverses the Teff order
    net.feature_hi.copy_(feats.max(0).values)
    lab = torch.from_numpy(lab_tr.astype(np.float32))
    x = net.scaled_features(lab)
    target = coef / net.coef_scale  # the net predicts scaled coefficients
    w = (net.coef_scale**2) / flux_tr.shape[1]  # so that sum(w * dz^2) = flux MSE per pixel
    opt = torch.optim.AdamW(net.mlp.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    n, bs, epochs = len(x), cfg["batch_size"], cfg["epochs"]
    steps_per_epoch = math.ceil(n / bs)
    total, warm = epochs * steps_per_epoch, cfg["warmup_epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(warm, 1)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    g = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.time()
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        run = 0.0
        for i in range(0, n, bs):
            b = perm[i:i + bs]
            loss = ((net.mlp(x[b]) - target[b]) ** 2 * w).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run += loss.item() * len(b)
        if ep % max(1, epochs // 20) == 0 or ep == epochs - 1:
            log(f"epoch {ep:5d}  train flux rms {math.sqrt(run / n):.2e}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.time() - t0:.0f}s")
    net.eval()
    return net


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "scripts/configs/emulator_apogee.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--validate", action="store_true",
                    help="architecture search: train on 90%% of the training part, report on the other 10%%, "
                         "write nothing into the package")
    args = ap.parse_args(argv)
    cfg = read_yaml(Path(args.config).read_text())
    for kv in args.set:
        k, v = kv.split("=", 1)
        cfg[k] = read_yaml(v)
    torch.set_num_threads(int(cfg.get("threads", 1)))
    data_path = (ROOT / cfg["data"]).resolve()
    d = np.load(data_path)
    flux, labels, wavelength = d["flux"].astype(np.float32), d["labels"].astype(np.float32), d["wavelength"]
    if list(d["label_names"]) != list(LABEL_NAMES):
        raise SystemExit(f"label order {list(d['label_names'])} != {LABEL_NAMES}")
    label_lo, label_hi = labels.min(0).astype(np.float64), labels.max(0).astype(np.float64)
    tr, ho = split_indices(len(flux), cfg["holdout_fraction"], cfg["split_seed"])
    excluded = sorted(int(i) for i in (cfg.get("exclude_rows") or []))
    if excluded:
        tr, ho = np.setdiff1d(tr, excluded), np.setdiff1d(ho, excluded)
    if args.validate:
        inner_tr, inner_va = split_indices(len(tr), 0.1, cfg["split_seed"] + 1)
        tr, ho = tr[inner_tr], tr[inner_va]
    print(f"data {data_path.name}: {len(flux)} spectra, train {len(tr)}, evaluate {len(ho)}", flush=True)
    t0 = time.time()
    net = train(cfg, flux[tr], labels[tr], wavelength, label_lo, label_hi, log=lambda s: print(s, flush=True))
    train_s = time.time() - t0
    with torch.inference_mode():
        pred = net(torch.from_numpy(labels[ho])).numpy()
    stats = error_stats(pred, flux[ho])
    print(("VALIDATION " if args.validate else "HELD-OUT ") + json.dumps(stats), f"train {train_s:.0f}s", flush=True)
    if args.validate:
        return stats
    info = {
        "instrument": cfg["instrument"],
        "config": cfg,
        "data_file": str(Path(cfg["data"])),
        "data_sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(),
        "n_train": int(len(tr)),
        "n_holdout": int(len(ho)),
        "holdout_indices": [int(i) for i in ho],
        **({"excluded_rows": excluded} if excluded else {}),
        "heldout_metrics": stats,
        "metric_definition": "per-pixel |emulated - MOOG| flux, pooled over all held-out spectra and pixels",
        "train_seconds": round(train_s, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "hardware": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "machine": platform.machine()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = ROOT / cfg["output"]
    out.parent.mkdir(parents=True, exist_ok=True)
    save_emulator(out, net, wavelength, label_lo, label_hi, info)
    # round trip through the float16 basis: the metric of the SHIPPED file
    shipped = load_emulator(out)
    stats16 = error_stats(shipped(labels[ho], clip=False), flux[ho])
    info["heldout_metrics_shipped_float16"] = stats16
    save_emulator(out, net, wavelength, label_lo, label_hi, info)
    Path(ROOT / cfg["training_info"]).write_text(json.dumps(info, indent=1) + "\n")
    print("SHIPPED " + json.dumps(stats16), f"-> {out} ({out.stat().st_size / 1e6:.2f} MB)", flush=True)
    return stats16


if __name__ == "__main__":
    main()
