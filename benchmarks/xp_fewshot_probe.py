#!/usr/bin/env python
"""Can anything read metal-poor [Fe/H] off Gaia XP linearly? Linear probes for the xp_fewshot experiment (issue 14).

xp_fewshot's metal-poor goal asks a model pretrained on Teff and logg only to extrapolate [Fe/H] below -1 from 100
stars above it. This measures whether the pretrained representation carries [Fe/H] in a form a linear read-out can
extrapolate, and how far a linear read-out gets even when it is SHOWN metal-poor stars:

- ``probe``: ridge (penalty chosen on the metal-rich validation stars) on the pretrained model's embedding
  (`SpectraFMPipeline.embed`, mean encoder output) of each draw's 100 metal-rich stars, xp_fewshot's draws;
- ``shown_metal_poor``: ridge on the embedding, and on the 343 raw pixels, fitted on the first half of the validation
  split (metal-poor stars included), penalty chosen on the second half: a ceiling for linear read-outs.

Scored on the test split (nothing is tuned on it): [Fe/H] RMSE and bias on the metal-poor ([Fe/H] < -1) and
metal-rich stars.

    OMP_NUM_THREADS=1 python benchmarks/xp_fewshot_probe.py [--model runs/real_xp_cpu/xp_fewshot/pretrain_teff_logg/final]
        [--out benchmarks/results/xp_fewshot_probe.json]

``xp_fewshot_probe.json`` is the Teff/logg-only pretraining (``--set xp_fewshot.pretrain.masked_flux_fraction=0``);
``xp_fewshot_probe_masked_flux.json`` is the masked-flux pretraining at fraction 0.3 (the preset now uses 0.2):
``--model <output_dir>/xp_fewshot/pretrain_teff_logg_masked_flux/final --out ...`` of a run with
``--set xp_fewshot.pretrain.masked_flux_fraction=0.3``. ~6 min on one core (embedding 5,000 spectra).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from spectrafm_hf.training.presets import read_yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import real_data  # noqa: E402


def scores(pred, truth) -> dict:
    poor = truth < -1.0
    rmse = lambda k: round(float(np.sqrt(np.mean((pred[k] - truth[k]) ** 2))), 4)  # noqa: E731
    return {"metal_poor_rmse": rmse(poor), "metal_poor_bias": round(float(np.mean(pred[poor] - truth[poor])), 4),
            "metal_rich_rmse": rmse(~poor), "all_rmse": rmse(slice(None))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    ap.add_argument("--model", default="runs/real_xp_cpu/xp_fewshot/pretrain_teff_logg/final")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/xp_fewshot_probe.json"))
    a = ap.parse_args(argv)
    from spectrafm_hf.baselines import RidgeBaseline
    from spectrafm_hf.data import dataset_spectra
    from spectrafm_hf.pipeline import SpectraFMPipeline
    from spectrafm_hf.training.run import select_stars

    if not (Path(a.model) / "config.json").is_file():
        raise SystemExit(f"{a.model}: no pretrained model; run scripts/real_data.py ... --experiments xp_fewshot first")
    torch.set_num_threads(1)
    cfg = read_yaml(Path(a.config).read_text())
    e = cfg["xp_fewshot"]
    train, val, test = real_data.load_splits(cfg)
    rich = {"FE_H": [float(e.get("min_feh", -1.0)), None]}
    val_rich = select_stars(val, rich, None, 0)
    pipe = SpectraFMPipeline.from_pretrained(a.model, device="cpu")

    def embed(ds):
        return pipe.embed(dataset_spectra(real_data.fm_data(cfg, ds)))

    feh = lambda ds: np.asarray(ds["FE_H"], np.float64)  # noqa: E731
    emb_test, emb_val_rich, emb_val = embed(test), embed(val_rich), embed(val)
    result = {"model": a.model, "split": "test", "n_test": len(test), "n_test_metal_poor": int((feh(test) < -1).sum()),
              "probe": {}, "shown_metal_poor": {}}
    for draw in e.get("draws", [77]):
        few = select_stars(train, rich, int(e["n_stars"]), int(draw))
        ridge = RidgeBaseline().fit(embed(few), feh(few), emb_val_rich, feh(val_rich))
        result["probe"][f"draw{draw}"] = scores(ridge.predict(emb_test)[0], feh(test))
    half = len(val) // 2
    y = feh(val)
    result["shown_metal_poor"]["n_fit"] = half
    result["shown_metal_poor"]["n_fit_metal_poor"] = int((y[:half] < -1).sum())
    for name, (fit_x, test_x) in {"embedding": (emb_val, emb_test),
                                  "pixels": (real_data.flux_matrix(val), real_data.flux_matrix(test))}.items():
        ridge = RidgeBaseline().fit(fit_x[:half], y[:half], fit_x[half:], y[half:])
        result["shown_metal_poor"][name] = scores(ridge.predict(test_x)[0], feh(test))
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
