#!/usr/bin/env python
"""The measurements behind three CPU choices: the pipeline's default batch size, `torch.compile` as an option
(not a default), and where the time of the paper network goes.

    python benchmarks/bench_cpu_choices.py [--out benchmarks/results/cpu_choices.json]

1. Seconds for 32 full APOGEE spectra with the embedded `spectrafm-base` at 8-128 pixel subsets per forward pass,
   timed in turn for four rounds (best kept).
2. `torch.compile` (inductor, default mode: `SpectraFMPipeline(compile=True)`; and inference with ``freezing=True``)
   against eager, paper network,
   timed in turn for three rounds: a training step (batch 64 x 512) and five-label inference on four full spectra.
3. torch.profiler operator shares of one inference (four full spectra) and one training step, paper network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import best_time, train_step_fn  # noqa: E402

from spectrafm_hf import SpectraFMConfig, SpectraFMModel, SpectraFMPipeline, SpectraFMProcessor, Spectrum  # noqa: E402
from spectrafm_hf.grids import apogee_wavelength_7514  # noqa: E402
from spectrafm_hf.training.info import hardware, library_versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def spectra(n, seed=0):
    wl, rng = apogee_wavelength_7514(), np.random.default_rng(seed)
    return [Spectrum(wavelength=wl, flux=1 - 0.1 * rng.random(wl.size)) for _ in range(n)]


def batch_size_sweep(sizes=(8, 16, 32, 64, 128), rounds=4):
    pipe, stars = SpectraFMPipeline.from_pretrained("spectrafm-base", device="cpu"), spectra(32)
    pipe.predict(stars[:2])
    best = {size: float("inf") for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            pipe.batch_size = size
            t = time.perf_counter()
            pipe.predict(stars)
            best[size] = min(best[size], time.perf_counter() - t)
    return best


def paper_pipeline(compile=False):
    model = SpectraFMModel(SpectraFMConfig()).eval()
    return SpectraFMPipeline(model, SpectraFMProcessor(flux_center=0.95, flux_scale=0.05), device="cpu",
                             compile=compile)


def compile_comparison(rounds=3):
    """Eager against compiled, each compiled model built and called once first, then timed in turn."""
    import torch._inductor.config as inductor_config

    from bench_paper_code import interleaved_best

    out, stars = {}, spectra(4)
    eager_step, _ = train_step_fn(SpectraFMConfig(), 64, 512, 1)
    torch.manual_seed(0)
    model = SpectraFMModel(SpectraFMConfig()).train()
    compiled = torch.compile(model, dynamic=False)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    flux, wave = torch.randn(64, 512), 15100 + 1800 * torch.rand(64, 512)
    q, y = torch.zeros(64, 1, dtype=torch.long), torch.randn(64, 1)

    def compiled_step():
        compiled(flux, wave, query_ids=q, labels=y).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out["train_step_compile_first_call_s"] = best_time(compiled_step, 1)
    out.update({f"train_step_{k}_s": v for k, v in
                interleaved_best({"eager": eager_step, "compiled": compiled_step}, rounds).items()})

    pipes = {"eager": paper_pipeline()}
    for name, freezing in (("compiled", False), ("compiled_freezing", True)):
        pipes[name] = paper_pipeline(compile=True)
        with inductor_config.patch(freezing=freezing):  # read when the graph is compiled, at the first call
            out[f"inference_{name}_first_call_s"] = best_time(lambda: pipes[name].predict(stars), 1)
    fns = {name: (lambda p=p: p.predict(stars)) for name, p in pipes.items()}
    out.update({f"inference_{k}_s_per_star": v / len(stars) for k, v in interleaved_best(fns, rounds).items()})
    return out


def operator_shares(fn, top=8):
    from torch.profiler import profile

    fn()
    with profile() as prof:
        fn()
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events)
    return {key: t / total for key, t in sorted(events, key=lambda e: -e[1])[:top]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu_choices.json"))
    args = parser.parse_args()
    results = {"machine": {**hardware(), "versions": library_versions()},
               "command": "python benchmarks/bench_cpu_choices.py"}
    sweep = batch_size_sweep()
    results["spectrafm_base_seconds_for_32_full_spectra_by_batch_size"] = sweep
    print("spectrafm-base, 32 full spectra, s by subsets per pass: " + ", ".join(f"{k}: {v:.2f}" for k, v in sweep.items()))
    pipe, stars = paper_pipeline(), spectra(4)
    step, _ = train_step_fn(SpectraFMConfig(), 64, 512, 1)
    results["operator_shares"] = {"inference_4_full_spectra": operator_shares(lambda: pipe.predict(stars)),
                                  "train_step_batch64_512px": operator_shares(step)}
    for part, shares in results["operator_shares"].items():
        print(part + ": " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in shares.items()))
    results["torch_compile"] = compile_comparison()
    print("torch.compile: " + ", ".join(f"{k} {v:.3f}" for k, v in results["torch_compile"].items()))
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
