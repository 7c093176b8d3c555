#!/usr/bin/env python
"""Survey-scale prediction (issue 17): spectra/s and peak RSS per process of `spectrafm predict --dataset` in 1 and
2 processes (torchrun, one torch thread per process) on this machine's CPUs, for (a) short synthetic spectra and
(b) full 7514-pixel APOGEE-like spectra; peak RSS as the input grows 10x; and a FLOP-based projection of the time
to label APOGEE DR17 (733,901 spectra) on one H200 and on eight. Results: benchmarks/results/survey_cpu.json.

    python benchmarks/bench_survey.py                                   # the issue's sizes (hours on 2 cores)
    python benchmarks/bench_survey.py --short-n 10000 --full-n 400 --rss-n 1000 10000   # reduced

The spectra are Parquet shards in the package's schema (random absorption features; the network's cost does not
depend on the values), streamed through `datasets`. Each configuration is a separate command, as a user runs it;
throughput = spectra / the slowest rank's prediction time (reading + predicting + writing parts; model loading and
process start excluded, the whole command's wall time is recorded too). Because the CPUs may be shared, the load
average before and after each run and every rank's CPU seconds are recorded: spectra per CPU-second does not
depend on the other work on the machine.
"""

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DR17_SPECTRA = 733_901  # allStar-dr17-synspec_rev1 rows
H200_BF16_PEAK = 990e12  # dense bf16 FLOP/s (NVIDIA H200 SXM datasheet)


def load() -> float:
    return os.getloadavg()[0]


def make_dataset(folder: Path, n: int, n_pixels: int, rows_per_file=20_000, seed=0):
    """``n`` spectra of ``n_pixels`` (the first pixels of the APOGEE 7514 grid) as Parquet shards."""
    import pyarrow.parquet as pq

    from spectrafm_hf.data import arrays_to_table
    from spectrafm_hf.grids import apogee_wavelength_7514

    folder.mkdir(parents=True, exist_ok=True)
    wl = apogee_wavelength_7514()[:n_pixels]
    rng = np.random.default_rng(seed)
    for j, start in enumerate(range(0, n, rows_per_file)):
        m = min(rows_per_file, n - start)
        flux = 1 - 0.02 * rng.random((m, n_pixels), dtype=np.float32)
        lines = rng.integers(0, n_pixels, (m, 40))
        np.put_along_axis(flux, lines, 0.6, axis=1)  # absorption features
        ids = [f"s{start + i}" for i in range(m)]
        pq.write_table(arrays_to_table(ids, "apogee", wl, flux, ivar=np.full(n_pixels, 1e4, np.float32)),
                       folder / f"train-{j:05d}.parquet")
    return folder


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


RANK_LINE = re.compile(r"rank (\d+): (\d+) spectra in (\d+) chunks, ([\d.]+) s \(([\d.]+) CPU s\), peak RSS (\d+) MiB")


def run(data: Path, n_procs: int, model: str, chunk_size: int, workdir: Path) -> dict:
    out = workdir / f"labels-{n_procs}p-{data.name}.parquet"
    predict = ["-m", "spectrafm_hf.cli", "predict", "--dataset", str(data), "-o", str(out), "--model", model,
               "--chunk-size", str(chunk_size), "--quiet"]
    if n_procs == 1:
        cmd = [sys.executable, *predict]
    else:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(n_procs), "--master_addr",
               "127.0.0.1", "--master_port", free_port(), *predict]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    load_before, t0 = load(), time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    ranks = [dict(zip(("rank", "spectra", "chunks", "seconds", "cpu_seconds", "peak_rss_mb"),
                      (int(a), int(b), int(c), float(d), float(e), float(f))))
             for a, b, c, d, e, f in RANK_LINE.findall(res.stderr)]
    n = sum(r["spectra"] for r in ranks)
    import pandas as pd

    table = pd.read_parquet(out, columns=["row", "n_subsets"])
    assert len(table) == n and table["row"].is_monotonic_increasing and table["row"].is_unique
    slowest = max(r["seconds"] for r in ranks)
    result = {"processes": n_procs, "threads_per_process": 1, "spectra": n, "ranks": ranks,
              "predict_seconds": slowest, "spectra_per_s": n / slowest,
              "spectra_per_cpu_s": n / sum(r["cpu_seconds"] for r in ranks),
              "command_wall_s": round(wall, 1), "peak_rss_mb_per_process": max(r["peak_rss_mb"] for r in ranks),
              "mean_subsets_per_spectrum": float(table["n_subsets"].mean()),
              "load_before": round(load_before, 2), "load_after": round(load(), 2),
              "command": " ".join(["OMP_NUM_THREADS=1", *(c if c != sys.executable else "python" for c in cmd)])}
    out.unlink()
    print(json.dumps({k: v for k, v in result.items() if k != "ranks"}), flush=True)
    return result


def projection(model: str, subsets_per_spectrum: float, mfu: float) -> dict:
    """Time to label APOGEE DR17 from the forward FLOPs (bench_model.forward_macs, checked against torch's
    counter by tests/test_benchmarks.py) at an assumed model FLOP utilisation."""
    from bench_model import forward_macs

    from spectrafm_hf import SpectraFMConfig
    from spectrafm_hf.hub import resolve_model

    cfg = SpectraFMConfig.from_pretrained(resolve_model(model))
    flops_subset = 2 * forward_macs(cfg, cfg.context_length, len(cfg.label_names))
    total = DR17_SPECTRA * subsets_per_spectrum * flops_subset
    one = total / (H200_BF16_PEAK * mfu)
    return {"spectra": DR17_SPECTRA, "subsets_per_spectrum": subsets_per_spectrum,
            "forward_flops_per_subset": flops_subset, "total_flops": total,
            "assumed": f"H200 dense bf16 peak {H200_BF16_PEAK:.3g} FLOP/s at MFU {mfu:.0%} (a 1M-parameter model with "
                       f"hidden size {cfg.hidden_size}: small matrices, far from peak); data-parallel ranks need no "
                       f"communication, so 8 GPUs = 1/8 of the time, plus model load (~s) and reading ~66 GB of "
                       f"Parquet flux/ivar/wavelength",
            "mfu": mfu, "one_gpu_hours": one / 3600, "eight_gpu_hours": one / 8 / 3600,
            "one_gpu_hours_at_mfu": {f"{m:.0%}": total / (H200_BF16_PEAK * m) / 3600 for m in (0.01, 0.05, 0.2)}}


def host_seconds_per_spectrum(model: str, data: Path, n: int) -> float:
    """CPU seconds per full spectrum of everything but the network, in one process: Arrow rows -> spectra ->
    normalised pixel subsets (what a GPU rank still does on its CPU)."""
    import torch

    from spectrafm_hf import SpectraFMPipeline
    from spectrafm_hf.survey import _arrow_spectra, open_stream_dataset

    torch.set_num_threads(1)
    pipe = SpectraFMPipeline.from_pretrained(model, device="cpu")
    batch = next(iter(open_stream_dataset(str(data)).with_format("arrow").iter(batch_size=n)))
    t0 = time.process_time()
    spectra = [s for _, s in _arrow_spectra(batch, 0)]
    pipe.processor.subset_batch(spectra, seed=0)
    return (time.process_time() - t0) / len(spectra)


def add_projection(result, args, host_s):
    subsets = next(r["mean_subsets_per_spectrum"] for r in result["full"]["runs"])
    proj = projection(args.model, subsets, args.mfu)
    full1 = next((r for r in result["full"]["runs"] if r["processes"] == 1), None)
    if full1:
        proj["one_cpu_core_hours_measured"] = DR17_SPECTRA / full1["spectra_per_cpu_s"] / 3600
    # a GPU rank also prepares its spectra on one CPU core: the run takes the longer of the two
    proj["host_cpu_s_per_spectrum_measured"] = host_s
    proj["host_hours_per_rank_one_gpu"] = DR17_SPECTRA * host_s / 3600
    proj["one_gpu_hours_expected"] = max(proj["one_gpu_hours"], proj["host_hours_per_rank_one_gpu"])
    proj["eight_gpu_hours_expected"] = proj["one_gpu_hours_expected"] / 8
    proj["note"] = ("expected = max(network time from FLOPs at the assumed MFU, measured host-side preparation on "
                    "the rank's CPU core); one process per GPU, no communication between ranks")
    result["dr17_projection"] = proj


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spectrafm-base")
    p.add_argument("--short-n", type=int, default=100_000)
    p.add_argument("--short-pixels", type=int, default=256, help="one pixel subset each (the model's context)")
    p.add_argument("--full-n", type=int, default=20_000)
    p.add_argument("--rss-n", type=int, nargs=2, default=[10_000, 100_000], help="short-spectra counts compared")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--chunk-size", type=int, default=512, help="spectra per part, short spectra")
    p.add_argument("--full-chunk-size", type=int, default=64, help="spectra per part, full spectra (30 subsets each)")
    p.add_argument("--mfu", type=float, default=0.05)
    p.add_argument("--note", default="")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "survey_cpu.json"))
    p.add_argument("--update-projection", action="store_true",
                   help="only (re)measure the host-side cost and recompute the projection in an existing --out")
    args = p.parse_args()
    if args.update_projection:
        result = json.loads(Path(args.out).read_text())
        with tempfile.TemporaryDirectory(prefix="bench_survey_") as tmp:
            data = make_dataset(Path(tmp) / "host", 256, 7514)
            host = host_seconds_per_spectrum(args.model, data, 256)
        add_projection(result, args, host)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["dr17_projection"], indent=1))
        return
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "processor": platform.processor()},
              "model": args.model, "argv": sys.argv[1:], "note": args.note, "load_at_start": round(load(), 2),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="bench_survey_") as tmp:
        tmp = Path(tmp)
        short = make_dataset(tmp / "short", args.short_n, args.short_pixels)
        full = make_dataset(tmp / "full", args.full_n, 7514, rows_per_file=2000)
        result["short"] = {"n": args.short_n, "pixels": args.short_pixels,
                           "runs": [run(short, n, args.model, args.chunk_size, tmp) for n in args.procs]}
        result["full"] = {"n": args.full_n, "pixels": 7514,
                          "runs": [run(full, n, args.model, args.full_chunk_size, tmp) for n in args.procs]}
        for part in ("short", "full"):
            runs = {r["processes"]: r for r in result[part]["runs"]}
            if 1 in runs and 2 in runs:
                result[part]["scaling_2p_over_1p"] = runs[2]["spectra_per_s"] / runs[1]["spectra_per_s"]
                result[part]["scaling_efficiency"] = result[part]["scaling_2p_over_1p"] / 2
                result[part]["cpu_efficiency_2p_over_1p"] = runs[2]["spectra_per_cpu_s"] / runs[1]["spectra_per_cpu_s"]
        rss = {}
        for n in args.rss_n:
            existing = next((r for r in result["short"]["runs"] if r["processes"] == 1 and r["spectra"] == n), None)
            if existing is None:
                data = make_dataset(tmp / f"rss{n}", n, args.short_pixels)
                existing = run(data, 1, args.model, args.chunk_size, tmp)
            rss[n] = existing["peak_rss_mb_per_process"]
        small, large = args.rss_n
        result["rss_growth"] = {"peak_rss_mb": rss, "ratio": rss[large] / rss[small],
                                "flat_within_10_percent": abs(rss[large] / rss[small] - 1) <= 0.10}
        host = host_seconds_per_spectrum(args.model, full, min(256, args.full_n))
    add_projection(result, args, host)
    result["load_at_end"] = round(load(), 2)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("rss_growth", "load_at_start", "load_at_end")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
