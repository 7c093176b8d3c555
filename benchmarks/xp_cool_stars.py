#!/usr/bin/env python
"""Where on the test split does each XP model lose? Robust scatter by Teff and by the pixels the flux clip hides.

xp_full with every training star: the per-pixel flux normalisation (median / MAD-std of each XP pixel, fitted as the
recipe fits it) puts the red end of cool stars' spectra tens of sigma out, and a +-``--clip`` sigma clip makes those
pixels missing. Each test star is put in a Teff bin and a bin of how many of its pixels that clip hides; each model's
test predictions (``scripts/real_data.py``'s cached ``predictions/xp_full_n28643_<model>.csv``, test-split order) are
scored per bin (robust scatter, as the table's). A model folder instead of a CSV is predicted here, on
``--split`` (``validation``: what a choice is made on; ``test``: read after it).

    python benchmarks/xp_cool_stars.py \\
        --runs spectrafm=runs/real_xp_cpu_v5/predictions/xp_full_n28643_spectrafm.csv \\
        --runs mlp=runs/real_xp_cpu_v5/predictions/xp_full_n28643_mlp.csv \\
        --out benchmarks/results/xp_cool_stars.json
    python benchmarks/xp_cool_stars.py --split validation --runs v5=runs/real_xp_cpu_v5/xp_full/n28643/final
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import real_data  # noqa: E402
from spectrafm_hf.training.metrics import label_metrics  # noqa: E402
from spectrafm_hf.training.presets import load_preset  # noqa: E402
from spectrafm_hf.training.run import ModelArguments, build_model  # noqa: E402

TEFF_BINS = [(3000, 4000), (4000, 5000), (5000, 7000)]
HIDDEN_BINS = [(0, 1), (1, 60), (60, 344)]  # pixels of 343 the clip hides


def hidden_pixels(cfg, train, test, clip: float) -> np.ndarray:
    """Per star of ``test``, the usable pixels a fresh recipe processor with a +-``clip`` sigma clip treats as missing."""
    recipe = cfg["spectrafm"]
    args = ModelArguments(config_overrides=dict(recipe["config_overrides"]), clip_sigma=clip,
                          flux_normalization=recipe["flux_normalization"], divide_by_median=recipe["divide_by_median"])
    _, proc = build_model(args, train, list(cfg["labels"]))
    rows = test.with_format("numpy")
    out = []
    for w, f, iv in zip(rows["wavelength"], rows["flux"], rows["ivar"]):
        usable = np.isfinite(f) & (np.asarray(iv) > 0)
        out.append(int(usable.sum() - proc.normalize_arrays(w, f, usable)[1].sum()))
    return np.array(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    ap.add_argument("--runs", action="append", required=True, metavar="MODEL=PATH",
                    help="test predictions (CSV) or a model folder, predicted on --split (repeatable)")
    ap.add_argument("--split", choices=["test", "validation"], default="test")
    ap.add_argument("--clip", type=float, default=10.0, help="the clip whose hidden pixels are counted")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    cfg = load_preset(a.config, [])
    labels = list(cfg["labels"])
    train, validation, test = real_data.load_splits(cfg)
    test = validation if a.split == "validation" else test
    truth = real_data.frame(test, labels)
    hidden = hidden_pixels(cfg, train, test, a.clip)
    teff = truth["TEFF"].to_numpy()
    bins = {"all": np.ones(len(truth), bool)}
    bins.update({f"teff_{lo}_{hi}": (teff >= lo) & (teff < hi) for lo, hi in TEFF_BINS})
    bins.update({f"hidden_{lo}_{hi - 1}": (hidden >= lo) & (hidden < hi) for lo, hi in HIDDEN_BINS})
    out = {"split": a.split, "clip_sigma": a.clip, "n_stars": {k: int(m.sum()) for k, m in bins.items()},
           "hidden_pixels_mean": {k: round(float(hidden[m].mean()), 1) for k, m in bins.items()}, "models": {}}
    for spec in a.runs:
        model, path = spec.split("=", 1)
        if Path(path).is_dir():
            pred = real_data.predict_spectrafm(path, real_data.fm_data(cfg, test), labels)
        else:
            pred = pd.read_csv(path)
        if len(pred) != len(truth):
            raise ValueError(f"{path}: {len(pred)} predictions for {len(truth)} {a.split} stars")
        out["models"][model] = {
            k: {n: round(label_metrics(pred[f"{n}_pred"].to_numpy()[m], truth[n].to_numpy()[m],
                                       pred[f"{n}_sigma"].to_numpy()[m])["robust_scatter"], 4) for n in labels}
            for k, m in bins.items()}
    text = json.dumps(out, indent=1) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
