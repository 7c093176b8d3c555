#!/usr/bin/env python
"""Benchmark a shipped emulator (APOGEE or Gaia RVS): held-out accuracy on MOOG spectra and speed. Run by hand:

    .venv/bin/python benchmarks/bench_emulator.py            # writes benchmarks/results/emulator_apogee.json
    .venv/bin/python benchmarks/bench_emulator.py --instrument gaia_rvs   # -> benchmarks/results/emulator_gaia_rvs.json

Accuracy: per-pixel |emulate(labels) - MOOG flux| pooled over the FIXED held-out split recorded in the weights'
metadata (never trained on), overall and per label bin. Speed: ``emulate`` in batches of 1024 on ``--threads``
torch threads (and on 1), ``generate(90000)`` (clean) wall time and ``generate(..., observed=True)`` throughput.
Gap: RMS clean-vs-observed flux and a chi^2 fit of observed spectra with the clean emulator (``--gap-stars``).
APOGEE needs ../shared for the accuracy part (skipped, with a note, when absent); the Gaia RVS grid is committed
(data/grids/). Grid rows the training excluded (``excluded_rows`` in the metadata) are left out of the held-out set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from spectrafm_hf import synth  # noqa: E402

MOOG_GRIDS = {  # the grid each shipped emulator was trained on
    "apogee": ROOT.parent / "shared/data/shippable/moog_grid/moog_hband_grid.npz",
    "gaia_rvs": ROOT / "data/grids/moog_gaia_rvs_grid.npz",
}


def _stats(err: np.ndarray) -> dict:
    return {"median_abs": float(np.median(err)), "p95_abs": float(np.percentile(err, 95)),
            "p99_abs": float(np.percentile(err, 99)), "max_abs": float(err.max()), "n_spectra": int(err.shape[0])}


def accuracy(instrument: str = "apogee") -> dict:
    grid = MOOG_GRIDS[instrument]
    if not grid.exists():
        return {"note": f"{grid} absent; accuracy not measured"}
    emu = synth.get_emulator(instrument)
    hold = np.setdiff1d(emu.metadata["holdout_indices"], emu.metadata.get("excluded_rows", []))
    d = np.load(grid)
    lab, flux = d["labels"][hold], d["flux"][hold].astype(np.float32)
    err = np.abs(emu(lab, clip=False) - flux)
    teff, logg, feh = lab[:, 0], lab[:, 1], lab[:, 4]
    bins = {
        "FE_H<-1": feh < -1, "FE_H>=-1": feh >= -1,
        "giants(LOGG<3.5)": logg < 3.5, "dwarfs(LOGG>=3.5)": logg >= 3.5,
        "TEFF<4000": teff < 4000, "4000<=TEFF<5000": (teff >= 4000) & (teff < 5000), "TEFF>=5000": teff >= 5000,
    }
    per_spec_max = err.max(1)
    worst = int(np.argmax(per_spec_max))
    return {
        "definition": f"per-pixel |emulated - MOOG| normalised flux, pooled over held-out spectra x {emu.n_pixels} "
                      "pixels",
        "data": str(grid.relative_to(ROOT) if grid.is_relative_to(ROOT) else grid.relative_to(ROOT.parent)),
        "overall": _stats(err),
        "per_bin": {k: _stats(err[m]) for k, m in bins.items() if m.any()},
        "per_spectrum_rms_median": float(np.median(np.sqrt((err**2).mean(1)))),
        "worst_spectrum": {"labels": lab[worst].tolist(), "max_abs": float(per_spec_max[worst])},
        "goal": {"median_abs": 0.005, "p95_abs": 0.02},
    }


def speed(threads: int, n_generate: int, instrument: str = "apogee") -> dict:
    torch.set_num_threads(threads)
    lab = synth.sample_labels(1024 * 20, seed=0, instrument=instrument)
    emu = synth.get_emulator(instrument)
    emu(lab[:1024], batch_size=1024)  # warm-up
    t = time.perf_counter()
    emu(lab, batch_size=1024)
    dt = time.perf_counter() - t
    out = {"threads": threads, "emulate_batch": 1024, "emulate_spectra_per_s": round(lab.shape[0] / dt, 1),
           "emulate_goal_per_s": 5000}
    torch.set_num_threads(1)
    t = time.perf_counter()
    emu(lab, batch_size=1024)
    out["emulate_spectra_per_s_1_thread"] = round(lab.shape[0] / (time.perf_counter() - t), 1)
    torch.set_num_threads(threads)
    t = time.perf_counter()
    s = synth.generate(n_generate, seed=0, instrument=instrument)
    out[f"generate_{n_generate}_clean_s"] = round(time.perf_counter() - t, 2)
    out["generate_goal_s"] = 60
    del s
    n_obs = 5000
    t = time.perf_counter()
    synth.generate(n_obs, seed=0, observed=True, instrument=instrument)
    out["generate_observed_spectra_per_s"] = round(n_obs / (time.perf_counter() - t), 1)
    return out


def gap(n: int, seed: int = 42, instrument: str = "apogee") -> dict:
    """Size of the synthetic-to-real gap: RMS flux differences and a chi^2 fit of the observed spectra with the
    CLEAN emulator (the best a model trained on clean spectra can do), vs the same fit at gap strength 0."""
    from scipy.optimize import least_squares

    from spectrafm_hf.synth import realism

    spec = synth.get_instrument(instrument)
    emu = synth.get_emulator(spec)
    clean = synth.generate(n, seed=seed, instrument=spec)
    out = {"n_stars": n, "seed": seed, "fit": "scipy least_squares on all 5 labels, ivar-weighted, start "
                                              "(4800, 2.5, 0.1, 0.1, -0.2), bounds = emulator box"}
    gapped, _ = realism.apply_physics_gap(clean.flux, clean.labels.astype(float), spec, np.random.default_rng(seed))
    out["rms_physics_gap_noiseless"] = float(np.sqrt(np.mean((gapped - clean.flux) ** 2)))
    out["mean_depth_ratio_physics_gap"] = float((1 - gapped).mean() / (1 - clean.flux).mean())
    scale = np.array([1000, 1, 0.3, 0.3, 0.5])
    x0 = np.array([4800, 2.5, 0.1, 0.1, -0.2])
    for strength in (1.0, 0.0):
        obs = synth.generate(n, seed=seed, observed=True, gap_strength=strength, instrument=spec)
        if strength == 1.0:
            out["rms_observed_vs_clean"] = float(np.sqrt(np.nanmean((obs.flux - clean.flux) ** 2)))
            out["masked_fraction"] = float((~obs.mask).mean())
        diffs = []
        for i in range(n):
            m = obs.mask[i]
            w = np.sqrt(obs.ivar[i, m])
            res = least_squares(lambda z: (emu(z * scale)[m] - obs.flux[i, m]) * w, x0 / scale,
                                bounds=(emu.label_lo / scale, emu.label_hi / scale), diff_step=1e-3)
            diffs.append(res.x * scale - obs.true_labels[i])
        d = np.array(diffs)
        out[f"chi2_fit_strength_{strength:g}"] = {
            "bias": dict(zip(synth.LABEL_NAMES, d.mean(0).round(4).tolist())),
            "rmse": dict(zip(synth.LABEL_NAMES, np.sqrt((d**2).mean(0)).round(4).tolist()))}
    return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "load_average_1_5_15min_at_start": list(os.getloadavg()),
            "note": "shared 2-core VM; other engineers' jobs (e.g. MOOG runs) were running during the measurement"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-generate", type=int, default=90000)
    ap.add_argument("--gap-stars", type=int, default=200, help="stars for the gap measurement (0 = skip)")
    ap.add_argument("--instrument", default="apogee", choices=sorted(MOOG_GRIDS))
    ap.add_argument("--out", default=None, help="default: benchmarks/results/emulator_<instrument>.json")
    args = ap.parse_args(argv)
    out = Path(args.out or ROOT / f"benchmarks/results/emulator_{args.instrument}.json")
    spec = synth.get_instrument(args.instrument)
    emu = synth.get_emulator(spec)
    mach = machine()
    res = {
        "instrument": spec.name,
        "emulator": spec.emulator_file,
        "architecture": emu.metadata["config"] | {"n_parameters_mlp": sum(p.numel() for p in emu.net.mlp.parameters())},
        "file_size_bytes": synth.realism.resource_path(spec.emulator_file).stat().st_size,
        "accuracy_heldout": accuracy(spec.name),
        "speed": speed(args.threads, args.n_generate, spec.name),
        "synthetic_to_real_gap": gap(args.gap_stars, instrument=spec.name) if args.gap_stars else None,
        "machine": mach,
        "command": "python benchmarks/bench_emulator.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
