#!/usr/bin/env python
"""bfloat16 autocast inference vs fp32: speed and how much the predicted labels move.

    python benchmarks/bench_bf16.py [--device cpu|cuda] [--n 64] [--out benchmarks/results/bf16_<device>.json]

Predicts emulated APOGEE spectra (S/N 300, `spectrafm_hf.synth.generate`) with the embedded `spectrafm-base`, fp32
and `SpectraFMPipeline(bf16=True)` timed in turn for three rounds (best kept), and reports per label the largest and
median change against the median predicted uncertainty. On a CPU this only makes sense where the matrix products
have bf16 hardware (the bf16 matmul rate measured here is reported next to fp32).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import matmul_rate  # noqa: E402

from spectrafm_hf import SpectraFMPipeline, Spectrum  # noqa: E402
from spectrafm_hf.synth import generate  # noqa: E402
from spectrafm_hf.training.info import hardware, library_versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--n", type=int, default=64, help="spectra")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    out_path = Path(args.out or REPO / "benchmarks" / "results" / f"bf16_{device.type}.json")
    rates = {"fp32": matmul_rate(device, seconds=1.0, n=1024), "bf16": matmul_rate(device, torch.bfloat16, 1.0, 1024)}
    flux, wl, _ = generate(args.n, "apogee", seed=3, snr=300)
    spectra = [Spectrum(wavelength=wl, flux=f) for f in flux]
    pipes = {name: SpectraFMPipeline.from_pretrained("spectrafm-base", device=device, bf16=name == "bf16")
             for name in ("fp32", "bf16")}
    best, tables = {}, {}
    for name, pipe in pipes.items():
        pipe.predict(spectra[:2])  # warm-up
    for _ in range(3):
        for name, pipe in pipes.items():
            t = time.perf_counter()
            tables[name] = pipe.predict(spectra)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
    changes = {}
    for label in pipes["fp32"].label_names:
        d = (tables["bf16"][label] - tables["fp32"][label]).abs()
        changes[label] = {"max_abs_change": float(d.max()), "median_abs_change": float(d.median()),
                          "median_predicted_err": float(tables["fp32"][f"{label}_err"].median())}
        print(f"{label}: bf16 - fp32 max {d.max():.3g}, median {d.median():.3g} "
              f"(median uncertainty {changes[label]['median_predicted_err']:.3g})")
    speedup = best["fp32"] / best["bf16"]
    print(f"{args.n} full spectra: fp32 {best['fp32']:.2f} s, bf16 autocast {best['bf16']:.2f} s ({speedup:.2f}x); "
          f"matmul fp32 {rates['fp32'] / 1e9:.0f}, bf16 {rates['bf16'] / 1e9:.0f} GFLOP/s")
    results = {"machine": {**hardware(), "versions": library_versions()}, "command": " ".join(["python"] + sys.argv),
               "model": "spectrafm-base (embedded)", "spectra": args.n, "pixels": int(wl.size),
               "matmul_gflops_1024": {k: v / 1e9 for k, v in rates.items()},
               "seconds": best, "speedup_bf16": speedup, "label_changes": changes}
    out_path.write_text(json.dumps(results, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
