#!/usr/bin/env python
"""Which `pipe.fit` settings keep what the default model knows? The paper's few-shot test on the default model:
`spectrafm-base` fine-tuned in memory (`pipe.fit`) on the reproduction's 100 observed-domain stars with [Fe/H] > -1
in the [Fe/H] window, [Fe/H] as the target (helper labels: the library default), then tested on the reproduction's
held-out stars down to [Fe/H] = -2.5. Each candidate is one `pipe.fit` call; the choice is the lowest Gaussian
negative log-likelihood of [Fe/H] on the metal-rich VALIDATION stars (no metal-poor and no test star tunes anything,
as in scripts/reproduce_paper.py). `pipe.fit`'s defaults follow the chosen row. Row ``linear_probe`` is
`pipe.fit_linear_probe` (no training), compared with the chosen row on the same validation NLL.

    OMP_NUM_THREADS=1 python benchmarks/pipe_fit_recipe.py [--candidates default lr3e-4 ...]

Writes benchmarks/results/pipe_fit_recipe.json (per candidate: fit seconds, validation RMSE / NLL / coverage, test
RMSE / bias / coverage on all, [Fe/H] < -1 and >= -1).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from spectrafm_hf.training.presets import read_yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

# name -> pipe.fit keyword arguments (the fit's own defaults fill the rest)
CANDIDATES = {
    "before": {"learning_rate": 1e-4, "steps": 200, "rehearsal": None},   # pipe.fit's defaults before this benchmark
    "lr3e-4": {"learning_rate": 3e-4, "steps": 200, "rehearsal": None},
    "rehearsal": {"learning_rate": 1e-4, "steps": 200, "rehearsal": "synthetic"},
    "lr3e-4_rehearsal": {"learning_rate": 3e-4, "steps": 200, "rehearsal": "synthetic"},
}
# name -> pipe.fit_linear_probe keyword arguments: no training, a ridge line on the frozen model's features; compared
# with the chosen pipe.fit row on the same validation NLL (it cannot be a pipe.fit default)
PROBES = {"linear_probe": {}}


def paper_fewshot_data(config: str, work_dir: str):
    """The reproduction's few-shot data (scripts/reproduce_paper.py): (few, validation, test) Datasets, their label
    frames, the [Fe/H] window (lo, hi) and the three sets' spectra cropped to it ({"few", "validation", "test"})."""
    import reproduce_paper as rp
    from spectrafm_hf.data import row_to_spectrum
    from spectrafm_hf.training.run import DataArguments, _window

    cfg = read_yaml(Path(config).read_text())
    cfg["dataset_cache_dir"] = str(REPO / cfg["dataset_cache_dir"])
    _, few, val, test, frames = rp.prepare_data(cfg, Path(work_dir))
    lo, hi = _window(DataArguments(pixel_range=list(cfg["fe_pixel_range"])))
    spectra = {name: [row_to_spectrum(r).crop(lo, hi) for r in ds.with_format("numpy")]
               for name, ds in (("few", few), ("validation", val), ("test", test))}
    return (few, val, test), frames, (lo, hi), spectra


def nll(mean, truth, sigma) -> float:
    return float(np.mean(0.5 * ((mean - truth) / sigma) ** 2 + np.log(sigma) + 0.5 * np.log(2 * np.pi)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "scripts/configs/reproduce_cpu.yaml"))
    parser.add_argument("--model", default="spectrafm-base")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES) + list(PROBES),
                        choices=list(CANDIDATES) + list(PROBES))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/pipe_fit_recipe.json"))
    parser.add_argument("--work_dir", default=str(REPO / "runs/pipe_fit_recipe"))
    args = parser.parse_args(argv)

    import reproduce_paper as rp
    from spectrafm_hf import SpectraFMPipeline
    from spectrafm_hf.training.metrics import label_metrics

    (few, val, test), frames, (lo, hi), window = paper_fewshot_data(args.config, args.work_dir)
    truth = {name: frames[key]["FE_H"].to_numpy() for name, key in (("validation", "validation"), ("test", "test"))}
    splits = rp.split_masks(frames["test"]["FE_H"], frames["test"]["LOGG"])
    start = SpectraFMPipeline.from_pretrained(args.model, device="cpu")

    def evaluate(pipe) -> dict:
        row = {}
        for name in ("validation", "test"):
            pred = pipe.predict(window[name], labels=["FE_H"], seed=0)
            mean, sigma = pred["FE_H"].to_numpy(), pred["FE_H_err"].to_numpy()
            if name == "validation":
                m = label_metrics(mean, truth[name], sigma)
                row["validation"] = {"rmse": m["rmse"], "coverage68": m["coverage68"],
                                     "nll": nll(mean, truth[name], sigma)}
            else:
                row["test"] = {}
                for split in ("all", "feh_lt_-1", "feh_ge_-1"):
                    m = label_metrics(mean[splits[split]], truth[name][splits[split]], sigma[splits[split]])
                    row["test"][split] = {k: m[k] for k in ("n", "rmse", "bias", "coverage68")}
        return row

    rows = {"start (no fine-tuning)": evaluate(start)}
    print(json.dumps({"start": rows["start (no fine-tuning)"]}), flush=True)
    for name in args.candidates:
        t = time.time()
        if name in PROBES:
            tuned = start.fit_linear_probe(window["few"], frames["train_stage3"][["FE_H"]], ["FE_H"], **PROBES[name])
        else:
            tuned = start.fit(window["few"], frames["train_stage3"][["FE_H"]], **CANDIDATES[name])
        fit_seconds = time.time() - t
        kind = "fit_linear_probe" if name in PROBES else "fit"
        rows[name] = {"kind": kind, "kwargs": {**CANDIDATES, **PROBES}[name], "fit_seconds": round(fit_seconds, 1),
                      **evaluate(tuned)}
        print(json.dumps({name: rows[name]}), flush=True)
    fits = [n for n in args.candidates if n in CANDIDATES]
    chosen = min(fits, key=lambda n: rows[n]["validation"]["nll"]) if fits else None
    out = {"command": "python benchmarks/pipe_fit_recipe.py", "model": args.model, "window_A": [lo, hi],
           "n_fit_stars": len(few), "n_validation": len(val), "n_test": len(test),
           "rule": "lowest validation NLL ([Fe/H] >= -1 validation stars only) of the pipe.fit rows; a linear probe "
                   "row is compared with the chosen one on the same NLL", "chosen": chosen, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"chosen: {chosen}")


if __name__ == "__main__":
    main()
