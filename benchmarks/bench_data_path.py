#!/usr/bin/env python
"""The data path as a share of a training step, and peak memory of training and of predicting (issue #6).

    OMP_NUM_THREADS=1 python benchmarks/bench_data_path.py [--steps 20] [--predict-n 10000] [--predict-pixels 256]
                                                           [--out benchmarks/results/data_path_cpu.json]

1. Data path vs training step, in one process, at the CPU preset (scripts/configs/pretrain_cpu.yaml: its
   architecture, batch 32, context 256, 5 labels): rows of a `synthetic_apogee` dataset (built with the package's
   builder, same dataset_kwargs as the preset except the size) read the way the Trainer's DataLoader reads them
   (``Dataset.__getitems__`` of the sampled indices, numpy format, as `run_training` sets it), collated by
   `SpectraCollator` exactly as `run_training` builds it (epoch set, as `EpochCallback` does), then one training
   step of the CPU-preset model on that batch (forward, backward, gradient clipping at 1.0, AdamW, schedule:
   what the Trainer does per step). The share is (row read + collate) / (row read + collate + step).
2. Peak RSS of a short CPU-preset training run through `run_training` (the Trainer), in its own process, on a
   dataset cache written by another process (memory-mapped, as in a real run; `build_model` still reads 2,000 rows
   to fit the flux normalisation, as the preset does).
3. Peak RSS of predicting ``--predict-n`` spectra with the embedded `spectrafm-base` through `predict_stream`
   (benchmarks/bench_predict_memory.py), in its own process.

Peak RSS is the process's high-water mark (``ru_maxrss``), so parts 2 and 3 run in subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spectrafm_hf.training.presets import read_yaml

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "scripts" / "configs" / "pretrain_cpu.yaml"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def preset():
    return read_yaml(PRESET.read_text())


def build_dataset(cache_dir, n_train, seed=0):
    from spectrafm_hf.data import load_spectra_dataset

    kw = dict(preset()["dataset_kwargs"], n_train=n_train, n_validation=0, n_test=0, seed=seed)
    return load_spectra_dataset("synthetic_apogee", cache_dir=str(cache_dir), **kw)["train"]


def model_and_collator(train):
    """The CPU-preset model, its processor fitted on ``train`` and the training collator, as `run_training` builds
    them (train already in numpy format)."""
    from spectrafm_hf.data import DEFAULT_LABEL_NAMES
    from spectrafm_hf.training.collator import SpectraCollator
    from spectrafm_hf.training.run import ModelArguments, build_model

    cfg = preset()
    labels = list(DEFAULT_LABEL_NAMES)
    model, processor = build_model(ModelArguments(config_overrides=cfg["config_overrides"]), train, labels)
    query_ids = [model.config.label_names.index(n) for n in labels]
    collator = SpectraCollator(processor=processor, label_names=labels, query_ids=query_ids, wavelength_window=None,
                               input_label_names=[], input_label_prob=0.0, input_ids=[], seed=cfg["seed"])
    collator.epoch = 0  # as EpochCallback sets it under the Trainer (per-example seeded subsets)
    return model, processor, collator


def part_data_path(args) -> dict:
    cfg = preset()
    batch = cfg["per_device_train_batch_size"]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        train = build_dataset(tmp, max(batch * (args.steps + args.warmup), 2048)).with_format("numpy")
        build_s = time.perf_counter() - t
        model, processor, collator = model_and_collator(train)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
        from transformers import get_scheduler

        sched = get_scheduler(cfg["lr_scheduler_type"], opt, num_warmup_steps=cfg["warmup_steps"],
                              num_training_steps=cfg["max_steps"])
        order = np.random.default_rng(0).permutation(len(train))  # RandomSampler
        read_t, collate_t, step_t = [], [], []
        for step in range(args.warmup + args.steps):
            idx = order[step * batch:(step + 1) * batch].tolist()
            t0 = time.perf_counter()
            rows = train.__getitems__(idx)  # what torch's fetcher calls on a datasets.Dataset
            t1 = time.perf_counter()
            b = collator(rows)
            t2 = time.perf_counter()
            out = model(**b)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            if step >= args.warmup:
                read_t.append(t1 - t0)
                collate_t.append(t2 - t1)
                step_t.append(t3 - t2)
        read_s, collate_s, step_s = (float(np.median(x)) for x in (read_t, collate_t, step_t))
        data_s = read_s + collate_s
        result = {
            "batch": batch, "context_length": collator.context_length, "labels": len(collator.label_names),
            "pixels_per_row": int(len(train[0]["flux"])), "steps_measured": args.steps, "warmup_steps": args.warmup,
            "dataset_rows": len(train), "dataset_build_s": build_s,
            "row_read_s_per_step_median": read_s, "collate_s_per_step_median": collate_s,
            "train_step_s_median": step_s, "data_path_s_per_step_median": data_s,
            "data_path_share_of_step": data_s / (data_s + step_s),
            "data_path_share_of_step_mean": float((np.sum(read_t) + np.sum(collate_t))
                                                  / (np.sum(read_t) + np.sum(collate_t) + np.sum(step_t))),
            "row_read_s_per_step_all": read_t, "collate_s_per_step_all": collate_t, "train_step_s_all": step_t,
            "goal": "data path <= 5 % of a step",
        }
        # the collator alone, repeated on one batch (less noise than one call per step)
        rows = train.__getitems__(order[:batch].tolist())
        reps = 20
        t = time.perf_counter()
        for _ in range(reps):
            collator(rows)
        result["collate_s_per_batch_repeated"] = (time.perf_counter() - t) / reps
    return result


def part_train_rss(args) -> dict:
    from transformers import TrainingArguments

    from spectrafm_hf.training.run import DataArguments, ModelArguments, run_training

    cfg = preset()
    before = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        train = build_dataset(args.cache_dir, args.train_rows)  # built by an earlier process: memory-mapped here
        after_data = rss_mb()
        targs = TrainingArguments(output_dir=str(Path(tmp) / "run"), max_steps=args.train_steps,
                                  per_device_train_batch_size=cfg["per_device_train_batch_size"],
                                  learning_rate=cfg["learning_rate"], weight_decay=cfg["weight_decay"],
                                  warmup_steps=cfg["warmup_steps"], lr_scheduler_type=cfg["lr_scheduler_type"],
                                  eval_strategy="no", save_strategy="no", logging_steps=10**6, use_cpu=True,
                                  report_to=[], seed=cfg["seed"], dataloader_num_workers=0, disable_tqdm=True)
        t = time.perf_counter()
        trainer, _ = run_training(ModelArguments(config_overrides=cfg["config_overrides"]), DataArguments(), targs,
                                  splits=(train, None, None))
        seconds = time.perf_counter() - t
    return {"steps": args.train_steps, "dataset": "memory-mapped Arrow cache written by another process", "batch": cfg["per_device_train_batch_size"], "dataset_rows": args.train_rows,
            "seconds_incl_setup_and_final_save": seconds, "peak_rss_mb_after_imports": before,
            "peak_rss_mb_after_dataset": after_data, "peak_rss_mb": rss_mb(),
            "parameters": int(trainer.model.num_parameters())}


def run_part(part, args, extra=()) -> dict:
    cmd = [sys.executable, __file__, "--part", part, *map(str, extra)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if res.returncode:
        sys.stderr.write(res.stdout[-3000:] + res.stderr[-3000:])
        raise SystemExit(f"{part} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="training steps measured for the data-path share")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=5, help="Trainer steps for the training peak RSS")
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--predict-n", type=int, default=10_000)
    p.add_argument("--predict-model", default="spectrafm-base")
    p.add_argument("--predict-pixels", type=int, default=256)
    p.add_argument("--skip", nargs="*", default=[], choices=["data_path", "train_rss", "predict_rss"])
    p.add_argument("--note", default="", help="free text about the machine's state (e.g. other load)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_path_cpu.json"))
    p.add_argument("--merge", action="store_true", help="keep the parts of an existing --out that are skipped")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part == "data_path":
        print(json.dumps(part_data_path(args)))
        return
    if args.part == "train_rss":
        print(json.dumps(part_train_rss(args)))
        return
    if args.part == "build":
        build_dataset(args.cache_dir, args.train_rows)
        print("{}")
        return

    from spectrafm_hf.training.info import hardware, library_versions

    results = {"machine": {**hardware(), "versions": library_versions(),
                           "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}},
               "load_average_at_start": os.getloadavg(), "note": args.note,
               "command": "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python " + shlex.join(
                   [str(Path(__file__).relative_to(REPO))] + sys.argv[1:])}
    if "data_path" not in args.skip:
        r = run_part("data_path", args, ["--steps", args.steps, "--warmup", args.warmup])
        results["data_path"] = r
        print(f"data path: read {1e3 * r['row_read_s_per_step_median']:.1f} ms + collate "
              f"{1e3 * r['collate_s_per_step_median']:.1f} ms per step vs train step "
              f"{r['train_step_s_median']:.3f} s -> {100 * r['data_path_share_of_step']:.2f} % of a step")
    if "train_rss" not in args.skip:
        with tempfile.TemporaryDirectory() as cache:
            run_part("build", args, ["--train-rows", args.train_rows, "--cache-dir", cache])
            r = run_part("train_rss", args, ["--train-steps", args.train_steps, "--train-rows", args.train_rows,
                                             "--cache-dir", cache])
        results["train_peak_rss"] = r
        print(f"training ({r['steps']} Trainer steps, CPU preset): peak RSS {r['peak_rss_mb']:.0f} MB")
    if "predict_rss" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "predict.json"
            cmd = [sys.executable, str(REPO / "benchmarks" / "bench_predict_memory.py"), "--n", str(args.predict_n),
                   "--model", args.predict_model, "--pixels", str(args.predict_pixels), "--out", str(out)]
            subprocess.run(cmd, check=True, capture_output=True, env=dict(os.environ))
            r = json.loads(out.read_text())
        r["command"] = " ".join(["python", "benchmarks/bench_predict_memory.py"] + cmd[2:-2])
        results["predict_peak_rss"] = r
        print(f"predict {r['n_spectra']} spectra ({args.predict_model}, {args.predict_pixels} px): peak RSS "
              f"{r['peak_rss_mb_end']:.0f} MB in {r['seconds']:.0f} s")
    results["load_average_at_end"] = os.getloadavg()
    if args.merge and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        for part, key in (("data_path", "data_path"), ("train_rss", "train_peak_rss"),
                          ("predict_rss", "predict_peak_rss")):
            if part in args.skip and key in old:
                results[key] = old[key]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
