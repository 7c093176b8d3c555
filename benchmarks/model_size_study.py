#!/usr/bin/env python
"""Compute vs accuracy by model size on these CPUs (issue 15 item 1): which width to pretrain at a given budget.

    python benchmarks/model_size_study.py                       # hidden 64 / 128 / 192, 8 wall-minutes each, one thread
    python benchmarks/model_size_study.py --sizes 64 128 --minutes 2 --threads 1 --out /tmp/study.json

Every size is trained FROM SCRATCH with the stage-1 recipe (stage1_recipe_cpu.yaml: peak lr 1e-3, warm-up and cosine,
batch 32, half the rows one contiguous window, half realism-augmented) on the same 30,000 clean synthetic spectra, for
a fixed budget of CPU wall-minutes on ``--threads`` threads: a short probe measures seconds per step, and the run gets
as many optimizer steps as fit (so its cosine schedule completes). Scored on spectra no run trained on: the whole
synthetic spectrum (300 validation stars; Teff, logg, [Fe/H]) and [Fe/H] from the paper's 512-pixel Fe window
(16106-16220 A) on 2,000 held-out observed-domain stars (the domain gap included), as the reproduction scores stage 1.
Writes ``--out`` (JSON) and a figure beside it; runs live under ``--runs`` and are reused when present.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from spectrafm_hf.training.metrics import label_metrics
from spectrafm_hf.training.run import DataArguments, args_from_dict, run_evaluation, run_training

REPO = Path(__file__).resolve().parents[1]
LABELS = ["TEFF", "LOGG", "FE_H"]
SYNTHETIC = {"n_train": 30000, "n_validation": 1000, "n_test": 0, "seed": 6, "snr": 200, "continuum": "pseudo"}
OBSERVED = {"n_train": 10000, "n_validation": 1000, "n_test": 2000, "seed": 1, "continuum": "pseudo"}


def architecture(hidden: int) -> dict:
    """The spectrafm-base layout (2 encoder + 3 decoder blocks, 4x FFN, 16-wide heads) at another width."""
    heads = max(2, hidden // 16)
    return {"hidden_size": hidden, "encoder_num_heads": [heads, heads // 2],
            "encoder_ffn_dims": [4 * hidden, 2 * hidden], "decoder_num_heads": [heads, heads // 2, max(1, heads // 4)],
            "decoder_ffn_dims": [4 * hidden, 2 * hidden, hidden], "head_dims": [512, 256, 128, 64],
            "context_length": 256, "attention_dropout": 0.0}


def recipe(run_dir: Path, hidden: int, steps: int) -> dict:
    warmup = max(10, steps // 25)
    every = max(50, steps // 4)
    return {"output_dir": str(run_dir), "config_overrides": architecture(hidden), "target_labels": LABELS,
            "dataset_config": "synthetic_apogee", "dataset_kwargs": SYNTHETIC, "dataset_cache_dir": "data_cache",
            "window_prob": 0.5, "window_width": [64, 7514], "augment": {"prob": 0.5, "snr_range": [50, 500]},
            "max_eval_stars": 300, "max_steps": int(steps), "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 64, "learning_rate": 1e-3, "weight_decay": 0.01, "warmup_steps": warmup,
            "lr_scheduler_type": "cosine", "eval_strategy": "steps", "eval_steps": every, "save_strategy": "steps",
            "save_steps": every, "save_total_limit": 1, "load_best_model_at_end": True,
            "metric_for_best_model": "eval_loss", "logging_steps": 50, "use_cpu": True, "seed": 0, "report_to": [],
            "dataloader_num_workers": 0, "disable_tqdm": True, "calibrate_uncertainties": False}


def seconds_per_step(hidden: int, run_dir: Path, probe_steps: int = 12) -> tuple[float, int]:
    """Wall seconds per optimizer step of this size (the probe's last steps, after warm-up), and its parameters."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter())

    values = recipe(run_dir, hidden, probe_steps)
    values.update(eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
    clock = Clock()
    trainer, _ = run_training(*args_from_dict(values), callbacks=[clock])
    n_params = sum(p.numel() for p in trainer.model.parameters())
    return float(np.median(np.diff(clock.times[2:]))), int(n_params)


def score(model: Path) -> dict:
    """Whole-spectrum synthetic validation RMSE per label and Fe-window [Fe/H] RMSE on observed-domain stars."""
    out = {}
    syn = DataArguments(dataset_config="synthetic_apogee", dataset_cache_dir="data_cache", dataset_kwargs=SYNTHETIC,
                        max_eval_stars=300)
    m, _ = run_evaluation(model, syn, LABELS)
    out["synthetic_whole_spectrum"] = {n: m[f"{n}_rmse"] for n in LABELS}
    fe = DataArguments(dataset_config="observed_apogee", dataset_cache_dir="data_cache", dataset_kwargs=OBSERVED,
                       pixel_range=[4107, 4619])
    _, t = run_evaluation(model, fe, ["FE_H"])
    poor = t.FE_H_true.to_numpy() < -1
    out["observed_fe_window_fe_h"] = {"rmse": label_metrics(t.FE_H, t.FE_H_true)["rmse"],
                                      "rmse_feh_lt_-1": label_metrics(t.FE_H[poor], t.FE_H_true[poor])["rmse"],
                                      "n": int(len(t)), "n_feh_lt_-1": int(poor.sum())}
    return out


def figure(results: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for hidden in sorted({r["hidden_size"] for r in results}):
        rs = sorted((r for r in results if r["hidden_size"] == hidden), key=lambda r: r["minutes"])
        label = f"hidden {hidden} ({rs[0]['parameters'] / 1e6:.2f} M)"
        axes[0].plot([r["minutes"] for r in rs], [r["synthetic_whole_spectrum"]["FE_H"] for r in rs], "o-",
                     label=label)
        axes[1].plot([r["minutes"] for r in rs], [r["observed_fe_window_fe_h"]["rmse"] for r in rs], "o-",
                     label=label)
    axes[0].set_title("[Fe/H], whole synthetic spectrum", fontsize=10)
    axes[1].set_title("[Fe/H], Fe window, observed domain", fontsize=10)
    for ax in axes:
        ax.set_xlabel("training budget [CPU wall-minutes]")
        ax.set_ylabel("RMSE [dex]")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192])
    p.add_argument("--minutes", type=float, nargs="+", default=[8.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/model_size_study")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "model_size_study.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    runs, out = Path(a.runs), Path(a.out)
    results = []
    for hidden in a.sizes:
        sec, n_params = seconds_per_step(hidden, runs / f"probe_h{hidden}")
        for minutes in a.minutes:
            steps = max(20, int(minutes * 60 / sec))
            run_dir = runs / f"h{hidden}_{minutes:g}min"
            if not (run_dir / "final" / "config.json").is_file():
                t = time.time()
                run_training(*args_from_dict(recipe(run_dir, hidden, steps)))
                (run_dir / "wall_seconds.txt").write_text(f"{time.time() - t:.1f}\n")
            wall = float((run_dir / "wall_seconds.txt").read_text())
            row = {"hidden_size": hidden, "parameters": n_params, "minutes": minutes, "steps": steps,
                   "seconds_per_step": sec, "wall_seconds_incl_evaluations": wall, **score(run_dir / "final")}
            print(json.dumps(row), flush=True)
            results.append(row)
    best = {}
    for minutes in a.minutes:
        rs = [r for r in results if r["minutes"] == minutes]
        best[f"{minutes:g}"] = {"synthetic_fe_h": min(rs, key=lambda r: r["synthetic_whole_spectrum"]["FE_H"])[
            "hidden_size"], "fe_window_fe_h": min(rs, key=lambda r: r["observed_fe_window_fe_h"]["rmse"])[
            "hidden_size"]}
    report = {"command": "python benchmarks/model_size_study.py " + " ".join(argv or []),
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": a.threads,
                          "torch": torch.__version__},
              "recipe": "stage1_recipe_cpu.yaml from scratch: lr 1e-3, warm-up + cosine, batch 32, window mixing "
                        "0.5, augmentation 0.5; best checkpoint on synthetic validation loss",
              "results": results, "best_hidden_size_by_budget": best}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    figure(results, out.with_suffix(".png"))
    print(json.dumps(best))


if __name__ == "__main__":
    main()
