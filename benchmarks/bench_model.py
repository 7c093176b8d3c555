#!/usr/bin/env python
"""Model throughput on this machine, as ratios measured in one run (absolute times drift on shared machines).

    python benchmarks/bench_model.py [--quick] [--out benchmarks/results/model_cpu.json]

Measures, with the fp32 matmul rate of the same cores measured in the same run:
- one training step (forward + backward + AdamW) at the paper's settings (batch 64, 512 pixels, hidden 256,
  dropout 0.05 incl. attention-probability dropout), with the package default (the same rate of dropout acting on
  keys, which keeps the fused attention path), with attention dropout 0, and at the CPU preset
  (scripts/configs/pretrain_cpu.yaml); FLOPs counted analytically; MFU = achieved / matmul rate;
- five-label inference on full 7514-pixel APOGEE spectra: this package (all subsets of all stars batched, all labels
  decoded together) vs the paper's evaluation procedure (one star at a time, 15 subsets, one decoder call per label),
  and the FLOP limit of that work on these cores;
- peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from spectrafm_hf import SpectraFMConfig, SpectraFMModel
from spectrafm_hf.training.info import hardware, library_versions

REPO = Path(__file__).resolve().parents[1]


def forward_macs(cfg: SpectraFMConfig, n_tokens: int, n_queries: int) -> float:
    """Multiply-accumulates of one forward pass for one spectrum (bias slot included)."""
    d, L, Q = cfg.hidden_size, n_tokens, n_queries
    kv = L + (1 if cfg.add_bias_kv else 0)
    macs = 0.0
    for f in cfg.encoder_ffn_dims:
        macs += L * (4 * d * d + 2 * d * f) + 2 * L * kv * d
    for f in cfg.decoder_ffn_dims:
        macs += 2 * L * d * d + Q * (2 * d * d + 2 * d * f) + 2 * Q * kv * d
    dims = [d] + cfg.head_dims
    macs += Q * (sum(a * b for a, b in zip(dims[:-1], dims[1:])) + 2 * dims[-1])
    macs += L * d * 2  # embedding scale/shift (negligible)
    return macs


def matmul_rate(seconds=3.0, n=2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t, reps = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t)


def time_train_step(cfg, batch, n_pix, n_queries, steps):
    torch.manual_seed(0)
    model = SpectraFMModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    flux = torch.randn(batch, n_pix)
    wave = 15100 + 1800 * torch.rand(batch, n_pix)
    q = torch.arange(n_queries).expand(batch, -1)
    y = torch.randn(batch, n_queries)

    def step():
        out = model(flux, wave, query_ids=q, labels=y)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t) / steps
    flops = 3 * 2 * forward_macs(cfg, n_pix, n_queries) * batch
    return dt, flops


def paper_procedure(model, flux, wave, n_labels, ctx=512):
    """The paper's evaluation: one star at a time, a fixed permutation cut into patches, one call per label."""
    perm = np.random.default_rng(0).permutation(flux.shape[1])
    n_patches = int(np.ceil(flux.shape[1] / ctx))
    with torch.inference_mode():
        for star in range(flux.shape[0]):
            for p in range(n_patches):
                idx = torch.as_tensor(perm[p * ctx:(p + 1) * ctx])
                enc, mask, _ = model.encode(flux[star:star + 1, idx], wave[star:star + 1, idx])
                for label in range(n_labels):
                    model.decode(enc, mask, torch.tensor([[label]]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "model_cpu.json"))
    args = parser.parse_args()
    steps = 1 if args.quick else 3
    results = {"machine": {**hardware(), "versions": library_versions()}, "command": "python benchmarks/bench_model.py"}
    rate = matmul_rate()
    results["fp32_matmul_gflops"] = rate / 1e9
    print(f"fp32 2048^3 matmul: {rate / 1e9:.1f} GFLOP/s")

    paper = SpectraFMConfig()  # attention dropout 0.05 on keys (the package default)
    runs = {
        "paper_config_attention_dropout_0.05_on_probabilities": (
            SpectraFMConfig(attention_dropout_mode="probabilities"), 64, 512, 1),  # the paper's own settings
        "paper_config_attention_dropout_0.05_on_keys": (paper, 64, 512, 1),
        "paper_config_attention_dropout_0": (SpectraFMConfig(attention_dropout=0.0), 64, 512, 1),
    }
    cpu_cfg = yaml.safe_load((REPO / "scripts/configs/pretrain_cpu.yaml").read_text())
    small = SpectraFMConfig(**cpu_cfg["config_overrides"])
    runs["cpu_preset"] = (small, cpu_cfg["per_device_train_batch_size"], small.context_length, 5)
    results["train_step"] = {}
    for name, (cfg, batch, n_pix, nq) in runs.items():
        dt, flops = time_train_step(cfg, batch, n_pix, nq, steps)
        r = {"batch": batch, "pixels": n_pix, "queries": nq, "seconds_per_step": dt, "spectra_per_s": batch / dt,
             "tokens_per_s": batch * n_pix / dt, "gflop_per_step": flops / 1e9, "achieved_gflops": flops / dt / 1e9,
             "mfu_vs_matmul": flops / dt / rate}
        results["train_step"][name] = r
        print(f"train {name}: {dt:.2f} s/step, {r['spectra_per_s']:.1f} spectra/s, {r['achieved_gflops']:.1f} GFLOP/s"
              f" ({100 * r['mfu_vs_matmul']:.0f} % of matmul)")

    steps_s = {k: v["seconds_per_step"] for k, v in results["train_step"].items()}
    speedup = (steps_s["paper_config_attention_dropout_0.05_on_probabilities"]
               / steps_s["paper_config_attention_dropout_0.05_on_keys"])
    results["train_step_speedup_default_vs_paper_settings"] = speedup
    print(f"default (dropout on keys) vs the paper's settings: {speedup:.2f}x")

    # full-spectrum inference, five labels
    from spectrafm_hf import SpectraFMPipeline, SpectraFMProcessor, Spectrum
    from spectrafm_hf.grids import apogee_wavelength_7514

    model = SpectraFMModel(paper).eval()
    proc = SpectraFMProcessor(flux_center=0.95, flux_scale=0.05)
    pipe = SpectraFMPipeline(model, proc, device="cpu", batch_size=64)
    wl = apogee_wavelength_7514()
    n_stars = 4 if args.quick else 16
    rng = np.random.default_rng(0)
    spectra = [Spectrum(wavelength=wl, flux=1 - 0.1 * rng.random(wl.size)) for _ in range(n_stars)]
    pipe.predict(spectra[:1])
    t = time.perf_counter()
    pipe.predict(spectra)
    batch_dt = (time.perf_counter() - t) / n_stars
    t = time.perf_counter()
    pipe.predict(spectra[0])
    latency = time.perf_counter() - t
    flux = torch.tensor(np.stack([(s.flux - 0.95) / 0.05 for s in spectra]), dtype=torch.float32)
    wave = torch.tensor(np.stack([s.wavelength for s in spectra]), dtype=torch.float32)
    n_paper = 2 if args.quick else 4
    t = time.perf_counter()
    paper_procedure(model, flux[:n_paper], wave[:n_paper], 5)
    paper_dt = (time.perf_counter() - t) / n_paper
    subsets = int(np.ceil(wl.size / 512))
    per_star_flops = subsets * 2 * forward_macs(paper, int(np.ceil(wl.size / subsets)), 5)
    limit = per_star_flops / rate
    results["inference_full_apogee_5_labels"] = {
        "pixels": int(wl.size), "subsets_per_star": subsets,
        "package_seconds_per_star_batched": batch_dt, "package_spectra_per_s": 1 / batch_dt,
        "package_latency_one_star_s": latency, "paper_procedure_seconds_per_star": paper_dt,
        "speedup_vs_paper_procedure": paper_dt / batch_dt, "flop_limit_seconds_per_star": limit,
        "fraction_of_flop_limit": limit / batch_dt,
    }
    print(f"inference: {batch_dt:.3f} s/star batched ({1 / batch_dt:.1f} spectra/s), latency {latency:.2f} s; paper "
          f"procedure {paper_dt:.2f} s/star -> {paper_dt / batch_dt:.1f}x; FLOP limit {limit:.3f} s/star "
          f"({100 * limit / batch_dt:.0f} % of it reached)")
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["platform"] = platform.platform()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
