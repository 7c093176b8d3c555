#!/usr/bin/env python
"""What SpectraFM reads of metal-poor MILES stars when their Teff and logg are given (issue 14; a user's case, not the
few-shot goal).

`benchmarks/miles_label_degeneracy.py` finds that every model reads metal-poor cool giants too hot, too high in logg
and too metal-rich. It also finds that the emulator, held at MILES's Teff and logg, reads their [M/H] without bias. A
user with a Teff and logg from elsewhere (photometry, asteroseismology, a parallax) can hand them to the model as
input tokens (``SpectraFMPipeline.predict(known=...)``). This benchmark trains the MILES preset's models that way and
reads the test stars with and without their MILES Teff and logg given:

- the preset's pretraining (its synthetic spectra, steps and rate), with ``input_label_names: [TEFF, LOGG]``: each
  training spectrum's Teff and logg are also input tokens, each with probability ``--input_prob``;
- per draw, the preset's recommended fine-tune (row ``spectrafm``: the paper's freezing, helper labels, rehearsal) of
  that model on the draw's 100 stars, with the same inputs.

With ``--colour_bands LO HI N`` (``--given TEFF`` only), both models also read the test stars told a Teff from the
spectrum itself, with no test label: a ridge fitted on the draw's 100 stars from the colours of the flux-calibrated
continuum (`miles_fewshot.continuum_colours`: N equal bands from LO to HI Angstrom), which the normalised flux drops.
Rows ``*_colour_teff``, and that Teff's own bias and RMSE (``colour_teff``). With ``--preset_runs`` (the MILES
preset's ``output_dir``), also row ``spectrafm_mean_with_colour_teff``: per star, the plain mean of the preset's row
``spectrafm`` (spectrum only, read too metal-rich on cool metal-poor giants) and this fine-tune told the colour Teff
(nearly unbiased, noisier), both from the spectrum and the 100 stars alone. ``--input_noise TEFF=SIGMA`` trains both
models with Gaussian noise of SIGMA K on the given Teff (``input_label_noise``), so that they learn how far to trust
a Teff measured that well. With ``--xp_teff MAX_AK`` (and ``--colour_bands``), a third Teff, also without any
test label: the same bands' colours of the flux-calibrated spectrum (`miles_fewshot.band_colours`) read by
gradient-boosted trees learnt on the Gaia XP x APOGEE training stars with A_K below MAX_AK
(`miles_fewshot.xp_colour_teff`: 6,895 of the 28,643 at 0.02, stars of another survey, metal-poor ones among them;
no MILES star is fitted), its zero point shifted to the draw's 100 stars; rows ``*_xp_teff``, ``xp_teff`` and
``spectrafm_mean_with_xp_teff``. Each reading's per-star [Fe/H] goes to ``output_dir/predictions``.

The scores are [Fe/H] bias and RMSE on each draw's test stars: whole set, metal-poor ([Fe/H] < -1), and metal-poor
cool giants (logg < 3.5, Teff <= 5000 K), warm giants and dwarfs. Given labels are test information, so the
``*_given`` rows are not the few-shot goal's (spectrum only). They show what a Teff from outside the spectrum is
worth. The colour-Teff rows use only the spectra and the 100 stars, but the red bands were chosen after looking at
that Teff's bias on the metal-poor test stars (docs/real_spectra.md), so they are not a clean test either.

    python benchmarks/miles_given_teff_logg.py --output_dir runs/miles_given_teff_logg   # ~40 min on one core
    # -> benchmarks/results/miles_given_teff_logg.json
    python benchmarks/miles_given_teff_logg.py --given TEFF --input_prob 1.0 --output_dir runs/miles_given_teff \
        --out benchmarks/results/miles_given_teff.json --colour_bands 5500 7410 4 \
        --preset_runs runs/miles_fewshot_cpu_v4   # Teff alone given (a photometric Teff, say), a Teff from the red
        # continuum's colours, and the mean with the preset's row (after the preset has run)
    python benchmarks/miles_given_teff_logg.py --given TEFF --input_prob 1.0 --input_noise TEFF=250 \
        --output_dir runs/miles_given_teff_noise250 --out benchmarks/results/miles_given_teff_noise250.json \
        --colour_bands 5500 7410 4 --preset_runs runs/miles_fewshot_cpu_v4   # the same, trained with noisy Teff
    python benchmarks/miles_given_teff_logg.py --given TEFF --input_prob 1.0 --output_dir runs/miles_given_teff_seed1 \
        --out benchmarks/results/miles_given_teff_seed1.json --colour_bands 5500 7410 4 --preset_runs runs/seed1 \
        --set training_defaults.seed=1   # another training seed, with the preset run at that seed (miles_seed_mixture)
    python benchmarks/miles_given_teff_logg.py --given TEFF --input_prob 1.0 --output_dir runs/miles_given_teff \
        --out benchmarks/results/miles_xp_teff.json --colour_bands 3540 7410 8 --xp_teff 0.02 \
        --preset_runs runs/miles_fewshot_cpu_v4   # a Teff learnt on Gaia XP from 8 bands over the whole range
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import miles_fewshot  # noqa: E402
import real_data  # noqa: E402

GIVEN = ["TEFF", "LOGG"]   # the default inputs (--given)


def scores(pred, truth) -> dict:
    """[Fe/H] bias and RMSE per group of test stars."""
    err = pred.FE_H_pred.to_numpy() - truth.FE_H.to_numpy()
    types = miles_fewshot.star_groups(truth.TEFF, truth.LOGG, truth.FE_H)
    groups = {"all": np.ones(err.size, bool), "feh_lt_-1": (truth.FE_H < -1).to_numpy(),
              **{g: types[g] for g in ("metal_poor_cool_giants", "metal_poor_warm_giants", "metal_poor_dwarfs")}}
    return {g: {"n": int(m.sum()), "bias": float(err[m].mean()), "rmse": float(np.sqrt(np.mean(err[m] ** 2)))}
            for g, m in groups.items()}


def main(argv=None) -> int:
    from spectrafm_hf.training.run import train_or_reuse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "scripts/configs/miles_fewshot_cpu.yaml"))
    p.add_argument("--output_dir", default="runs/miles_given_teff_logg")
    p.add_argument("--input_prob", type=float, default=0.5, help="probability a training row's Teff / logg is given")
    p.add_argument("--given", nargs="+", choices=GIVEN, default=GIVEN, help="the labels given as inputs")
    p.add_argument("--input_noise", nargs="+", default=[], metavar="NAME=SIGMA",
                   help="Gaussian noise on a given input in training rows, in its units (e.g. TEFF=250): the "
                        "models learn how far to trust it")
    p.add_argument("--colour_bands", nargs=3, type=float, metavar=("LO", "HI", "N"),
                   help="also read with a Teff from the continuum's colours (docstring; --given TEFF only)")
    p.add_argument("--xp_teff", type=float, metavar="MAX_AK",
                   help="also read with a Teff from the same bands learnt on Gaia XP x APOGEE stars with A_K below "
                        "MAX_AK (docstring; with --colour_bands)")
    p.add_argument("--xp_data_dir", help="where the Gaia XP x APOGEE data are (default: the wheel, as the XP preset)")
    p.add_argument("--preset_runs", help="the MILES preset's output_dir: with --colour_bands, also row "
                                         "spectrafm_mean_with_colour_teff, the mean of its row spectrafm and this "
                                         "fine-tune told the colour Teff (both spectrum only)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value by its dotted path, as the preset's own --set (e.g. "
                        "training_defaults.seed=1, with --preset_runs a run of the preset at that seed)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/miles_given_teff_logg.json"))
    a = p.parse_args(argv)
    given = [n for n in GIVEN if n in a.given]
    if a.colour_bands and given != ["TEFF"]:
        p.error("--colour_bands gives a Teff only: use it with --given TEFF")
    if a.xp_teff is not None and not a.colour_bands:
        p.error("--xp_teff reads the bands of --colour_bands: add --colour_bands")
    if a.preset_runs and not a.colour_bands:
        p.error("--preset_runs combines the preset's row with the colour-Teff reading: add --colour_bands")
    try:
        noise = {k: float(v) for k, v in (item.split("=") for item in a.input_noise)}
    except ValueError:
        p.error(f"--input_noise takes NAME=SIGMA items, got {a.input_noise}")
    if set(noise) - set(given):
        p.error(f"--input_noise names {sorted(set(noise) - set(given))}, which --given does not give")
    t0 = time.time()
    cfg = real_data.load_preset(a.config, a.set)
    out = Path(a.output_dir)
    e = cfg["fewshot"]
    draws = [int(d) for d in e["draws"]]
    tables = miles_fewshot.miles_tables(cfg)
    sets = miles_fewshot.miles_sets(cfg, draws, tables)
    syn_train, syn_val = miles_fewshot.synthetic_sets(cfg, sets["wavelength"], out / "synthetic")
    inputs = {"input_label_names": given, "input_label_prob": a.input_prob, "input_label_noise": noise}
    pre = dict(cfg["pretrain"])
    pretrained = train_or_reuse(real_data.spectrafm_values(cfg, out / "pretrain_synthetic", pre.pop("steps"),
                                                           miles_fewshot.LABELS, **pre, **inputs),
                                splits=(syn_train, syn_val, None), log=lambda m: print(f"pretrain: {m}", flush=True))
    recipe, labels, steps = miles_fewshot.finetune_fields(e, e.get("finetune_pretrained") or {}, pretrained, out)
    if a.colour_bands:   # a Teff from the flux-calibrated continuum, fitted per draw on its 100 stars
        from spectrafm_hf.baselines import RidgeBaseline

        teff_all = np.asarray(tables[0].labels["TEFF"], float)
        lo, hi, n_bands = a.colour_bands
        colours = miles_fewshot.continuum_colours(cfg, tables[0], tables[2], lo, hi, int(n_bands))
        idx = miles_fewshot.fewshot_indices(cfg, tables[0], tables[3], draws)
        if a.xp_teff is not None:   # learnt on Gaia XP, read from MILES's flux-calibrated bands
            xp_predict, xp_fit = miles_fewshot.xp_colour_teff(lo, hi, int(n_bands), a.xp_teff, a.xp_data_dir)
            xp_teff_all = xp_predict(miles_fewshot.band_colours(tables[0].wavelength, tables[0].flux, tables[2], lo,
                                                                hi, int(n_bands)))
    options = [f"--given {' '.join(given)}", f"--input_prob {a.input_prob}"]
    options += [f"--input_noise {' '.join(a.input_noise)}"] if noise else []
    options += [f"--colour_bands {' '.join(f'{v:g}' for v in a.colour_bands)}"] if a.colour_bands else []
    options += [f"--xp_teff {a.xp_teff:g}"] if a.xp_teff is not None else []
    options += [f"--preset_runs {a.preset_runs}"] if a.preset_runs else []
    options += [f"--set {item}" for item in a.set]
    result = {"command": "python benchmarks/miles_given_teff_logg.py " + " ".join(options),
              "config": Path(a.config).name, "given": given, "input_prob": a.input_prob, "input_noise": noise,
              "draws": {}, **({"xp_teff_model": xp_fit} if a.xp_teff is not None else {})}
    for d in draws:
        few, test = sets[d]
        truth = real_data.frame(test, ["FE_H", "TEFF", "LOGG"])
        final = train_or_reuse(real_data.spectrafm_values(cfg, out / f"spectrafm_draw{d}", steps, labels,
                                                          **recipe, **inputs),
                               splits=(few, sets["val"], None), log=lambda m: print(f"draw {d}: {m}", flush=True))

        def read(row, model, **known):
            """Scores of one reading of the test stars; its per-star [Fe/H] goes to predictions/<row>_draw<d>.csv."""
            pred = real_data.predict_spectrafm(model, test, ["FE_H"], **known)
            (out / "predictions").mkdir(exist_ok=True)
            pred.assign(object_id=list(truth.object_id)).to_csv(out / "predictions" / f"{row}_draw{d}.csv", index=False)
            return pred, scores(pred, truth)

        result["draws"][str(d)] = {
            row: read(row, model, known_names=known)[1]
            for name, model in (("synthetic_only", pretrained), ("spectrafm", final)) for known in ((), given)
            for row in [f"{name}_{'given' if known else 'spectrum_only'}"]}
        if a.colour_bands:
            few_i, test_i = idx["few"][d], np.setdiff1d(idx["testable"], idx["few"][d])
            if list(truth.object_id) != list(tables[0].object_id[test_i]):
                raise AssertionError("the colour Teff's stars are not the test set's")
            teffs = {"colour_teff": RidgeBaseline().fit(colours[few_i], teff_all[few_i]).predict(colours[test_i])[0]}
            if a.xp_teff is not None:   # its zero point shifted to the draw's 100 stars
                teffs["xp_teff"] = xp_teff_all[test_i] - np.mean(xp_teff_all[few_i] - teff_all[few_i])
            poor = (truth.FE_H < -1).to_numpy()
            for source, teff in teffs.items():
                err = teff - teff_all[test_i]
                result["draws"][str(d)][source] = {
                    g: {"bias": float(err[m].mean()), "rmse": float(np.sqrt(np.mean(err[m] ** 2)))}
                    for g, m in (("feh_lt_-1", poor), ("feh_ge_-1", ~poor))}
                for name, model in (("synthetic_only", pretrained), ("spectrafm", final)):
                    told, result["draws"][str(d)][f"{name}_{source}"] = read(
                        f"{name}_{source}", model, known_values={"TEFF": teff})
                if a.preset_runs:   # two spectrum-only readings, one biased and one noisy: their plain mean
                    row = pd.read_csv(Path(a.preset_runs) / "predictions" / f"spectrafm_draw{d}.csv")  # test order
                    if len(row) != len(truth):
                        raise AssertionError(f"the preset's draw-{d} predictions are not this test set's")
                    mean = pd.DataFrame({"FE_H_pred": 0.5 * (row.FE_H_pred.to_numpy() + told.FE_H_pred.to_numpy())})
                    result["draws"][str(d)][f"spectrafm_mean_with_{source}"] = scores(mean, truth)
    rows = result["draws"][str(draws[0])]
    result["mean_of_draws"] = {r: {g: {k: float(np.mean([result["draws"][str(d)][r][g][k] for d in draws]))
                                       for k in ("bias", "rmse")} for g in rows[r]} for r in rows}
    if a.colour_bands:   # the scratch NN's spectrum-only metal-poor RMSE (the preset's committed table), for the ratio
        scratch_poor = miles_fewshot.committed_scratch_rmse(draws)
        result["scratch_nn_metal_poor_rmse"] = scratch_poor
        result["ratio_colour_teff"] = {r: scratch_poor / result["mean_of_draws"][r]["feh_lt_-1"]["rmse"]
                                       for r in rows if r.endswith(("_colour_teff", "_xp_teff"))}
    result["seconds"] = round(time.time() - t0)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["mean_of_draws"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
