#!/usr/bin/env python
"""The paper's [Fe/H] experiment at the paper's network size on one GPU, inside a fixed wall-time budget.

    python scripts/gpu/paper_scale.py scripts/configs/paper_scale_gpu.yaml     # one H200, 9 minutes
    python scripts/gpu/paper_scale.py scripts/configs/paper_scale_tiny.yaml    # dry run: one CPU core, < 60 s
    ... [--output_dir DIR] [--budget_s S] [--device cpu|cuda]

Needs torch, transformers, numpy, pandas, pyyaml, scipy, safetensors and this package; NOT ``datasets`` or
``astropy`` (spectra are made and held as arrays, never as a dataset).

1. Stage 1: the SpectraFM network (``model.config_overrides``; {} = the paper's ~8M-parameter network) pretrained
   on clean synthetic APOGEE spectra made on the device by `SyntheticStream` (emulator on the GPU, labels from
   ``synth.sample_labels``, noise at the training S/N, pseudo-continuum, realism augmentation, pixel subsets of
   ``context_length`` mixing scattered pixels with contiguous windows), bf16 autocast. Meanwhile ``observed.workers``
   CPU processes make the observed-domain sets with ``synth.generate(observed=True)`` (`observed_chunk`).
2. Stage 2: all five labels on the observed-domain pool, pixels ``stage2_pixel_range``; the checkpoint with the
   lowest validation loss is kept.
3. Stage 3: ``stage3.n_stars`` observed stars with [Fe/H] > ``min_feh`` in the Fe window ``fe_pixel_range``,
   [Fe/H] trained together with the helper labels (``stage3.labels``, TEFF and LOGG) so that it cannot collapse;
   best validation loss kept.
4. The scratch MLP baseline (`spectrafm_hf.baselines.ScratchMLP`, the paper's basic_NN) on the same stars and window.
5. Evaluation of stages 1-3 and the baseline on a held-out observed test set whose [Fe/H] reaches -2.5 (raised
   metal-poor fraction): the metrics of ``scripts/reproduce_paper.py`` per split and the metal-poor RMSE ratio
   scratch / SpectraFM. Validation sets hold no metal-poor star and no test star (the reproduction's hygiene).

Time: the budget clock starts when this module is imported. Each stage gets its ``fractions`` share of the time
still left (minus ``reserve_s`` for writing), so a slow start shrinks every stage instead of overrunning; a stage
stops at its deadline or its ``max_steps`` and the run goes on. Outputs, ONE folder written atomically at the end:
the final model (``save_pretrained``, shards of at most 15 MB), its processor and ``training_info.json`` (loadable
with ``SpectraFMPipeline.from_pretrained(folder)``), ``results.csv`` (model, split, n, bias, mae, rmse,
robust_scatter, coverage68, coverage95), ``results.json`` (goals, per-stage steps / spectra per second / seconds,
stage-1 accuracy, timings), ``predictions.csv`` and ``run.log``. After the write, the saved folder is loaded back
with the pipeline and compared with the in-run predictions on a few test stars (``results.json: pipeline_check``).
"""

from __future__ import annotations

import time

T0 = time.time()  # the wall-time budget counts from here (python start-up before this line is ~0.1 s)

import argparse  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # reproduce_paper's metrics helpers

STAGES = ("stage1", "stage2", "stage3", "scratch_nn", "evaluation")
_LOG = io.StringIO()


def log(msg):
    line = f"[paper_scale {time.time() - T0:6.1f} s] {msg}"
    print(line, flush=True)
    _LOG.write(line + "\n")


class Clock:
    """Deadlines of the time-boxed stages: each gets its fraction of the time still left before the budget's end
    minus ``reserve_s``, shared with the stages not yet run."""

    def __init__(self, budget_s: float, reserve_s: float, fractions: dict, t0: float = T0):
        missing = [s for s in STAGES if s not in fractions]
        if missing:
            raise ValueError(f"fractions: missing stages {missing} (needs {list(STAGES)})")
        if any(float(v) < 0 for v in fractions.values()) or not sum(float(v) for v in fractions.values()) > 0:
            raise ValueError(f"fractions must be >= 0 with a positive sum, got {fractions}")
        self.end = t0 + float(budget_s) - float(reserve_s)
        self.budget_s = float(budget_s)
        self.fractions = {s: float(fractions[s]) for s in STAGES}
        self.todo = list(STAGES)

    def deadline(self, stage: str) -> float:
        now = time.time()
        share = self.fractions[stage] / max(sum(self.fractions[s] for s in self.todo), 1e-12)
        self.todo.remove(stage)
        return now + max(0.0, self.end - now) * share

    def left(self) -> float:
        return self.end - time.time()


# ------------------------------------------------------------------------------------------------ observed data
class ObservedSets:
    """Observed-domain chunks made by worker processes (spawned before CUDA starts) or, with 0 workers, here."""

    def __init__(self, cfg: dict):
        from spectrafm_hf.training.synthetic_stream import observed_chunk

        self.fn = observed_chunk
        obs, test = cfg["observed"], cfg["test"]
        chunk = int(obs.get("chunk", 1000))
        base = dict(instrument=cfg.get("instrument", "apogee"), continuum=obs.get("continuum", "pseudo"))

        def tasks(name, n, seed, **kw):
            return [dict(base, name=name, n=min(chunk, n - i), seed=[int(seed), 7, i], **kw)
                    for i in range(0, n, chunk)]

        # test first (the evaluation needs all of it), then validation, then the training pool
        mpf = float(test["metal_poor_fraction"])
        self.tasks = (tasks("test", int(test["n"]), test["seed"], metal_poor_fraction=mpf)
                      + tasks("validation", int(obs["n_validation"]), int(obs["seed"]) + 1)
                      + tasks("train", int(obs["n_train"]), obs["seed"]))
        for t in self.tasks:  # SeedSequence-style list seeds: independent streams per chunk and per set
            t["seed"] = int(np.random.SeedSequence(t["seed"]).generate_state(1)[0])
        self.workers = int(obs.get("workers", 0))
        self.pool = None
        if self.workers > 0:
            import multiprocessing as mp

            os.environ.setdefault("OMP_NUM_THREADS", "1")
            self.pool = mp.get_context("spawn").Pool(self.workers)
            self.pending = [(t, self.pool.apply_async(self.fn, (t,))) for t in self.tasks]
        else:
            self.pending = [(t, None) for t in self.tasks]

    def collect(self, name: str, wait: bool = True, min_chunks: int = 1, deadline: float | None = None) -> dict:
        """Concatenated arrays of the chunks of one set: all of them (``wait``) or those ready now (at least
        ``min_chunks``, waited for until ``deadline``)."""
        parts, rest = [], []
        for task, res in self.pending:
            if task["name"] != name:
                rest.append((task, res))
                continue
            if res is None:
                parts.append(self.fn(task))
            elif wait or res.ready() or len(parts) < min_chunks:
                timeout = None if deadline is None else max(1.0, deadline - time.time())
                parts.append(res.get(timeout=timeout if not wait else None))
            else:
                rest.append((task, res))
        self.pending = [p for p in rest if p[0]["name"] != name]
        if not parts:
            raise RuntimeError(f"no chunk of the observed {name} set was made")
        return {k: np.concatenate([p[k] for p in parts]) for k in ("flux", "labels", "label_err", "true_labels")}

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# ------------------------------------------------------------------------------------------------ training
def train_loop(name, model, next_batch, scfg: dict, deadline: float, device, bf16: bool, evaluate=None):
    """AdamW with warm-up + cosine over max(step / max_steps, elapsed / time box); optional validation every
    ``eval_every`` steps keeping the best weights. Returns the stage's record."""
    import torch

    from spectrafm_hf.training.synthetic_stream import cosine_progress_lr

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(scfg["learning_rate"]), weight_decay=float(scfg.get("weight_decay", 0)),
                            fused=device.type == "cuda")
    max_steps, warmup = int(scfg["max_steps"]), int(scfg.get("warmup_steps", 0))
    peak, floor = float(scfg["learning_rate"]), float(scfg.get("min_learning_rate", 0.0))
    eval_every, log_every = int(scfg.get("eval_every", 0)), int(scfg.get("log_every", 0) or scfg.get("eval_every", 0)
                                                                   or 100)
    start = time.time()
    span = max(deadline - start, 1e-6)
    step, spectra, skipped, best, history = 0, 0, 0, (math.inf, -1, None), []
    running = []
    model.train()
    while step < max_steps and time.time() < deadline:
        lr = cosine_progress_lr(max(step / max_steps, (time.time() - start) / span), step, peak, warmup, floor)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = next_batch()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if scfg.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(params, float(scfg["grad_clip"]))
        opt.step()
        step += 1
        spectra += batch["flux"].shape[0]
        running.append(loss.detach())
        if step % log_every == 0:
            mean = float(torch.stack(running).float().mean())  # one device sync per log line
            running = []
            if not math.isfinite(mean):
                skipped += 1
            el = time.time() - start
            history.append({"step": step, "seconds": round(el, 2), "loss": mean, "lr": lr})
            log(f"{name}: step {step}, loss {mean:.4f}, lr {lr:.2e}, {spectra / el:,.0f} spectra/s")
        if evaluate is not None and eval_every and step % eval_every == 0:
            v = evaluate(model)
            model.train()
            history.append({"step": step, "validation_loss": v})
            if v < best[0]:
                best = (v, step, {k: t.detach().clone() for k, t in model.state_dict().items()})
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - start
    record = {"steps": step, "spectra": spectra, "seconds": round(seconds, 2),
              "spectra_per_s": round(spectra / max(seconds, 1e-9), 1),
              "stopped_by": "max_steps" if step >= max_steps else "time", "history": history}
    if evaluate is not None:
        v = evaluate(model)
        if v < best[0]:
            best = (v, step, None)
        if best[2] is not None:
            model.load_state_dict(best[2])
        record.update(best_validation_loss=best[0], best_step=best[1])
    model.eval()
    log(f"{name}: {step} steps, {spectra:,} spectra in {seconds:.1f} s ({record['spectra_per_s']:,.0f}/s), stopped by "
        f"{record['stopped_by']}" + (f", best validation loss {best[0]:.4f} at step {best[1]}" if evaluate else ""))
    return record


def mean_loss(model, stream, rows, batch_size: int, device, bf16: bool, seed: int = 1234) -> float:
    """Validation loss (Gaussian NLL) of ``rows`` of an ArrayStream, the same pixels at every call."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(seed)
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(rows), batch_size):
            r = rows[i:i + batch_size]
            loss = model(**stream.batch(rows=r, generator=g)).loss
            total += float(loss) * len(r)
            n += len(r)
    return total / max(n, 1)


def predict_rows(model, stream, rows, label: str, processor, batch_size: int, device, bf16: bool, seed: int = 0):
    """(value, sigma) in physical units of ``label`` for ``rows`` of an ArrayStream, one pixel subset per star (all
    usable pixels when the window has at most context_length of them, as the pipeline reads it)."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(seed)
    k = stream.label_names.index(label)
    means, logvars = [], []
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(rows), batch_size):
            out = model(**{kk: v for kk, v in stream.batch(rows=rows[i:i + batch_size], generator=g).items()
                           if kk not in ("labels", "label_err")})
            means.append(out.mean[:, k].float().cpu())
            logvars.append(out.log_variance[:, k].float().cpu())
    m, lv = torch.cat(means).numpy()[:, None], torch.cat(logvars).numpy()[:, None]
    value, sigma = processor.unscale_labels(m, lv, [label])
    return value[:, 0], sigma[:, 0]


# ------------------------------------------------------------------------------------------------ main
def resolve_device(name):
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"device {name!r} asked for but CUDA is not available (use --device cpu for a dry run)")
    return torch.device(name)


def run(cfg: dict) -> dict:
    clock = Clock(cfg["budget_s"], cfg.get("reserve_s", 20), cfg["fractions"])
    observed = ObservedSets(cfg)  # before CUDA starts: the workers are spawned processes
    try:
        return _run(cfg, clock, observed)
    finally:
        observed.close()


def _run(cfg: dict, clock: Clock, observed: ObservedSets) -> dict:
    import torch

    from reproduce_paper import COLUMNS, PAPER, SPLITS, metrics_table
    from spectrafm_hf import SpectraFMConfig, SpectraFMModel, SpectraFMPipeline, SpectraFMProcessor, Spectrum, synth
    from spectrafm_hf.hub import atomic_directory
    from spectrafm_hf.synth.augment import RealismAugment
    from spectrafm_hf.training.freezing import freeze
    from spectrafm_hf.training.info import training_info, write_training_info
    from spectrafm_hf.training.metrics import label_metrics
    from spectrafm_hf.training.run import DataArguments, _window
    from spectrafm_hf.training.synthetic_stream import ArrayStream, SyntheticStream

    device = resolve_device(cfg.get("device", "auto"))
    bf16 = bool(cfg.get("bf16", True)) and device.type == "cuda"
    if device.type == "cuda" and cfg.get("tf32", True):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    instrument = cfg.get("instrument", "apogee")
    spec = synth.get_instrument(instrument)
    names = list(synth.LABEL_NAMES)
    out_dir = Path(cfg["output_dir"])
    record = {"device": str(device), "bf16": bf16, "budget_s": clock.budget_s, "stages": {}, "errors": {}}
    log(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", bf16 {bf16}, budget {clock.budget_s:.0f} s, observed workers {observed.workers}")

    # ---- model, processor, stage-1 stream
    s1 = cfg["stage1"]
    pool = synth.sample_labels(int(s1["label_pool"]), seed=seed, metal_poor_fraction=s1.get("metal_poor_fraction"),
                               instrument=instrument)
    config = SpectraFMConfig(label_names=names, **(cfg["model"].get("config_overrides") or {}))
    processor = SpectraFMProcessor(label_names=names, context_length=config.context_length)
    processor.fit_labels(pool.astype(np.float64), names)
    augment = RealismAugment.from_dict(dict(s1.get("augment") or {}, instrument=instrument)
                                       if s1.get("augment") else None)
    stream = SyntheticStream(processor, names, list(range(len(names))), pool, instrument=instrument, device=device,
                             snr=s1.get("snr"), continuum=s1.get("continuum", "pseudo"),
                             window_prob=float(s1.get("window_prob", 0.0)), window_width=s1.get("window_width"),
                             augment=augment, seed=seed)
    flux, good = stream.spectra(stream.pool[:2000])
    processor.fit_flux(flux[good].float().cpu().numpy())  # global median / MAD-std of the training flux
    processor.wavelength_coverage = [[float(spec.wavelength.min()), float(spec.wavelength.max())]]
    model = SpectraFMModel(config).to(device)
    n_params = model.num_parameters()
    n_embed = sum(p.numel() for p in model.embedding_layer.parameters())
    record["model"] = {"parameters": n_params, "non_embedding_parameters": n_params - n_embed,
                       "config_overrides": cfg["model"].get("config_overrides") or {}}
    log(f"model: {n_params:,} parameters ({n_params - n_embed:,} outside the embeddings), context "
        f"{config.context_length}; flux centre {processor.flux_center:.4f}, scale {processor.flux_scale:.4f}")

    # stage-1 validation: clean spectra at the training S/N (without augmentation), held on the device
    v = s1.get("validation") or {"n": 2000, "seed": seed + 99}
    v_labels = synth.sample_labels(int(v["n"]), seed=int(v["seed"]), metal_poor_fraction=s1.get("metal_poor_fraction"),
                                   instrument=instrument)
    v_stream = SyntheticStream(processor, names, list(range(5)), v_labels, instrument=instrument, device=device,
                               snr=s1.get("snr"), continuum=s1.get("continuum", "pseudo"), seed=int(v["seed"]))
    v_flux, _ = v_stream.spectra(v_stream.pool)
    fe_lo, fe_hi = (int(x) for x in cfg["fe_pixel_range"])
    s2_range = [int(x) for x in cfg["stage2_pixel_range"]]
    eval_bs = int(cfg["evaluation"].get("batch_size", 1024))

    def arrays(flux, labels, err, label_names, pixel_range, good=None, seed=0):
        cols = [names.index(n) for n in label_names]
        return ArrayStream(processor, label_names, [names.index(n) for n in label_names], flux, spec.wavelength,
                           np.asarray(labels)[:, cols], None if err is None else np.asarray(err)[:, cols], good=good,
                           device=device, pixel_range=pixel_range, seed=seed)

    v_fe = arrays(v_flux, v_labels, None, names, [fe_lo, fe_hi])

    def stage1_accuracy(m):
        rows = torch.arange(len(v_fe), device=device)
        pred, _ = predict_rows(m, v_fe, rows, "FE_H", processor, eval_bs, device, bf16)
        return label_metrics(pred, v_labels[:, 4])

    # ---- stage 1
    deadline = clock.deadline("stage1")
    log(f"stage 1: {deadline - time.time():.0f} s")
    record["stages"]["stage1"] = train_loop("stage 1", model, lambda: stream.batch(int(s1["batch_size"])), s1, deadline,
                                            device, bf16)
    acc = stage1_accuracy(model)
    record["stage1_fe_window_clean"] = {**acc, "paper_rmse": 0.254, "n_stars": int(v["n"]),
                                        "note": "clean synthetic validation spectra at the training S/N, Fe window"}
    log(f"stage 1: Fe-window [Fe/H] RMSE on clean validation spectra {acc['rmse']:.3f} (paper 0.254)")
    states = {"spectrafm_stage1": {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}}

    # ---- observed data (made by the workers meanwhile)
    deadline = clock.deadline("stage2")
    t = time.time()
    val = observed.collect("validation", wait=True)
    train = observed.collect("train", wait=False, deadline=deadline)
    keep = val["labels"][:, 4] > float(cfg["stage3"]["min_feh"])  # no metal-poor star in model selection
    val = {k: a[keep] for k, a in val.items()}
    log(f"observed sets: train {len(train['flux'])}, validation {len(val['flux'])} (metal-rich only), "
        f"{time.time() - t:.1f} s waiting")
    record["data"] = {"train_pool": int(len(train["flux"])), "validation": int(len(val["flux"])),
                      "validation_feh_min": float(val["labels"][:, 4].min())}

    # ---- stage 2
    s2 = cfg["stage2"]
    try:
        tr2 = arrays(train["flux"], train["labels"], train["label_err"], names, s2_range, seed=seed + 2)
        va2 = arrays(val["flux"], val["labels"], val["label_err"], names, s2_range)
        va_rows = torch.arange(len(va2), device=device)
        record["stages"]["stage2"] = train_loop(
            "stage 2", model, lambda: tr2.batch(int(s2["batch_size"])), s2, deadline, device, bf16,
            evaluate=lambda m: mean_loss(m, va2, va_rows, eval_bs, device, bf16))
        del tr2
    except Exception as e:  # a failed stage is recorded; the run goes on with the model it has
        record["errors"]["stage2"] = repr(e)
        log(f"stage 2 FAILED: {traceback.format_exc()}")
    states["spectrafm_stage2"] = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}

    # ---- stage 3: N metal-rich stars, Fe window, FE_H with its helper labels
    s3 = cfg["stage3"]
    deadline = clock.deadline("stage3")
    few_rng = np.random.default_rng(int(s3["selection_seed"]))
    candidates = np.flatnonzero(train["labels"][:, 4] > float(s3["min_feh"]))
    few = np.sort(few_rng.choice(candidates, min(int(s3["n_stars"]), candidates.size), replace=False))
    s3_labels = list(s3.get("labels") or ["FE_H"])
    if "FE_H" not in s3_labels:
        raise ValueError("stage3.labels must include FE_H")
    model3 = copy.deepcopy(model)
    trainable = freeze(model3, s3.get("freeze") or [])
    try:
        tr3 = arrays(train["flux"][few], train["labels"][few], train["label_err"][few], s3_labels, [fe_lo, fe_hi],
                     seed=seed + 3)
        va3 = arrays(val["flux"], val["labels"], val["label_err"], s3_labels, [fe_lo, fe_hi])
        va_rows = torch.arange(len(va3), device=device)
        bs3 = min(int(s3["batch_size"]), len(few))
        record["stages"]["stage3"] = train_loop(
            "stage 3", model3, lambda: tr3.batch(bs3), s3, deadline, device, bf16,
            evaluate=lambda m: mean_loss(m, va3, va_rows, eval_bs, device, bf16))
        record["stages"]["stage3"].update(trainable_parameters=int(trainable), n_stars=int(len(few)),
                                          labels=s3_labels, freeze=list(s3.get("freeze") or []))
    except Exception as e:
        record["errors"]["stage3"] = repr(e)
        log(f"stage 3 FAILED: {traceback.format_exc()}")
    states["spectrafm_stage3"] = {k: t.detach().cpu().clone() for k, t in model3.state_dict().items()}

    # ---- test set, scratch baseline
    deadline = clock.deadline("scratch_nn")
    test = observed.collect("test", wait=True)
    log(f"test: {len(test['flux'])} stars, {int((test['labels'][:, 4] < -1).sum())} with [Fe/H] < -1")
    preds = {}
    win = slice(fe_lo, fe_hi)
    y_few, e_few = train["labels"][few, 4].astype(np.float64), train["label_err"][few, 4].astype(np.float64)
    try:
        from spectrafm_hf.baselines import ScratchMLP

        nn_cfg = dict(cfg["scratch_nn"])
        fit_kw = {k: nn_cfg.pop(k) for k in ("steps", "eval_every") if k in nn_cfg}
        nn_cfg["device"] = str(device)
        X, Xv, Xt = train["flux"][few][:, win], val["flux"][:, win], test["flux"][:, win]
        yv, ev = val["labels"][:, 4].astype(np.float64), val["label_err"][:, 4].astype(np.float64)
        # time box: measure a short fit, then give the real one the steps that fit before the deadline
        t = time.time()
        probe = min(20, int(fit_kw.get("steps", 20)))
        ScratchMLP(**nn_cfg).fit(X, y_few, Xv, yv, y_err=e_few, y_val_err=ev, steps=probe,
                                 eval_every=int(fit_kw.get("eval_every", 1)), seed=seed)
        per_step = (time.time() - t) / probe
        steps = max(1, min(int(fit_kw.get("steps", 1000)), int(0.85 * (deadline - time.time()) / per_step)))
        t = time.time()
        mlp = ScratchMLP(**nn_cfg).fit(X, y_few, Xv, yv, y_err=e_few, y_val_err=ev, steps=steps,
                                       eval_every=int(fit_kw.get("eval_every", 1)), seed=seed)
        m, s = mlp.predict(Xt)
        preds["scratch_nn"] = pd.DataFrame({"FE_H_pred": m, "FE_H_sigma": s})
        record["stages"]["scratch_nn"] = {"steps": steps, "seconds": round(time.time() - t, 2),
                                          "best_epoch": int(mlp.best_epoch_), "parameters": int(mlp.num_parameters())}
        log(f"scratch NN: {steps} steps in {time.time() - t:.1f} s, best epoch {mlp.best_epoch_}")
    except Exception as e:
        record["errors"]["scratch_nn"] = repr(e)
        log(f"scratch NN FAILED: {traceback.format_exc()}")

    # ---- evaluation on the test Fe window (one subset = every usable window pixel, as the pipeline reads it)
    eval_deadline = clock.deadline("evaluation")
    # time box: a forward pass costs ~1/3 of a training step; if the stage-1 rate says the test set cannot be
    # predicted by every model in time, a random subset of it is (recorded in results.json)
    rate = 3.0 * max(record["stages"]["stage1"]["spectra_per_s"], 1e-9)
    fits = int(0.8 * max(eval_deadline - time.time(), 0.0) * rate / len(states))
    if fits < len(test["flux"]):
        keep = np.sort(np.random.default_rng(seed).choice(len(test["flux"]), max(fits, min(200, len(test["flux"]))),
                                                          replace=False))
        test = {k: a[keep] for k, a in test.items()}
        preds = {k: p.iloc[keep].reset_index(drop=True) for k, p in preds.items()}
        record["test_subsampled"] = {"n": int(len(keep)), "reason": "evaluation time box"}
        log(f"evaluation: time for {fits} of the test stars per model; predicting a random {len(keep)}")
    te = arrays(test["flux"], test["labels"], test["label_err"], ["FE_H"], [fe_lo, fe_hi])
    rows = torch.arange(len(te), device=device)
    eval_model = copy.deepcopy(model3)
    for name, state in states.items():
        eval_model.load_state_dict(state)
        m, s = predict_rows(eval_model, te, rows, "FE_H", processor, eval_bs, device, bf16)
        preds[name] = pd.DataFrame({"FE_H_pred": m, "FE_H_sigma": s})
    n_mp = int((test["labels"][:, 4] < -1).sum())
    test_frame = pd.DataFrame({"FE_H": test["labels"][:, 4].astype(np.float64),
                               "LOGG": test["labels"][:, 1].astype(np.float64)})
    table = metrics_table(preds, test_frame)

    def get(model_name, split, key="rmse"):
        row = table[(table.model == model_name) & (table.split == split)]
        return float(row[key].iloc[0]) if len(row) else float("nan")

    ratio = lambda split: get("scratch_nn", split) / get("spectrafm_stage3", split)  # noqa: E731
    record["goals"] = {
        "metal_poor_rmse_ratio_scratch_over_stage3": {
            "value": ratio("feh_lt_-1"), "goal": ">= 3 (stretch 4)",
            "paper": PAPER["paper_metal_poor_rmse_ratio_scratch_over_stage3"]},
        "whole_set_rmse_ratio_scratch_over_stage3": {"value": ratio("all"), "goal": ">= 1.7",
                                                     "paper": PAPER["paper_whole_set_rmse_ratio_scratch_over_stage3"]},
        "stage3_coverage68": {"value": {s: get("spectrafm_stage3", s, "coverage68") for s in SPLITS},
                              "goal": [0.63, 0.73]},
        "stage1_fe_window_rmse_clean": {"value": record["stage1_fe_window_clean"]["rmse"], "goal": "<= 0.30",
                                        "paper": 0.254},
    }
    record["data"].update({"test": int(len(test_frame)), "test_feh_lt_-1": n_mp, "stage3_stars": int(len(few)),
                           "stage3_feh_min": float(y_few.min()), "fe_pixel_range": [fe_lo, fe_hi],
                           "stage2_pixel_range": s2_range})
    record["rmse"] = {m: {s: get(m, s) for s in SPLITS} for m in table.model.unique()}
    log("results:\n" + table[table.split.isin(["all", "feh_lt_-1"])].to_string(index=False, float_format="%.3f"))

    # ---- write everything into ONE folder, atomically
    model3.load_state_dict(states["spectrafm_stage3"])
    for p in model3.parameters():
        p.requires_grad_(True)
    final = model3.to("cpu").float()
    record["total_seconds_before_save"] = round(time.time() - T0, 1)
    info = training_info(config={k: v for k, v in cfg.items() if not k.startswith("_")},
                         data=record["data"], seed=seed, recipe="scripts/gpu/paper_scale.py",
                         stages={k: {kk: vv for kk, vv in v.items() if kk != "history"}
                                 for k, v in record["stages"].items()},
                         total_parameters=int(n_params))
    predictions = pd.DataFrame({"FE_H_true": test_frame["FE_H"], "LOGG_true": test_frame["LOGG"],
                                **{f"{m}_{c}": p[c].to_numpy() for m, p in preds.items() for c in p.columns}})
    with atomic_directory(out_dir) as tmp:
        final.save_pretrained(tmp, max_shard_size="15MB")
        processor.save_pretrained(tmp)
        write_training_info(tmp, info)
        table.to_csv(Path(tmp) / "results.csv", index=False, float_format="%.6g", columns=COLUMNS)
        predictions.to_csv(Path(tmp) / "predictions.csv", index=False, float_format="%.6g")
        (Path(tmp) / "results.json").write_text(json.dumps(record, indent=2, default=float))
        (Path(tmp) / "paper_scale_config.yaml").write_text(yaml.safe_dump(
            {k: v for k, v in cfg.items() if not k.startswith("_")}, sort_keys=False))
        (Path(tmp) / "run.log").write_text(_LOG.getvalue())
    log(f"wrote {out_dir} ({time.time() - T0:.1f} s since start)")

    # ---- the saved folder, loaded back with the pipeline, against the in-run predictions
    try:
        n_check = min(int(cfg["evaluation"].get("pipeline_check_stars", 200)), len(test_frame))
        lo, hi = _window(DataArguments(pixel_range=[fe_lo, fe_hi]))
        pipe = SpectraFMPipeline.from_pretrained(out_dir, device=device, bf16=bf16)
        spectra = [Spectrum(wavelength=spec.wavelength, flux=test["flux"][i]).crop(lo, hi) for i in range(n_check)]
        got = pipe.predict(spectra, labels=["FE_H"])["FE_H"].to_numpy()
        diff = np.abs(got - preds["spectrafm_stage3"]["FE_H_pred"].to_numpy()[:n_check])
        record["pipeline_check"] = {"n": n_check, "max_abs_diff_feh": float(diff.max()),
                                    "median_abs_diff_feh": float(np.median(diff))}
        log(f"pipeline check: {n_check} test stars, max |[Fe/H] pipeline - in-run| = {diff.max():.2e}")
    except Exception as e:
        record["pipeline_check"] = {"error": repr(e)}
        log(f"pipeline check FAILED: {traceback.format_exc()}")
    record["total_seconds"] = round(time.time() - T0, 1)
    tmp_json = out_dir / ".results.json.tmp"
    tmp_json.write_text(json.dumps(record, indent=2, default=float))
    os.replace(tmp_json, out_dir / "results.json")
    (out_dir / "run.log").write_text(_LOG.getvalue())
    print(json.dumps({k: v["value"] for k, v in record["goals"].items()}, indent=1, default=float))
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML preset: scripts/configs/paper_scale_gpu.yaml (or _tiny.yaml)")
    parser.add_argument("--output_dir")
    parser.add_argument("--budget_s", type=float)
    parser.add_argument("--device")
    parser.add_argument("--workers", type=int, help="observed-domain generator processes (0 = in this process)")
    args = parser.parse_args(argv)
    path = Path(args.config)
    if not path.is_file():
        raise SystemExit(f"config file not found: {path}")
    from spectrafm_hf.training.presets import read_yaml  # 5e-4 read as a number
    cfg = read_yaml(path.read_text()) or {}
    required = ("output_dir", "budget_s", "fractions", "model", "observed", "test", "stage1", "stage2", "stage3",
                "scratch_nn", "evaluation", "fe_pixel_range", "stage2_pixel_range")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise SystemExit(f"{path}: missing keys {missing}")
    for key in ("output_dir", "budget_s", "device"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.workers is not None:
        cfg["observed"]["workers"] = args.workers
    cfg["_config_file"] = str(path)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
