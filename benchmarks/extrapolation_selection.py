#!/usr/bin/env python
"""Can a selection rule see extrapolation from metal-rich labels alone? (issue 14, few-shot) — on the paper's test.

Every few-shot recipe is chosen on metal-rich validation stars, which rewards the read-out that interpolates best —
and on Gaia XP and MILES that is the ridge line which is pulled furthest towards the fitting stars' mean below -1
(docs/real_spectra.md; benchmarks/fewshot_generative_probe.py). The rule tried here, set before it was run on any data
set: *extrapolation validation*. Each candidate is fitted once more on only the fitting stars at or above the 30th
percentile of their [Fe/H] (the cut) and scored by its [Fe/H] RMSE on the validation stars below the cut — stars
outside the range it was fitted on, as the metal-poor test stars lie outside the range of all 100. No metal-poor
([Fe/H] < -1) star is read by either rule.

It is tried first here, on the paper's experiment (the default model `spectrafm-base`, the reproduction's 100 stars
with [Fe/H] > -1 in the [Fe/H] window, its 500 validation and 2,000 test stars; `benchmarks/pipe_fit_recipe.py`),
where the generative read-out has never been scored, with every candidate of that benchmark (its four `pipe.fit`
rows and the ridge probe, `pipe.fit_linear_probe`) and the generative read-out of the same features
(`pipe.fit_linear_probe(method="generative")`) at the three covariance shrinkages of
benchmarks/fewshot_generative_probe.py. Both rules' choices are written with every
candidate's test RMSE by metallicity.

    OMP_NUM_THREADS=1 python benchmarks/extrapolation_selection.py      # ~20 min on one core
    python benchmarks/extrapolation_selection.py --presets              # a second: the real-data presets' tables
    OMP_NUM_THREADS=1 python benchmarks/extrapolation_selection.py --quantiles 0.3 0.2 0.5 \
        --out benchmarks/results/extrapolation_selection_quantiles.json  # ~30 CPU-min: other cuts, their mean

Writes benchmarks/results/extrapolation_selection.json. ``--presets`` reads what the two real-data presets committed
(both rules' scores in their summaries' ``recipe_selection``, the test rows in real_data.csv / real_data_miles.csv)
and writes benchmarks/results/extrapolation_selection_presets.json: per few-shot experiment, each rule's choice, the
candidates' metal-poor test RMSE and how closely each rule's scores order them. ``--quantiles`` refits every
candidate at each cut; ``extrapolation_rmse`` is then the first cut's score, ``extrapolation_rmse_by_quantile`` has
each, and the rank correlations are given for each cut and for the mean of the cuts' scores.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

from pipe_fit_recipe import CANDIDATES, paper_fewshot_data  # noqa: E402

CUT_QUANTILE = 0.3   # the fitting stars below this quantile of their [Fe/H] are left out of the extrapolation fit
SHRINKS = (1.0, 0.5, 0.2)
# per few-shot experiment of the real-data presets: (summary, table under benchmarks/results, its recipe_selection)
PRESET_SOURCES = {
    "xp_fewshot": ("real_data/summary.json", "real_data.csv", lambda s: s["recipe_selection"]["xp_fewshot"]),
    "miles_fewshot": ("real_data/miles_summary.json", "real_data_miles.csv", lambda s: s["recipe_selection"])}


def rmse(p, t) -> float:
    return round(float(np.sqrt(np.mean((np.asarray(p) - np.asarray(t)) ** 2))), 4)


def nll(mean, truth, sigma) -> float:
    return round(float(np.mean(0.5 * ((mean - truth) / sigma) ** 2 + np.log(sigma) + 0.5 * np.log(2 * np.pi))), 4)


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two equally long sequences without ties."""
    ra, rb = (np.argsort(np.argsort(np.asarray(v, np.float64))) for v in (a, b))
    return round(float(np.corrcoef(ra, rb)[0, 1]), 3)


def metal_poor_test_rmse(results: Path, table: str, experiment: str):
    """Each model's [Fe/H] RMSE on the metal-poor test stars (mean of the draws) in a committed results table."""
    import pandas as pd

    rows = pd.read_csv(results / table)
    rows = rows[(rows.experiment == experiment) & (rows.label == "FE_H") & (rows.split == "feh_lt_-1")]
    return rows.groupby("model").rmse.mean()


def preset_agreement(results: Path) -> dict:
    """Both rules against the metal-poor test RMSE, from the real-data presets' committed summaries and tables."""
    out = {}
    for experiment, (summary, table, selection) in PRESET_SOURCES.items():
        chosen = selection(json.loads((results / summary).read_text()))
        poor = metal_poor_test_rmse(results, table, experiment)
        scores = {"extrapolation_rmse": chosen["extrapolation_fe_h_rmse"],  # both of [Fe/H]
                  "validation_fe_h_nll": chosen["validation_nll_rule"]["validation_fe_h_nll"]}
        models = list(scores["extrapolation_rmse"])
        out[experiment] = {
            "chosen_by": {rule: min(models, key=v.get) for rule, v in scores.items()},
            "best_on_test_feh_lt_-1": min(models, key=poor.get),
            "test_rmse_feh_lt_-1": {m: round(float(poor[m]), 4) for m in models},
            "scratch_nn_test_rmse_feh_lt_-1": round(float(poor["scratch_nn"]), 4),
            "rank_correlation_with_test_feh_lt_-1": {rule: rank_correlation([v[m] for m in models],
                                                                            [poor[m] for m in models])
                                                     for rule, v in scores.items()}}
    return out


def preset_quantiles(results: Path, summaries) -> dict:
    """The check at other cuts on the real-data presets: ``summaries`` are (experiment, quantile, summary path) of
    preset runs made with ``--set <section>.extrapolation_check.quantile=Q``, beside the committed summary's 0.3.
    Per experiment and cut, the check's choice and the rank correlation of its scores with the committed metal-poor
    test RMSE; then the same for the mean of the cuts' scores. Only candidates scored at every cut are compared."""
    out = {}
    for experiment, (summary, table, selection) in PRESET_SOURCES.items():
        runs = {CUT_QUANTILE: selection(json.loads((results / summary).read_text()))}
        runs.update({float(q): selection(json.loads(Path(path).read_text()))
                     for e, q, path in summaries if e == experiment})
        if len(runs) < 2:
            continue
        poor = metal_poor_test_rmse(results, table, experiment)
        models = [m for m in runs[CUT_QUANTILE]["extrapolation_fe_h_rmse"]
                  if m in poor and all(m in r["extrapolation_fe_h_rmse"] for r in runs.values())]
        scores = {f"{q:g}": {m: r["extrapolation_fe_h_rmse"][m] for m in models} for q, r in sorted(runs.items())}
        scores["mean_of_cuts"] = {m: float(np.mean([v[m] for v in scores.values()])) for m in models}
        out[experiment] = {
            "test_rmse_feh_lt_-1": {m: round(float(poor[m]), 4) for m in models},
            "best_on_test_feh_lt_-1": min(models, key=poor.get),
            "cuts": {f"{q:g}": {"cut_feh": r["cut_feh"]} for q, r in sorted(runs.items())},
            "by_rule": {rule: {"chosen": min(v, key=v.get), "scores": {m: round(x, 4) for m, x in v.items()},
                               "rank_correlation_with_test_feh_lt_-1": rank_correlation(
                                   [v[m] for m in models], [poor[m] for m in models])}
                        for rule, v in scores.items()}}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "scripts/configs/reproduce_cpu.yaml"))
    parser.add_argument("--model", default="spectrafm-base")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/extrapolation_selection.json"))
    parser.add_argument("--work_dir", default=str(REPO / "runs/extrapolation_selection"))
    parser.add_argument("--presets", action="store_true", help="only read the real-data presets' committed tables")
    parser.add_argument("--quantiles", type=float, nargs="+", default=[CUT_QUANTILE],
                        help="the cuts' quantiles of the fitting stars' [Fe/H] (the first is the rule's score)")
    parser.add_argument("--summary", action="append", default=[], metavar="EXPERIMENT:QUANTILE:PATH",
                        help="with --presets: a preset run's summary JSON at another cut (xp_fewshot or "
                             "miles_fewshot); writes extrapolation_selection_presets_quantiles.json")
    args = parser.parse_args(argv)
    if args.presets and args.summary:
        out = REPO / "benchmarks/results/extrapolation_selection_presets_quantiles.json"
        result = {"command": " ".join(["python benchmarks/extrapolation_selection.py --presets",
                                       *(f"--summary {s}" for s in args.summary)]),
                  **preset_quantiles(REPO / "benchmarks/results", [s.split(":", 2) for s in args.summary])}
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return
    if args.presets:
        out = REPO / "benchmarks/results/extrapolation_selection_presets.json"
        result = {"command": "python benchmarks/extrapolation_selection.py --presets",
                  **preset_agreement(REPO / "benchmarks/results")}
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return

    from spectrafm_hf import SpectraFMPipeline
    from spectrafm_hf.training.run import extrapolation_split

    (few, val, test), frames, (lo, hi), spectra = paper_fewshot_data(args.config, args.work_dir)
    feh = {"few": frames["train_stage3"]["FE_H"].to_numpy(np.float64),
           "validation": frames["validation"]["FE_H"].to_numpy(np.float64),
           "test": frames["test"]["FE_H"].to_numpy(np.float64)}
    # per cut: (cut, inner: the extrapolation fit's stars, band: the validation stars it is scored on, all >= -1)
    cuts = {q: extrapolation_split(feh["few"], feh["validation"], q) for q in args.quantiles}
    poor = feh["test"] < -1.0
    start = SpectraFMPipeline.from_pretrained(args.model, device="cpu")

    def row(predict) -> dict:
        """predict(split) -> (mean, sigma) of a read-out fitted on all fitting stars: both rules' validation scores
        (the extrapolation score is added by the caller) and the test RMSE by metallicity."""
        (pv, sv), (pt, _) = predict("validation"), predict("test")
        return {"validation_rmse": rmse(pv, feh["validation"]), "validation_nll": nll(pv, feh["validation"], sv),
                "test_rmse_all": rmse(pt, feh["test"]), "test_rmse_feh_lt_-1": rmse(pt[poor], feh["test"][poor]),
                "test_rmse_feh_ge_-1": rmse(pt[~poor], feh["test"][~poor]),
                "test_mean_prediction_feh_lt_-1": round(float(pt[poor].mean()), 3)}

    def pipe_predict(pipe):
        def predict(split):
            p = pipe.predict(spectra[split], labels=["FE_H"], seed=0)
            return p["FE_H"].to_numpy(np.float64), p["FE_H_err"].to_numpy(np.float64)
        return predict

    label_frame = frames["train_stage3"][["FE_H"]]
    candidates = [(name, "fit", kwargs) for name, kwargs in CANDIDATES.items()] + [("linear_probe", "probe", {})] + [
        (f"generative_shrink_{shrink:g}", "probe", {"method": "generative", "shrink": shrink}) for shrink in SHRINKS]
    rows = {}
    for name, kind, kwargs in candidates:
        t = time.time()

        def fit(s, y, kind=kind, kwargs=kwargs):
            return start.fit(s, y, **kwargs) if kind == "fit" else start.fit_linear_probe(s, y, ["FE_H"], **kwargs)

        rows[name] = row(pipe_predict(fit(spectra["few"], label_frame)))
        by_quantile = {}
        for q, (_, inner, band) in cuts.items():
            sub = fit([s for s, k in zip(spectra["few"], inner) if k], label_frame[inner])
            pv, _ = pipe_predict(sub)("validation")
            by_quantile[f"{q:g}"] = rmse(pv[band], feh["validation"][band])
        rows[name]["extrapolation_rmse"] = next(iter(by_quantile.values()))
        if len(cuts) > 1:
            rows[name]["extrapolation_rmse_by_quantile"] = by_quantile
            rows[name]["extrapolation_rmse_mean_of_cuts"] = round(float(np.mean(list(by_quantile.values()))), 4)
        rows[name]["seconds"] = round(time.time() - t, 1)
        print(json.dumps({name: rows[name]}), flush=True)

    first, inner, band = next(iter(cuts.values()))
    rules = ["validation_nll", "extrapolation_rmse"] + (["extrapolation_rmse_mean_of_cuts"] if len(cuts) > 1 else [])
    out = {"command": " ".join(["python benchmarks/extrapolation_selection.py", *(sys.argv[1:] if argv is None else
                                                                                   argv)]),
           "model": args.model, "window_A": [lo, hi],
           "n_fit_stars": len(few), "cut_quantile": args.quantiles[0], "cut_feh": round(first, 4),
           "n_extrapolation_fit_stars": int(inner.sum()), "n_validation": len(val),
           "n_validation_below_cut": int(band.sum()), "n_test": len(test), "n_test_feh_lt_-1": int(poor.sum()),
           "chosen_by_validation_nll": min(rows, key=lambda n: rows[n]["validation_nll"]),
           "chosen_by_extrapolation_rmse": min(rows, key=lambda n: rows[n]["extrapolation_rmse"]),
           "best_on_test_feh_lt_-1": min(rows, key=lambda n: rows[n]["test_rmse_feh_lt_-1"]),
           # how closely each rule's score orders the candidates as their metal-poor test RMSE does
           "rank_correlation_with_test_feh_lt_-1": {
               rule: rank_correlation([r[rule] for r in rows.values()], [r["test_rmse_feh_lt_-1"] for r in rows.values()])
               for rule in rules},
           "rows": rows}
    if len(cuts) > 1:
        test_poor = [r["test_rmse_feh_lt_-1"] for r in rows.values()]
        out["cuts"] = {}
        for q, (c, i, b) in cuts.items():
            score = {n: r["extrapolation_rmse_by_quantile"][f"{q:g}"] for n, r in rows.items()}
            out["cuts"][f"{q:g}"] = {"cut_feh": round(c, 4), "n_extrapolation_fit_stars": int(i.sum()),
                                     "n_validation_below_cut": int(b.sum()), "chosen": min(score, key=score.get),
                                     "rank_correlation_with_test_feh_lt_-1": rank_correlation(list(score.values()),
                                                                                              test_poor)}
        out["chosen_by_extrapolation_rmse_mean_of_cuts"] = min(
            rows, key=lambda n: rows[n]["extrapolation_rmse_mean_of_cuts"])
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
