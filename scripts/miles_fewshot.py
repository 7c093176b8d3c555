#!/usr/bin/env python
"""The paper's few-shot transfer experiment on a REAL instrument: MILES (optical, R ~ 2000, flux-calibrated).

    python scripts/convert_bossbrain.py                                   # once: the optical emulator (PyPI)
    python scripts/miles_fewshot.py scripts/configs/miles_fewshot_cpu.yaml    # CPU preset (~1.5 CPU-hours)
    python scripts/miles_fewshot.py scripts/configs/miles_fewshot_tiny.yaml   # toy scale, committed 40-star subset
    ... [--output_dir DIR] [--results_dir DIR] [--results_csv FILE] [--data_dir MILES_DATA]

1. **Pretraining** (synthetic only): SpectraFM (a small fresh model) on spectra of the bossbrain optical emulators
   (`spectrafm_hf.synth.optical`; Teff 3500-6000 K, logg 0-3.5, [M/H] -2.5..0.5 uniform, alpha trend; Teff on the
   red giant branch instead with ``synthetic.giant_branch``, tried and not adopted), degraded
   to MILES: FWHM 2.5 A, vacuum, the MILES pixel grid, S/N 100. Labels TEFF, LOGG, FE_H (= the emulator's [M/H]).
2. **Few-shot fine-tuning** on ``n_stars`` (100) MILES stars with [Fe/H] > -1 drawn from the MILES *train* split
   (several seeded draws), [Fe/H] only. Baselines on the same stars: SpectraFM without pretraining (same
   architecture, fresh, every weight trained), the paper's scratch network (`ScratchMLP`) and ridge regression.
   The pretrained model is fine-tuned as in the paper's stage 3 (``finetune_pretrained``: decoder and second
   encoder block frozen); ``spectrafm_synthetic_only`` is the pretrained model before fine-tuning (no MILES star);
   ``ablations`` adds other fine-tuning recipes of the pretrained model as further models (optionally on some
   draws only). An ablation with ``calibrate: direct|inverse`` is no fine-tune but a [Fe/H] slope and zero point
   fitted on the draw's stars (``method`` of `SpectraFMPipeline.calibrate_labels`) on the pretrained network
   (``spectrafm_affine``), or, with ``calibrates: <model>``, on that model's fine-tune of the same stars (reused,
   not trained again).
3. **Test**: every other labelled MILES star in the emulator's Teff range (the rest of the train split and the
   whole test split; the validation split is never tested), reported for ``all``, ``feh_lt_-1``, ``feh_ge_-1``,
   ``giants`` (logg < 3.5) and ``dwarfs`` (logg >= 3.5, outside the emulator's logg range).

``dataset.wavelength_range: [lo, hi]`` (vacuum Angstrom) reads only those MILES pixels, and the synthetic spectra
are made on the same cut grid; both are normalised over the range itself.

Hygiene: checkpoints, MLP epochs and ridge alphas are chosen on the MILES *validation* split's stars with
[Fe/H] > -1 only; no test star and no metal-poor MILES star is seen before the final evaluation (the pretraining
sees only synthetic spectra, selected on a synthetic validation set). Both MILES and synthetic spectra are
divided by the same running-percentile pseudo-continuum (`pseudo_continuum_normalize`), since MILES is
flux-calibrated and the emulator continuum-normalised. Outputs: ``results_csv`` (experiment, model, label, split,
n, bias, rmse, robust_scatter, coverage68, mae, coverage95, draw), ``miles_fewshot_fe_h.png`` and
``miles_summary.json`` in ``results_dir``; per-star predictions under ``output_dir/predictions`` (each training run
and prediction is reused when it exists; delete it to redo it).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spectrafm_hf.training.presets import load_preset

HERE = Path(__file__).resolve().parent
COLUMNS = ["experiment", "model", "label", "split", "n", "bias", "rmse", "robust_scatter", "coverage68", "mae",
           "coverage95", "draw"]
EXPERIMENT = "miles_fewshot"
LABELS = ["TEFF", "LOGG", "FE_H"]


def _real_data_module():
    spec = importlib.util.spec_from_file_location("real_data", HERE / "real_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rd = _real_data_module()


def log(msg):
    print(f"[miles_fewshot {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ data
def miles_tables(cfg):
    """MILES as (arrays, normalised flux, usable mask, in-domain mask)."""
    from spectrafm_hf.data.real import load_miles_arrays
    from spectrafm_hf.synth.optical import pseudo_continuum_normalize

    d = cfg["dataset"]
    a = load_miles_arrays(d.get("data_dir"))
    if d.get("wavelength_range"):  # the pixels read, before normalising: MILES and synthetic spectra alike
        lo, hi = (float(v) for v in d["wavelength_range"])
        cols = (a.wavelength >= lo) & (a.wavelength <= hi)
        if not cols.any():
            raise ValueError(f"dataset.wavelength_range {[lo, hi]} holds no MILES pixel (the grid spans "
                             f"{a.wavelength[0]:.0f}-{a.wavelength[-1]:.0f} A, vacuum)")
        a = dataclasses.replace(a, wavelength=a.wavelength[cols], flux=a.flux[:, cols],
                                mask=None if a.mask is None else a.mask[:, cols],
                                ivar=None if a.ivar is None else a.ivar[:, cols])
    good = a.mask if a.mask is not None else np.ones(a.flux.shape, bool)
    good = good & (a.flux != 0)
    flux, _ = pseudo_continuum_normalize(a.flux, good, **(cfg.get("normalize") or {}))
    good = good & np.isfinite(flux)
    keep = np.ones(len(a), bool)
    for name in LABELS:
        keep &= np.isfinite(a.labels[name])
    for name, (lo, hi) in (cfg.get("domain") or {}).items():
        v = a.labels[name]
        keep &= (v >= lo if lo is not None else True) & (v <= hi if hi is not None else True)
    return a, flux, good, keep


def to_dataset(a, flux, good, index):
    import datasets

    from spectrafm_hf.data.schema import arrays_to_table, features

    index = np.asarray(index, int)
    values = np.stack([a.labels[n][index] for n in LABELS], axis=1)
    mask = [g if not g.all() else np.zeros(0, bool) for g in good[index]]
    table = arrays_to_table(object_id=list(a.object_id[index]), instrument="miles", wavelength=a.wavelength,
                            flux=np.where(good[index], flux[index], 0.0), labels=values, label_names=LABELS,
                            mask=mask, lsf_sigma=a.lsf_sigma)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features(LABELS)))


def fewshot_indices(cfg, a, keep, draw_seeds) -> dict:
    """MILES row indices: {"train_pool", "val" (validation stars with [Fe/H] > min_feh), "testable" (every in-domain
    star outside the validation split), "few": {draw: the draw's few-shot stars}}."""
    e = cfg["fewshot"]
    min_feh = float(e.get("min_feh", -1.0))
    feh = a.labels["FE_H"]
    split_of = np.empty(len(a), object)
    for name, idx in a.splits.items():
        split_of[idx] = name
    train_pool = np.flatnonzero(keep & (split_of == "train") & (feh > min_feh))
    n = int(e["n_stars"])
    few = {draw: np.sort(np.random.default_rng(int(draw)).choice(train_pool, min(n, train_pool.size), replace=False))
           for draw in draw_seeds}
    return {"train_pool": train_pool, "val": np.flatnonzero(keep & (split_of == "validation") & (feh > min_feh)),
            "testable": np.flatnonzero(keep & (split_of != "validation")), "few": few}


def miles_sets(cfg, draw_seeds, tables=None):
    """{"val": validation-split stars with [Fe/H] > min_feh, draw: (few-shot train, test)} as Datasets (from
    ``tables``, `miles_tables`'s output, when the caller has read them already)."""
    a, flux, good, keep = tables if tables is not None else miles_tables(cfg)
    min_feh = float(cfg["fewshot"].get("min_feh", -1.0))
    feh = a.labels["FE_H"]
    idx = fewshot_indices(cfg, a, keep, draw_seeds)
    train_pool, val, testable = idx["train_pool"], idx["val"], idx["testable"]
    out = {"val": to_dataset(a, flux, good, val), "wavelength": a.wavelength,
           "counts": {"in_domain": int(keep.sum()), "train_pool_feh_gt_min": int(train_pool.size),
                      "validation_feh_gt_min": int(val.size)}}
    for draw in draw_seeds:
        few = idx["few"][draw]
        test = np.setdiff1d(testable, few)
        if (feh[few] <= min_feh).any() or (feh[val] <= min_feh).any():
            raise AssertionError("a few-shot training or validation star is metal-poor")
        if set(few) & set(test) or set(val) & (set(few) | set(test)):
            raise AssertionError("a star is in two sets")
        out[draw] = (to_dataset(a, flux, good, few), to_dataset(a, flux, good, test))
    return out


def star_groups(teff, logg, feh, min_feh: float = -1.0) -> dict:
    """Boolean masks of the star types the MILES benchmarks report: metal-poor ([Fe/H] < ``min_feh``) cool giants
    (logg < 3.5, Teff <= 5000 K), warm giants and dwarfs (logg >= 3.5), and metal-rich cool giants."""
    teff, logg, feh = (np.asarray(v, float) for v in (teff, logg, feh))
    poor, giant, cool = feh < min_feh, logg < 3.5, teff <= 5000.0
    return {"metal_poor_cool_giants": poor & giant & cool, "metal_poor_warm_giants": poor & giant & ~cool,
            "metal_poor_dwarfs": poor & ~giant, "metal_rich_cool_giants": ~poor & giant & cool}


def committed_scratch_rmse(draws, table=None, split: str = "feh_lt_-1") -> float:
    """The scratch NN's [Fe/H] RMSE on ``split``, mean over ``draws``, from the preset's committed table: the
    numerator of the ratio a benchmark reports without training the baseline again."""
    t = pd.read_csv(table or HERE.parent / "benchmarks/results/real_data_miles.csv")
    t = t[(t.model == "scratch_nn") & (t.label == "FE_H") & (t.split == split)]
    return float(t.set_index("draw").loc[[int(d) for d in draws], "rmse"].mean())


def continuum_colours(cfg, a, good, lo=None, hi=None, bands: int = 8) -> np.ndarray:
    """(n_stars, bands): the shape of each star's flux-calibrated continuum, which the normalised flux drops. The log
    of the pseudo-continuum averaged over ``bands`` equal wavelength bands from ``lo`` to ``hi`` (Angstrom; default
    the whole grid), less its mean over the bands (so overall brightness cancels and colours remain)."""
    from spectrafm_hf.synth.optical import pseudo_continuum_normalize

    continuum = pseudo_continuum_normalize(a.flux, good, **(cfg.get("normalize") or {}))[1]
    w = a.wavelength
    edges = np.linspace(w[0] if lo is None else lo, w[-1] if hi is None else hi, bands + 1)
    logs = np.stack([np.log(continuum[:, (w >= l) & (w <= h)]).mean(1) for l, h in zip(edges[:-1], edges[1:])], 1)
    return logs - logs.mean(1, keepdims=True)


def band_colours(wavelength, flux, good, lo: float, hi: float, bands: int) -> np.ndarray:
    """(n_stars, bands): the log of the mean flux-calibrated flux in ``bands`` equal wavelength bands from ``lo`` to
    ``hi`` (Angstrom), less its mean over the bands. Unlike `continuum_colours` no pseudo-continuum is taken, so any
    instrument's flux-calibrated spectra give the same colours (Gaia XP's 2 nm samples as MILES's 0.9 A pixels)."""
    w = np.asarray(wavelength, float)
    flux = np.where(good, flux, np.nan)
    edges = np.linspace(lo, hi, bands + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = np.stack([np.log(np.nanmean(flux[:, (w >= l) & (w <= h)], 1)) for l, h in zip(edges[:-1], edges[1:])], 1)
    return logs - logs.mean(1, keepdims=True)


def xp_colour_teff(lo: float, hi: float, bands: int, max_ak: float, xp_data_dir=None):
    """A Teff from `band_colours` learnt on Gaia XP x APOGEE DR17: gradient-boosted trees on the XP training split's
    FGKM stars (3000-7000 K) with A_K (APOGEE's ``AK_TARG``) below ``max_ak``, as MILES's stars are nearby and barely
    reddened. Returns (predict(colours) -> Teff, {"n_train", "validation_rmse", "validation_bias"} on the XP
    validation split's stars under the same cuts). No MILES star is used."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from spectrafm_hf.data.real import load_gaia_xp_arrays

    xp = load_gaia_xp_arrays(xp_data_dir)
    good = np.ones(xp.flux.shape, bool) if xp.mask is None else xp.mask
    x = band_colours(xp.wavelength, xp.flux, good, lo, hi, bands)
    teff, ak = xp.labels["TEFF"], xp.labels.get("AK_TARG", np.full(len(xp), np.nan))
    usable = np.isfinite(x).all(1) & (teff > 3000) & (teff < 7000) & (np.nan_to_num(ak, nan=np.inf) < max_ak)
    train, val = (np.intersect1d(xp.splits[s], np.flatnonzero(usable)) for s in ("train", "validation"))
    if train.size < 50:
        raise ValueError(f"only {train.size} Gaia XP training stars have A_K below {max_ak}: raise it")
    model = HistGradientBoostingRegressor(max_iter=500, random_state=0).fit(x[train], teff[train])
    err = model.predict(x[val]) - teff[val]
    return model.predict, {"n_train": int(train.size), "validation_rmse": float(np.sqrt(np.mean(err ** 2))),
                           "validation_bias": float(err.mean())}


def synthetic_spec(cfg) -> dict:
    """What the cached synthetic spectra were made from (the wavelength range only when one is set, so caches made
    before it stay valid)."""
    window = (cfg.get("dataset") or {}).get("wavelength_range")
    return {**cfg["synthetic"], **({"wavelength_range": list(window)} if window else {})}


def synthetic_sets(cfg, wavelength, cache: Path | None = None):
    """(train, validation) synthetic Datasets; saved under ``cache`` (``save_to_disk``) and reused from there."""
    import datasets

    from spectrafm_hf.synth.optical import load_optical_emulator, random_optical_emulator, synthetic_miles_dataset

    if cache is not None and (cache / "validation" / "dataset_info.json").is_file():
        spec = json.loads((cache / "synthetic.json").read_text())
        if spec == synthetic_spec(cfg):
            log(f"synthetic: reusing {cache}")
            return datasets.load_from_disk(str(cache / "train")), datasets.load_from_disk(str(cache / "validation"))
    s = dict(cfg["synthetic"])
    path = s.pop("emulator", None)
    em = random_optical_emulator(seed=0) if path == "random" else load_optical_emulator(path)
    kw = {k: s[k] for k in ("snr", "fwhm", "model_fwhm", "abundance_offsets", "giant_branch") if k in s}
    kw["normalize"] = cfg.get("normalize") or {}
    seed = int(s.get("seed", 0))
    t = time.time()
    train = synthetic_miles_dataset(int(s["n_train"]), wavelength, em, seed=seed, label_names=LABELS, **kw)
    val = synthetic_miles_dataset(int(s["n_validation"]), wavelength, em, seed=seed + 1, label_names=LABELS, **kw)
    log(f"synthetic: {len(train)} + {len(val)} spectra from {em.source} in {time.time() - t:.0f} s")
    if cache is not None:
        train.save_to_disk(str(cache / "train"))
        val.save_to_disk(str(cache / "validation"))
        (cache / "synthetic.json").write_text(json.dumps(synthetic_spec(cfg)))
    return train, val


# ------------------------------------------------------------------------------------------------ experiment
def finetune_fields(e: dict, recipe: dict, start, out: Path):
    """(run fields, labels, steps) of one fine-tune: ``fewshot.finetune`` overlaid by ``recipe`` when ``start`` (the
    pretrained model) is given; rehearsal reads the pretraining's synthetic spectra in ``out`` unless told otherwise."""
    extra = dict(e.get("finetune") or {})
    if start is not None:  # a fine-tune of the pretrained model
        extra.update(recipe, model_name_or_path=str(start), config_overrides={})
    labels = extra.pop("labels", ["FE_H"])  # helper labels: FE_H trained together with TEFF and LOGG
    steps = extra.pop("steps", e["steps"])  # a recipe may carry its own budget
    if extra.get("rehearsal"):  # rehearsal defaults to this experiment's own pretraining spectra
        extra["rehearsal"] = {"data_dir": str(out / "synthetic" / "train"), **extra["rehearsal"]}
    return extra, labels, steps


def run(cfg):
    from spectrafm_hf.training.metrics import label_metrics
    from spectrafm_hf.training.run import train_or_reuse

    e = cfg["fewshot"]
    if e.get("label_affine"):  # before session 43: its row is now an ablation like the other calibrations
        raise ValueError("fewshot.label_affine: write it as the ablation `spectrafm_affine: {calibrate: direct}`")
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    results = Path(cfg.get("results_dir") or out / "results")
    results.mkdir(parents=True, exist_ok=True)
    csv_path = Path(cfg.get("results_csv") or results / "real_data_miles.csv")
    t0 = time.time()
    draws = [int(d) for d in e.get("draws", [77])]
    sets = miles_sets(cfg, draws)
    val = sets["val"]
    log(f"MILES: {sets['counts']}, validation ([Fe/H] > {e.get('min_feh', -1.0)}) {len(val)}")
    runner = rd.Runner(cfg, out)

    pre_dir = out / "pretrain_synthetic"
    pretrained, synthetic_validation = None, None
    if cfg.get("pretrain"):
        syn_train, syn_val = synthetic_sets(cfg, sets["wavelength"], out / "synthetic")
        pre = dict(cfg["pretrain"])
        pretrained = train_or_reuse(rd.spectrafm_values(cfg, pre_dir, pre.pop("steps"), LABELS, **pre),
                                    splits=(syn_train, syn_val, None), log=lambda m: log(f"pretrain: {m}"))
        # how well pretraining learned the labels, on synthetic spectra it never trained on (reported first)
        pred = runner.cached("pretrained_synthetic_validation", lambda: rd.predict_spectrafm(pretrained, syn_val, LABELS))
        truth = rd.frame(syn_val, LABELS)
        synthetic_validation = {n: {k: v for k, v in label_metrics(pred[f"{n}_pred"], truth[n]).items()
                                    if k in ("rmse", "bias")} for n in LABELS}
        poor = truth.FE_H.to_numpy() < -1
        synthetic_validation["FE_H"]["rmse_feh_lt_-1"] = label_metrics(pred.FE_H_pred[poor], truth.FE_H[poor])["rmse"]
        log(f"pretrained model on {len(syn_val)} synthetic validation spectra: {synthetic_validation}")
    Xv, Yv = rd.flux_matrix(val), rd.frame(val, ["FE_H"])[["FE_H"]].to_numpy()
    fine_pre = dict(e.get("finetune_pretrained") or {})  # over fewshot.finetune for the pretrained model
    rows, truths, nll, extrapolation = [], {}, {}, {}
    check = e.get("extrapolation_check")  # every recipe also fitted above a cut, scored below it (real_data.py)
    for draw in draws:
        few, test = sets[draw]
        if check:
            cut, few_kept, val_kept, val_scored = rd.extrapolation_sets(few, val, check)
            extrapolation.setdefault("cut_feh", {})[str(draw)] = round(cut, 4)
        truth = rd.frame(test, ["FE_H", "LOGG", "TEFF"])
        truths[draw] = truth
        variants = {"spectrafm_no_pretraining": (None, {})}
        if pretrained is not None:
            variants["spectrafm"] = (pretrained, fine_pre)
            for name, v in (e.get("ablations") or {}).items():  # other fine-tuning recipes of the pretrained model
                v = dict(v)
                if draw in [int(d) for d in v.pop("draws", draws)]:
                    variants[name] = (pretrained, v)
        for model, (start, recipe) in variants.items():
            recipe = dict(recipe)
            calibrate = recipe.pop("calibrate", None)  # an affine [Fe/H] line fitted on the draw's stars
            trained = recipe.pop("calibrates", None)  # ... on this model's fine-tune (else the untouched network)
            if trained is not None:
                start, recipe = variants[trained]
            extra, labels, steps = finetune_fields(e, recipe, start, out)

            def fit(run_name, fit_stars, val_stars, train_name=None):
                if recipe.get("linear_probe"):  # no training: a line from the frozen pretrained model
                    probe = {k: recipe[k] for k in ("method", "shrink", "features") if k in recipe}
                    return rd.linear_probe_spectrafm(start, fit_stars, val_stars, ["FE_H"], out / run_name, **probe)
                network = start
                if calibrate is None or trained is not None:
                    network = train_or_reuse(rd.spectrafm_values(cfg, out / (train_name or run_name), steps, labels,
                                                                 **extra),
                                             splits=(fit_stars, val_stars, None), log=lambda m: log(f"draw {draw}: {m}"))
                if calibrate is not None:
                    return rd.affine_spectrafm(network, fit_stars, ["FE_H"], out / run_name, method=calibrate)
                return network

            source = f"{trained or model}_draw{draw}"  # the training run (another model's when it calibrates one)
            final = fit(f"{model}_draw{draw}", few, val, source)
            pred = runner.cached(f"{model}_draw{draw}", lambda: rd.predict_spectrafm(final, test, ["FE_H"]))
            rows += rd.metrics_rows(EXPERIMENT, model, pred, truth, ["FE_H"], draw=draw)
            if start is not None:
                nll.setdefault(model, []).append(rd.validation_nll(runner, f"{model}_draw{draw}", final, val))
            if start is not None and check:
                run_name = rd.extrapolation_run_name(f"{model}_draw{draw}", check)
                refit = fit(run_name, few_kept, val_kept, rd.extrapolation_run_name(source, check))
                score = rd.below_cut_rmse(runner, run_name, refit, val_scored)
                extrapolation.setdefault("rmse", {}).setdefault(model, []).append(score)
        if pretrained is not None and e.get("report_synthetic_only", True):  # no MILES star seen at all
            pred = runner.cached(f"spectrafm_synthetic_only_draw{draw}",
                                 lambda: rd.predict_spectrafm(pretrained, test, ["FE_H"]))
            rows += rd.metrics_rows(EXPERIMENT, "spectrafm_synthetic_only", pred, truth, ["FE_H"], draw=draw)
        X, Y = rd.flux_matrix(few), rd.frame(few, ["FE_H"])[["FE_H"]].to_numpy()
        Xt = rd.flux_matrix(test)
        for kind, params in (e.get("baselines") or {}).items():
            name = "scratch_nn" if kind == "mlp" else kind
            pred = runner.cached(f"{name}_draw{draw}",
                                 lambda: rd.fit_baseline(kind, params, X, Y, Xv, Yv, Xt, ["FE_H"]))
            rows += rd.metrics_rows(EXPERIMENT, name, pred, truth, ["FE_H"], draw=draw)
    table = pd.DataFrame(rows)[COLUMNS]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_suffix(".tmp")
    table.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(csv_path)
    summary = summarise(table, cfg)
    summary["data"] = {**sets["counts"], "n_stars": int(e["n_stars"]), "draws": draws,
                       "test_stars": {str(d): len(truths[d]) for d in draws},
                       "test_feh_lt_-1": {str(d): int((truths[d].FE_H < -1).sum()) for d in draws},
                       "domain": cfg.get("domain"), "normalize": cfg.get("normalize"),
                       "synthetic": cfg.get("synthetic"), "pretrain_steps": (cfg.get("pretrain") or {}).get("steps")}
    if synthetic_validation is not None:
        summary["pretrained_synthetic_validation"] = synthetic_validation
    summary["recipe_selection"] = {**recipe_selection(out, [m for m in dict.fromkeys(table.model)], draws),
                                   **(rd.nll_selection(nll, extrapolation, check) if nll else {})}
    summary["metal_poor_by_star_type"] = metal_poor_by_star_type(runner, table, truths)
    summary["figure"] = str(figure(cfg, runner, table, truths[draws[0]], draws[0], results))
    (results / "miles_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    log(f"done in {time.time() - t0:.0f} s: {csv_path}, {results / 'miles_summary.json'}")
    show = table[table.split.isin(["all", "feh_lt_-1"])]
    with pd.option_context("display.width", 200, "display.max_rows", 400):
        print(show.to_string(index=False, float_format="%.3f"))
    return summary


def metal_poor_by_star_type(runner, table, truths) -> dict:
    """Where the metal-poor error lives: [Fe/H] RMSE and bias of the [Fe/H] < -1 test stars, cool (Teff <= 5000 K)
    and warm giants and the dwarfs (logg >= 3.5), pooled over the draws, per model (cached predictions)."""
    out = {}
    for model in dict.fromkeys(table.model):
        err, kinds = [], []
        for draw, truth in truths.items():
            path = runner.pred_dir / f"{model}_draw{draw}.csv"
            if not path.is_file():
                continue
            poor = (truth.FE_H < -1).to_numpy()
            err.append((pd.read_csv(path).FE_H_pred.to_numpy() - truth.FE_H.to_numpy())[poor])
            t = truth[poor]
            kinds.append(np.where(t.LOGG >= 3.5, "dwarfs", np.where(t.TEFF <= 5000, "cool_giants", "warm_giants")))
        if err:
            err, kinds = np.concatenate(err), np.concatenate(kinds)
            out[model] = {k: {"n": int((kinds == k).sum()), "rmse": float(np.sqrt(np.mean(err[kinds == k] ** 2))),
                              "bias": float(np.mean(err[kinds == k]))}
                          for k in ("cool_giants", "warm_giants", "dwarfs") if (kinds == k).any()}
    return out


def recipe_selection(out: Path, models, draws) -> dict:
    """Each fine-tuned SpectraFM's validation loss (its best checkpoint on the metal-rich MILES validation stars, from
    training_info.json), averaged over draws: the only data a recipe may be chosen on here. Losses of runs trained on
    the same labels compare; [Fe/H]-only runs are listed apart."""
    losses = {}
    for model in models:
        if not model.startswith("spectrafm") or model == "spectrafm_no_pretraining":
            continue
        vals = []
        for draw in draws:
            info = out / f"{model}_draw{draw}" / "final" / "training_info.json"
            if info.is_file():
                d = json.loads(info.read_text())
                vals.append((d.get("metrics", {}).get("eval_loss"), tuple(d.get("data", {}).get("labels") or ())))
        if vals and all(v is not None for v, _ in vals):
            losses.setdefault(" ".join(vals[0][1]), {})[model] = float(np.mean([v for v, _ in vals]))
    return {"validation_loss_by_labels": losses,
            "lowest": {k: min(v, key=v.get) for k, v in losses.items()}}


def summarise(table: pd.DataFrame, cfg) -> dict:
    stats = {}
    for (model, split), g in table.groupby(["model", "split"]):
        stats.setdefault(model, {})[split] = {
            "n_mean": float(g.n.mean()), "draws": int(len(g)),
            **{f"{k}_{s}": float(getattr(g[k], s)(**({"ddof": 0} if s == "std" else {})))
               for k in ("rmse", "bias", "robust_scatter", "coverage68", "coverage95") for s in ("mean", "std")}}
    out = {"experiment": EXPERIMENT, "label": "FE_H", "fe_h": stats,
           "goal": {"metal_poor_rmse_ratio_scratch_over_spectrafm": ">= 2 (stretch 3)",
                    "whole_set_rmse_spectrafm": "<= scratch_nn", "coverage68_spectrafm_feh_ge_-1": [0.63, 0.73]}}
    if "scratch_nn" in stats and "spectrafm" in stats:
        mp = "feh_lt_-1"
        ratio = stats["scratch_nn"][mp]["rmse_mean"] / stats["spectrafm"][mp]["rmse_mean"]
        per_draw = {}
        for d, g in table[(table.split == mp)].groupby("draw"):
            r = g.set_index("model").rmse
            per_draw[str(int(d))] = float(r["scratch_nn"] / r["spectrafm"])
        cov = stats["spectrafm"]["feh_ge_-1"]["coverage68_mean"]
        whole = stats["spectrafm"]["all"]["rmse_mean"], stats["scratch_nn"]["all"]["rmse_mean"]
        out["result"] = {"metal_poor_rmse_ratio": ratio, "metal_poor_rmse_ratio_per_draw": per_draw,
                         "ratio_goal_met": bool(ratio >= 2.0), "whole_set_rmse": {"spectrafm": whole[0],
                                                                                  "scratch_nn": whole[1]},
                         "whole_set_goal_met": bool(whole[0] <= whole[1]), "coverage68_feh_ge_-1": cov,
                         "coverage68_goal_met": bool(0.63 <= cov <= 0.73),
                         "coverage68_all": stats["spectrafm"]["all"]["coverage68_mean"],
                         "coverage68_metal_poor": stats["spectrafm"][mp]["coverage68_mean"]}
        for other in ("spectrafm_no_pretraining", "ridge"):
            if other in stats:
                out["result"][f"metal_poor_rmse_ratio_{other}_over_spectrafm"] = (
                    stats[other][mp]["rmse_mean"] / stats["spectrafm"][mp]["rmse_mean"])
        out["result"]["metal_poor_rmse_ratio_scratch_over_each_model"] = {
            m: stats["scratch_nn"][mp]["rmse_mean"] / stats[m][mp]["rmse_mean"] for m in stats}
    if cfg.get("notes"):
        out["notes"] = list(cfg["notes"])
    return out


def figure(cfg, runner, table, truth, draw, results: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in dict.fromkeys(table.model) if (table[table.model == m].draw == draw).any()]
    fig, axes = plt.subplots(1, len(models), figsize=(4.0 * len(models), 4.2), squeeze=False)
    giant = truth.LOGG.to_numpy() < 3.5
    for ax, model in zip(axes[0], models):
        pred = pd.read_csv(runner.pred_dir / f"{model}_draw{draw}.csv")
        x, y, s = truth.FE_H.to_numpy(), pred.FE_H_pred.to_numpy(), pred.FE_H_sigma.to_numpy()
        ax.axvspan(-3.0, -1.0, color="0.93", zorder=0)
        ax.errorbar(x[giant], y[giant], yerr=s[giant], fmt="o", ms=3, lw=0.5, alpha=0.7, label="giants (logg<3.5)")
        ax.errorbar(x[~giant], y[~giant], yerr=s[~giant], fmt="s", ms=3, lw=0.5, alpha=0.6,
                    label="dwarfs (logg>=3.5)")
        ax.plot([-3, 1], [-3, 1], "k-", lw=0.8)
        r = table[(table.model == model) & (table.draw == draw)].set_index("split")
        ax.set_title(f"{model}\nRMSE all {r.rmse['all']:.2f}, [Fe/H]<-1 {r.rmse['feh_lt_-1']:.2f}", fontsize=9)
        ax.set_xlim(-3, 1)
        ax.set_ylim(-3, 1)
        ax.set_xlabel("MILES [Fe/H]")
        ax.set_ylabel("predicted [Fe/H]")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"MILES few-shot: {cfg['fewshot']['n_stars']} stars with [Fe/H] > -1 (draw {draw}); "
                 "grey: metal-poor, never seen", fontsize=10)
    fig.tight_layout()
    path = results / "miles_fewshot_fe_h.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--output_dir")
    parser.add_argument("--results_dir")
    parser.add_argument("--results_csv")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset value by its dotted path, VALUE read as YAML (repeatable), e.g. "
                             "--set xp_fewshot.pretrain.steps=30000")
    parser.add_argument("--data_dir", help="MILES data (a mangadap wheel, FITS folder or the shared npz parts)")
    args = parser.parse_args(argv)
    cfg = load_preset(args.config, args.set)
    for key in ("output_dir", "results_dir", "results_csv"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    if args.data_dir:
        cfg["dataset"] = {**(cfg.get("dataset") or {}), "data_dir": args.data_dir}
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
