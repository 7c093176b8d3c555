#!/usr/bin/env python
"""Where a training step of the XP preset's every-star recipe spends its time, on one CPU thread: the model of
`scripts/configs/real_xp_cpu.yaml` (hidden size 64, 115 pixel tokens, 4 label queries), batch 32, AdamW, forward +
backward + step, timed for each attention kernel tried (SDPA's CPU flash kernel, SDPA's math kernel, eager attention,
SDPA under `torch.compile`), then the heaviest operators of the default one (torch.profiler).

    OMP_NUM_THREADS=1 python benchmarks/xp_step_profile.py      # ~2 min (torch.compile's first step ~30 s)

Writes benchmarks/results/xp_step_profile.json: milliseconds per step (median of 3 repeats of 30 steps) per kernel and
the share of the default step's CPU time per operator.
"""

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from spectrafm_hf import SpectraFMConfig, SpectraFMModel
from spectrafm_hf.training.presets import read_yaml

REPO = Path(__file__).resolve().parents[1]


def step_fn(model, batch, optimizer):
    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/xp_step_profile.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = read_yaml(Path(args.config).read_text())
    overrides = dict(cfg["spectrafm"]["config_overrides"])
    n_tokens, labels = overrides["context_length"], list(cfg["labels"])
    g = torch.Generator().manual_seed(0)
    b = args.batch_size
    batch = {"flux": torch.randn(b, n_tokens, generator=g),
             "wavelength": torch.linspace(3360.0, 10200.0, n_tokens).repeat(b, 1),
             "query_ids": torch.arange(len(labels)).repeat(b, 1), "labels": torch.randn(b, len(labels), generator=g)}
    kernels = {"sdpa_flash": ("sdpa", None), "sdpa_math": ("sdpa", torch.nn.attention.SDPBackend.MATH),
               "eager": ("eager", None), "sdpa_compiled": ("sdpa", "compile")}
    ms = {}
    for name, (impl, how) in kernels.items():
        torch.manual_seed(0)
        model = SpectraFMModel(SpectraFMConfig(label_names=labels, attn_implementation=impl, **overrides)).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        run = torch.compile(model) if how == "compile" else model
        ctx = (torch.nn.attention.sdpa_kernel([how]) if isinstance(how, torch.nn.attention.SDPBackend)
               else contextlib.nullcontext())
        with ctx:
            step = step_fn(run, batch, optimizer)
            for _ in range(5):  # warm-up (and compilation)
                step()
            repeats = []
            for _ in range(3):
                t = time.perf_counter()
                for _ in range(30):
                    step()
                repeats.append((time.perf_counter() - t) / 30 * 1000)
        ms[name] = round(statistics.median(repeats), 1)
        print(f"{name}: {ms[name]} ms a step", flush=True)
    torch.manual_seed(0)
    model = SpectraFMModel(SpectraFMConfig(label_names=labels, attn_implementation="sdpa", **overrides)).train()
    step = step_fn(model, batch, torch.optim.AdamW(model.parameters(), lr=1e-4))
    for _ in range(5):
        step()
    with torch.profiler.profile() as prof:
        for _ in range(10):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    share = {e.key: round(e.self_cpu_time_total / total, 3) for e in sorted(events, key=lambda e: -e.self_cpu_time_total)
             if e.self_cpu_time_total / total >= 0.01}
    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/xp_step_profile.py", "threads": 1, "batch_size": b,
           "tokens": n_tokens, "labels": labels, "ms_per_step": ms, "self_cpu_share_sdpa_flash": share}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
