#!/usr/bin/env python
"""How many pixel permutations should prediction average (`pipe.predict(..., n_repeats=N)`)? Measured on the
reproduction's metal-rich VALIDATION stars (never the test set) with its stage-3 model, in the [Fe/H] window: RMSE,
bias, 68 % coverage and the Gaussian negative log-likelihood per N, and the seconds per star. The reproduction's
``predict.n_repeats`` (scripts/configs/reproduce_cpu.yaml) is the smallest N whose NLL is within ``--tolerance`` (0.01)
of the lowest: the cost grows linearly with N while the gain shrinks.

    OMP_NUM_THREADS=1 python benchmarks/predict_repeats.py [--model runs/reproduce_cpu/stage3/final]
        [--repeats 1 2 4 8 16]

Writes benchmarks/results/predict_repeats.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from spectrafm_hf.training.presets import read_yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "scripts/configs/reproduce_cpu.yaml"))
    parser.add_argument("--model", default=str(REPO / "runs/reproduce_cpu/stage3/final"))
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--tolerance", type=float, default=0.01, help="NLL within this of the lowest is as good")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/predict_repeats.json"))
    args = parser.parse_args(argv)

    import reproduce_paper as rp
    from spectrafm_hf.data import load_spectra_dataset
    from spectrafm_hf.training.metrics import label_metrics
    from spectrafm_hf.training.run import DataArguments, _window, select_stars

    cfg = read_yaml(Path(args.config).read_text())
    # the reproduction's validation stars: the observed-domain validation split without any metal-poor star
    dsd = load_spectra_dataset("observed_apogee", cache_dir=str(REPO / cfg["dataset_cache_dir"]), **cfg["observed"])
    val = select_stars(dsd["validation"], {"FE_H": [float(cfg["stage3_min_feh"]), None]}, None, 0)
    val = val.select(range(min(len(val), int(cfg.get("max_validation_stars") or len(val)))))
    lo, hi = _window(DataArguments(pixel_range=list(cfg["fe_pixel_range"])))
    truth = np.asarray(val["FE_H"], np.float64)
    rows = []
    for n in args.repeats:
        t = time.time()
        pred = rp.predict_spectrafm(Path(args.model), val, lo, hi, {**(cfg.get("predict") or {}), "n_repeats": n})
        mean, sigma = pred.FE_H_pred.to_numpy(), pred.FE_H_sigma.to_numpy()
        m = label_metrics(mean, truth, sigma)
        nll = float(np.mean(0.5 * ((mean - truth) / sigma) ** 2 + np.log(sigma) + 0.5 * np.log(2 * np.pi)))
        rows.append({"n_repeats": n, "rmse": m["rmse"], "bias": m["bias"], "coverage68": m["coverage68"], "nll": nll,
                     "seconds_per_star": (time.time() - t) / len(val)})
        print(json.dumps(rows[-1]), flush=True)
    lowest = min(r["nll"] for r in rows)
    chosen = min(r["n_repeats"] for r in rows if r["nll"] <= lowest + args.tolerance)
    out = {"model": args.model, "n_validation_stars": len(val), "window_A": [lo, hi], "rows": rows,
           "lowest_nll_n_repeats": min(rows, key=lambda r: r["nll"])["n_repeats"], "tolerance": args.tolerance,
           "chosen_n_repeats": chosen}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"chosen n_repeats={chosen} (NLL within {args.tolerance} of the lowest): {args.out}")


if __name__ == "__main__":
    main()
