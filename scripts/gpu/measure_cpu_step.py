#!/usr/bin/env python
"""Training-step time of the paper-size network on this CPU, and the GPU time it projects to from FLOPs.

    OMP_NUM_THREADS=1 python scripts/gpu/measure_cpu_step.py [--batch 8] [--steps 3] [--threads 1] [--out FILE]

One training step = forward + Gaussian-NLL loss + backward + AdamW on a batch of 512-pixel subsets with the five
label queries (`benchmarks/bench_model.time_train_step`, best of ``--steps`` after a warm-up). FLOPs per step =
3 x 2 x the analytic multiply-accumulates of one forward pass (`benchmarks/bench_model.forward_macs`, checked
against torch's FLOP counter in tests/test_benchmarks.py). Also times the device-side data path
(`SyntheticStream.batch`: emulator, noise, pseudo-continuum, augmentation, pixel sampling) on this CPU. The
projection: spectra per second on an H200 = peak bf16 dense FLOP/s x MFU / FLOPs per spectrum, at MFU 30 % and 40 %.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

H200_BF16_DENSE = 989.5e12  # NVIDIA H200 SXM, bf16 dense tensor-core peak FLOP/s


def main(argv=None):
    from bench_model import time_train_step

    from spectrafm_hf import SpectraFMConfig, SpectraFMProcessor, synth
    from spectrafm_hf.synth.augment import RealismAugment
    from spectrafm_hf.training.info import cpu_model
    from spectrafm_hf.training.synthetic_stream import SyntheticStream

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data_batch", type=int, default=256)
    p.add_argument("--stage1_seconds", type=float, default=280.0, help="stage-1 time box of the GPU preset")
    p.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = SpectraFMConfig()  # the paper's network
    n_params = sum(t.numel() for t in __import__("spectrafm_hf").SpectraFMModel(cfg).parameters())
    step_s, step_flops = time_train_step(cfg, args.batch, 512, 5, args.steps)
    per_spectrum = step_flops / args.batch
    # the device-side data path, on this CPU
    labels = synth.sample_labels(20000, seed=0)
    proc = SpectraFMProcessor(context_length=512).fit_labels(labels.astype(np.float64))
    stream = SyntheticStream(proc, list(synth.LABEL_NAMES), list(range(5)), labels, snr=(150, 400),
                             window_prob=0.5, window_width=(64, 7514), augment=RealismAugment(prob=0.5))
    stream.batch(args.data_batch)
    t = time.perf_counter()
    for _ in range(3):
        stream.batch(args.data_batch)
    data_s = (time.perf_counter() - t) / 3
    out = {
        "command": "OMP_NUM_THREADS=1 python scripts/gpu/measure_cpu_step.py " + " ".join(argv or sys.argv[1:]),
        "cpu": cpu_model(), "load_average_1min": os.getloadavg()[0], "torch_threads": args.threads,
        "torch": torch.__version__,
        "parameters": n_params, "context_length": 512, "queries": 5, "batch": args.batch,
        "cpu_train_step_s": step_s, "cpu_train_spectra_per_s": args.batch / step_s,
        "flops_per_spectrum_train": per_spectrum, "cpu_achieved_gflops": step_flops / step_s / 1e9,
        "cpu_data_batch": args.data_batch, "cpu_data_spectra_per_s": args.data_batch / data_s,
        "h200_bf16_dense_peak_flops": H200_BF16_DENSE, "projection": {},
    }
    for mfu in (0.30, 0.40):
        rate = H200_BF16_DENSE * mfu / per_spectrum
        out["projection"][f"mfu_{int(mfu * 100)}"] = {
            "spectra_per_s": rate, "speedup_over_this_cpu": rate / out["cpu_train_spectra_per_s"],
            "stage1_spectra_in_time_box": rate * args.stage1_seconds,
            "seconds_for_paper_stage1_29.9M_spectra": 29.9e6 / rate,
            "step_ms_at_batch_1024": 1024 / rate * 1e3}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
