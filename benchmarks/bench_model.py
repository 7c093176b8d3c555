#!/usr/bin/env python
"""Model throughput on this machine, as ratios measured in one run (absolute times drift on shared machines).

    python benchmarks/bench_model.py [--quick] [--device cpu|cuda] [--out benchmarks/results/model_<device>.json]

Measures, with the fp32 matmul rate of the same cores measured in the same run:
- one training step (forward + backward + AdamW) at the paper's settings (batch 64, 512 pixels, hidden 256,
  dropout 0.05 incl. attention-probability dropout), with the package default (the same rate of dropout acting on
  keys, which keeps the fused attention path), with attention dropout 0, and at the CPU preset
  (scripts/configs/pretrain_cpu.yaml); FLOPs counted analytically; MFU = achieved / matmul rate;
- five-label inference on full 7514-pixel APOGEE spectra: this package (all subsets of all stars batched, all labels
  decoded together) vs the paper's evaluation procedure (one star at a time, 15 subsets, one decoder call per label),
  and the FLOP limit of that work on these cores;
- peak resident memory.

Every time is the best of a few repetitions (the least disturbed one on a shared machine). On a CPU with bf16 matmul
hardware (measured faster than fp32 in the same run) the package-default step is also timed under bf16 autocast. With
``--device cuda`` the rates are the card's bf16 matmul rate and steps run under bf16 autocast (batch 64 as in the
paper, and batch 1024, which a GPU needs to fill).
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

from spectrafm_hf import SpectraFMConfig, SpectraFMModel
from spectrafm_hf.training.info import hardware, library_versions
from spectrafm_hf.training.presets import read_yaml

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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device=torch.device("cpu"), dtype=torch.float32, seconds=3.0, n=2048) -> float:
    """Best FLOP/s of an n^3 matrix product over `seconds` (one product per timing)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def train_step_fn(cfg, batch, n_pix, n_queries, device=torch.device("cpu"), amp_dtype=None):
    """A closure running one training step (forward, loss, backward, AdamW) on a fixed random batch; its FLOPs."""
    torch.manual_seed(0)
    model = SpectraFMModel(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    flux = torch.randn(batch, n_pix, device=device)
    wave = 15100 + 1800 * torch.rand(batch, n_pix, device=device)
    q = torch.arange(n_queries, device=device).expand(batch, -1)
    y = torch.randn(batch, n_queries, device=device)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(flux, wave, query_ids=q, labels=y)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, 3 * 2 * forward_macs(cfg, n_pix, n_queries) * batch


def time_train_step(cfg, batch, n_pix, n_queries, steps, device=torch.device("cpu"), amp_dtype=None):
    """Best seconds of one training step over `steps` after a warm-up; and its FLOPs."""
    step, flops = train_step_fn(cfg, batch, n_pix, n_queries, device, amp_dtype)
    step()  # warm-up
    return best_time(step, steps, device), flops


def best_time(fn, repeats, device=torch.device("cpu")):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def paper_procedure(model, flux, wave, n_labels, ctx=512):
    """The paper's evaluation: one star at a time, a fixed permutation cut into patches, one call per label."""
    perm = np.random.default_rng(0).permutation(flux.shape[1])
    n_patches = int(np.ceil(flux.shape[1] / ctx))
    with torch.inference_mode():
        for star in range(flux.shape[0]):
            for p in range(n_patches):
                idx = torch.as_tensor(perm[p * ctx:(p + 1) * ctx], device=flux.device)
                enc, mask, _ = model.encode(flux[star:star + 1, idx], wave[star:star + 1, idx])
                for label in range(n_labels):
                    model.decode(enc, mask, torch.tensor([[label]], device=flux.device))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None, help="default: benchmarks/results/model_<device>.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    gpu = device.type == "cuda"
    out_path = Path(args.out or REPO / "benchmarks" / "results" / f"model_{device.type}.json")
    steps = (2 if args.quick else 3) * (10 if gpu else 1)
    command = "python benchmarks/bench_model.py" + (" --quick" * args.quick) + (" --device cuda" * gpu)
    results = {"machine": {**hardware(), "versions": library_versions()}, "command": command}

    rate = matmul_rate(device, n=8192 if gpu else 2048)
    results["fp32_matmul_gflops"] = rate / 1e9
    print(f"fp32 matmul: {rate / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} CPU threads)")
    # bf16: the GPU's working precision; on a CPU only where it has bf16 matmul hardware (elsewhere ~400x slower)
    bf16_rate = matmul_rate(device, torch.bfloat16, seconds=1.0, n=8192 if gpu else 512)
    results["bf16_matmul_gflops"] = bf16_rate / 1e9
    print(f"bf16 matmul: {bf16_rate / 1e9:.1f} GFLOP/s")
    amp = torch.bfloat16 if gpu else None
    ref_rate = bf16_rate if gpu else rate  # MFU is against the precision the step computes in

    paper = SpectraFMConfig()  # attention dropout 0.05 on keys (the package default)
    runs = {
        "paper_config_attention_dropout_0.05_on_probabilities": (
            SpectraFMConfig(attention_dropout_mode="probabilities"), 64, 512, 1, amp),  # the paper's own settings
        "paper_config_attention_dropout_0.05_on_keys": (paper, 64, 512, 1, amp),
        "paper_config_attention_dropout_0": (SpectraFMConfig(attention_dropout=0.0), 64, 512, 1, amp),
    }
    if gpu:
        runs["paper_config_batch_1024"] = (paper, 1024, 512, 1, amp)
    else:
        cpu_cfg = read_yaml((REPO / "scripts/configs/pretrain_cpu.yaml").read_text())
        small = SpectraFMConfig(**cpu_cfg["config_overrides"])
        runs["cpu_preset"] = (small, cpu_cfg["per_device_train_batch_size"], small.context_length, 5, None)
        if bf16_rate > rate:
            runs["paper_config_attention_dropout_0.05_on_keys_bf16_autocast"] = (paper, 64, 512, 1, torch.bfloat16)
    results["train_step"] = {}
    for name, (cfg, batch, n_pix, nq, dtype) in runs.items():
        dt, flops = time_train_step(cfg, batch, n_pix, nq, steps, device, dtype)
        peak = bf16_rate if dtype is not None else rate
        r = {"batch": batch, "pixels": n_pix, "queries": nq, "precision": "bf16 autocast" if dtype else "fp32",
             "seconds_per_step": dt, "spectra_per_s": batch / dt, "tokens_per_s": batch * n_pix / dt,
             "gflop_per_step": flops / 1e9, "achieved_gflops": flops / dt / 1e9, "mfu_vs_matmul": flops / dt / peak}
        results["train_step"][name] = r
        print(f"train {name}: {dt:.3f} s/step, {r['spectra_per_s']:.1f} spectra/s, {r['achieved_gflops']:.1f} GFLOP/s"
              f" ({100 * r['mfu_vs_matmul']:.0f} % of the {r['precision'].split()[0]} matmul rate)")

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
    pipe = SpectraFMPipeline(model, proc, device=device)  # default subsets per forward pass
    wl = apogee_wavelength_7514()
    n_stars = (64 if gpu else 4) * (1 if args.quick else 2)
    rng = np.random.default_rng(0)
    spectra = [Spectrum(wavelength=wl, flux=1 - 0.1 * rng.random(wl.size)) for _ in range(n_stars)]
    repeats = 2 if args.quick else 3
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        pipe.predict(spectra[:1])  # warm-up
        batch_dt = best_time(lambda: pipe.predict(spectra), repeats, device) / n_stars
        latency = best_time(lambda: pipe.predict(spectra[0]), repeats, device)
        sweep, default_size = {}, pipe.batch_size
        for size in sorted({default_size, 64, 256}):  # what the default batch size buys
            pipe.batch_size = size
            sweep[size] = best_time(lambda: pipe.predict(spectra), repeats, device) / n_stars
        pipe.batch_size = default_size
    print("seconds per star by subsets per forward pass: " + ", ".join(f"{k}: {v:.3f}" for k, v in sweep.items()))
    flux = torch.tensor(np.stack([(s.flux - 0.95) / 0.05 for s in spectra[:2]]), dtype=torch.float32, device=device)
    wave = torch.tensor(np.stack([s.wavelength for s in spectra[:2]]), dtype=torch.float32, device=device)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        paper_dt = best_time(lambda: paper_procedure(model, flux, wave, 5), repeats, device) / 2
    subsets = int(np.ceil(wl.size / 512))
    per_star_flops = subsets * 2 * forward_macs(paper, int(np.ceil(wl.size / subsets)), 5)
    limit = per_star_flops / ref_rate
    results["inference_full_apogee_5_labels"] = {
        "pixels": int(wl.size), "subsets_per_star": subsets, "stars": n_stars,
        "precision": "bf16 autocast" if amp else "fp32",
        "package_batch_size": pipe.batch_size, "seconds_per_star_by_batch_size": sweep,
        "package_seconds_per_star_batched": batch_dt, "package_spectra_per_s": 1 / batch_dt,
        "package_latency_one_star_s": latency, "paper_procedure_seconds_per_star": paper_dt,
        "speedup_vs_paper_procedure": paper_dt / batch_dt, "flop_limit_seconds_per_star": limit,
        "fraction_of_flop_limit": limit / batch_dt,
    }
    print(f"inference: {batch_dt:.4f} s/star batched ({1 / batch_dt:.1f} spectra/s), latency {latency:.3f} s; paper "
          f"procedure {paper_dt:.3f} s/star -> {paper_dt / batch_dt:.1f}x; FLOP limit {limit:.4f} s/star "
          f"({100 * limit / batch_dt:.0f} % of it reached)")
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if gpu:
        results["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    results["platform"] = platform.platform()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
