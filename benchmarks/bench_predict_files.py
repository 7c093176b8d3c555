#!/usr/bin/env python
"""`spectrafm predict` over a folder of many files: one prediction per file vs files sharing forward passes.

    python benchmarks/bench_predict_files.py [--out benchmarks/results/predict_files_cpu.json]

Writes folders of single-spectrum npz files (normalised flux on the APOGEE grid: short 300-pixel pieces and full
7514-pixel spectra), runs the command on each with the embedded `spectrafm-base` as it ships
(`SPECTRA_PER_PREDICTION` spectra per prediction) and with one prediction per file (the behaviour before), and
reports files/s (the better of two runs each). Rows are checked to agree between the two.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spectrafm_hf import cli
from spectrafm_hf.grids import apogee_wavelength_7514
from spectrafm_hf.training.info import hardware, library_versions

REPO = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, n_files: int, n_pixels: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    wl = apogee_wavelength_7514()
    for i in range(n_files):
        start = rng.integers(0, wl.size - n_pixels + 1)
        np.savez(folder / f"s{i:05d}.npz", wavelength=wl[start:start + n_pixels],
                 flux=1 - 0.1 * rng.random(n_pixels), object_id=f"star{i}")


def run(folder: Path, out: Path, spectra_per_prediction: int) -> float:
    cli.SPECTRA_PER_PREDICTION = spectra_per_prediction
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["predict", str(folder), "-o", str(out), "--quiet"])
    if code != 0:
        raise SystemExit(f"spectrafm predict {folder} exited with {code}")
    return time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "predict_files_cpu.json"))
    args = parser.parse_args()
    shipped = cli.SPECTRA_PER_PREDICTION
    results = {"machine": {**hardware(), "versions": library_versions()},
               "command": "python benchmarks/bench_predict_files.py", "model": "spectrafm-base (embedded)",
               "spectra_per_prediction": shipped, "folders": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, n_files, n_pixels in [("300_pixel_pieces", 512, 300), ("full_7514_pixel_spectra", 64, 7514)]:
            folder = Path(tmp) / name
            make_folder(folder, n_files, n_pixels)
            run(folder, Path(tmp) / "warm.csv", shipped)  # warm-up: model load, first forward
            per_file = min(run(folder, Path(tmp) / f"{name}_per_file.csv", 1) for _ in range(2))
            grouped = min(run(folder, Path(tmp) / f"{name}_grouped.csv", shipped) for _ in range(2))
            a, b = (pd.read_csv(Path(tmp) / f"{name}_{k}.csv") for k in ("per_file", "grouped"))
            diff = float(np.max(np.abs(a["FE_H"].to_numpy() - b["FE_H"].to_numpy())))
            results["folders"][name] = {
                "files": n_files, "pixels_per_file": n_pixels, "one_prediction_per_file_s": per_file,
                "grouped_s": grouped, "files_per_s_grouped": n_files / grouped, "speedup": per_file / grouped,
                "max_abs_fe_h_difference": diff}
            print(f"{name}: {n_files} files, one prediction per file {per_file:.1f} s, grouped {grouped:.1f} s "
                  f"({per_file / grouped:.1f}x, {n_files / grouped:.0f} files/s); max |d[Fe/H]| {diff:.1e}")
    cli.SPECTRA_PER_PREDICTION = shipped
    results["torch_threads"] = torch.get_num_threads()
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
