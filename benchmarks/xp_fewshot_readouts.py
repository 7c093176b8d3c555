#!/usr/bin/env python
"""Gaia XP few-shot: generative read-outs of other features, scored by the extrapolation check at several seeds.

Each ``--runs`` folder is a `scripts/real_data.py` output_dir of the XP preset's ``xp_fewshot`` at one
``training_defaults.seed`` (its masked-flux Teff/logg pretraining is read from ``xp_fewshot/pretrain_*/final``;
``--set 'xp_fewshot.draws=[]'`` trains that pretraining alone, e.g. ``scripts/real_data.py
scripts/configs/real_xp_cpu.yaml --experiments xp_fewshot --jobs 1 --output_dir runs/xp_fewshot_seed1 --set
'xp_fewshot.draws=[]' --set training_defaults.seed=1``).
For every feature set (`SpectraFMPipeline.probe_features`: ``embedding``, the mean encoder output, or
``embedding+queries``, also the last decoder state of the Teff and logg queries; the network's Teff and logg always,
as covariates) and covariance shrinkage, the generative read-out of [Fe/H] (`linear_probe.fit_generative_probe`) is
scored as the preset scores its recipes: by the extrapolation check (fitted on each draw's stars at or above the
30th percentile of their [Fe/H], RMSE on the metal-rich validation stars below that cut; mean of the draws), the
rule that chooses row ``spectrafm``, and then, fitted on each draw's 100 stars, on the test split (RMSE on every star
and on the metal-poor ones, [Fe/H] < -1; the ratio against the scratch NN of ``--scratch``). The candidate with the
lowest check, averaged over the seeds, is ``chosen``; the test numbers play no part in it. ``seed_mean`` scores the
other way to use several pretrainings: each candidate's predictions averaged over the seeds (an ensemble of the
``--runs``, one read-out fitted on each), on the check and on test; it costs a pretraining per seed, so it is reported
beside the choice, not in it. Features are computed once per seed; no network is trained (~1 min per seed on one
core).

    python benchmarks/xp_fewshot_readouts.py --runs runs/real_xp_cpu_v10 runs/xp_fewshot_seed1 \\
        runs/xp_fewshot_seed2 --out benchmarks/results/xp_fewshot_readouts.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import real_data  # noqa: E402
from spectrafm_hf.data import column_values, dataset_spectra  # noqa: E402
from spectrafm_hf.linear_probe import PROBE_FEATURES, apply_probe, fit_generative_probe  # noqa: E402
from spectrafm_hf.training.presets import load_preset  # noqa: E402
from spectrafm_hf.training.run import select_stars  # noqa: E402


def rmse(pred, true) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(true)) ** 2)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    ap.add_argument("--runs", nargs="+", required=True, help="output_dir of each seed's xp_fewshot run")
    ap.add_argument("--features", nargs="+", default=list(PROBE_FEATURES), choices=PROBE_FEATURES)
    ap.add_argument("--shrinks", nargs="+", type=float, default=[0.05, 0.2, 0.5])
    ap.add_argument("--scratch", default=str(REPO / "benchmarks/results/real_data.csv"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a preset value overridden as scripts/real_data.py does (the runs' own, e.g. their pixels)")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    from spectrafm_hf import SpectraFMPipeline

    cfg = load_preset(a.config, a.set)
    e = cfg["xp_fewshot"]
    pretrainings = []
    for run in a.runs:
        found = sorted((Path(run) / "xp_fewshot").glob("pretrain_*/final"))
        if len(found) != 1:
            ap.error(f"{run}: expected one xp_fewshot/pretrain_*/final, found {len(found)}")
        pretrainings.append(found[0])
    train, val, test = real_data.load_splits(cfg)
    fm = real_data.experiment_cfg(cfg, "xp_fewshot")
    rich = {"FE_H": [float(e.get("min_feh", -1.0)), None]}
    val_rich = select_stars(val, rich, None, 0)
    draws = {}
    for draw in e["draws"]:  # the stars of each draw and of its check, as the preset picks them
        few = select_stars(train, rich, int(e["n_stars"]), int(draw))
        cut, kept, _, scored = real_data.extrapolation_sets(few, val_rich, e["extrapolation_check"])
        draws[int(draw)] = {"cut": round(float(cut), 4), "few": few, "kept": kept, "scored": scored}
    table = pd.read_csv(a.scratch)
    scratch = table[(table.experiment == "xp_fewshot") & (table.model == "scratch_nn") & (table.label == "FE_H")
                    & (table.split == "feh_lt_-1")].set_index("draw")["rmse"]
    test_feh = column_values(test, "FE_H")
    poor = test_feh < -1

    results = {}
    predictions = {}  # candidate -> per seed -> per draw: (check predictions, test predictions)
    for run, folder in zip(a.runs, pretrainings):
        pipe = SpectraFMPipeline.from_pretrained(folder, device="cpu")
        for kind in a.features:
            def features(ds):
                return pipe.probe_features(dataset_spectra(real_data.fm_data(fm, ds)), features=kind)

            x_test, run_labels = features(test)
            covariates = [x_test.shape[1] - len(run_labels) + run_labels.index(c) for c in ("TEFF", "LOGG")]
            sets = {d: {k: (features(s[k])[0], column_values(s[k], "FE_H")) for k in ("few", "kept", "scored")}
                    for d, s in draws.items()}
            for shrink in a.shrinks:
                check, metal_poor, every = [], [], []
                name = f"{kind}_shrink{shrink:g}"
                seed_predictions = predictions.setdefault(name, [])
                seed_predictions.append({})
                for d in draws:
                    x, y = sets[d]["kept"]
                    on_check = apply_probe(fit_generative_probe(x, y, covariates, shrink), sets[d]["scored"][0])
                    check.append(rmse(on_check, sets[d]["scored"][1]))
                    x, y = sets[d]["few"]
                    pred = apply_probe(fit_generative_probe(x, y, covariates, shrink), x_test)
                    metal_poor.append(rmse(pred[poor], test_feh[poor]))
                    every.append(rmse(pred, test_feh))
                    seed_predictions[-1][d] = (on_check, pred)
                r = results.setdefault(name, {"features": kind, "shrink": shrink, "check": [],
                                              "test_feh_lt_-1": [], "test_all": [], "ratio": []})
                r["check"].append(round(float(np.mean(check)), 4))
                r["test_feh_lt_-1"].append(round(float(np.mean(metal_poor)), 4))
                r["test_all"].append(round(float(np.mean(every)), 4))
                r["ratio"].append(round(float(scratch.loc[list(draws)].mean() / np.mean(metal_poor)), 3))
        print(f"{run}: done", flush=True)
    for r in results.values():
        r["check_mean"] = round(float(np.mean(r["check"])), 4)
    chosen = min(results, key=lambda k: results[k]["check_mean"])
    seed_mean = {}
    for name, per_seed in predictions.items():
        on_check = {d: np.mean([p[d][0] for p in per_seed], axis=0) for d in draws}
        on_test = {d: np.mean([p[d][1] for p in per_seed], axis=0) for d in draws}
        metal_poor = float(np.mean([rmse(on_test[d][poor], test_feh[poor]) for d in draws]))
        seed_mean[name] = {
            "check": round(float(np.mean([rmse(on_check[d], column_values(draws[d]["scored"], "FE_H"))
                                          for d in draws])), 4),
            "test_feh_lt_-1": round(metal_poor, 4),
            "test_all": round(float(np.mean([rmse(on_test[d], test_feh) for d in draws])), 4),
            "ratio": round(float(scratch.loc[list(draws)].mean() / metal_poor), 3)}
    out = {"runs": a.runs, "pretrainings": [str(p) for p in pretrainings],
           "rule": "lowest extrapolation check (validation [Fe/H] RMSE below each draw's cut when fitted above it), "
                   "mean of the draws, then of the seeds; test numbers are not used",
           "cut_feh": {str(d): s["cut"] for d, s in draws.items()},
           "scratch_nn_metal_poor_rmse": round(float(scratch.loc[list(draws)].mean()), 4),
           "candidates": results, "chosen": chosen,
           "seed_mean": {"what": f"each candidate's predictions averaged over the {len(a.runs)} runs' read-outs, "
                                 "then scored as above (mean of the draws)",
                         "candidates": seed_mean, "lowest_check": min(seed_mean, key=lambda k: seed_mean[k]["check"])}}
    print(f"{'candidate':32s} {'check per seed':>22s} {'mean':>6s}   {'metal-poor test':>22s}   {'ratio':>16s}")
    for name, r in results.items():
        print(f"{name:32s} {' '.join(f'{v:.3f}' for v in r['check']):>22s} {r['check_mean']:6.3f}   "
              f"{' '.join(f'{v:.3f}' for v in r['test_feh_lt_-1']):>22s}   "
              f"{' '.join(f'{v:.2f}' for v in r['ratio']):>16s}")
    print(f"chosen by the check: {chosen}")
    print(f"averaged over the {len(a.runs)} runs:")
    for name, r in seed_mean.items():
        print(f"{name:32s} check {r['check']:.3f}   metal-poor test {r['test_feh_lt_-1']:.3f}   "
              f"ratio {r['ratio']:.2f}   every star {r['test_all']:.3f}")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
