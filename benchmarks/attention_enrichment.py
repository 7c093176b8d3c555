#!/usr/bin/env python
"""Attention, measured: for each label, how much more of the label query's attention (`pipe.attention`: last decoder
block, head-averaged) falls within +-0.5 A of strong lines than a uniform map would put there (enrichment = attention
fraction / pixel fraction, `spectrafm_hf.lines`), on observed-domain synthetic APOGEE stars (the `make demo` set:
seed 12345), for the trained model and an untrained one (same config, fresh random weights, same processor).

Each label is measured against every line set (Fe I, Mg I, OH, CO, CN, all atomic, all molecular, all) and against
the continuum pixels of APOGEE DR17 (astroNN's mask, shipped for the realism layer); its own set (`LABEL_LINE_SETS`:
FE_H - Fe I, MG_FE - Mg I, O_FE - OH, TEFF and LOGG - all strong lines) is marked ``primary``. Writes the table
(benchmarks/results/attention_enrichment.csv) and a figure (…png): the primary enrichment per label for both models,
and the FE_H attention stacked around strong Fe I lines.

    OMP_NUM_THREADS=1 python benchmarks/attention_enrichment.py [--model spectrafm-base] [--n 300]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spectrafm_hf import SpectraFMModel, SpectraFMPipeline, synth
from spectrafm_hf.synth.realism import resource_path
from spectrafm_hf.lines import LABEL_LINE_SETS, attention_enrichment, enrichment_summary, line_table

REPO = Path(__file__).resolve().parents[1]
LINE_SETS = ["Fe I", "Mg I", "OH", "CO", "CN", "atomic", "molecular", "all"]
CONTINUUM_MASK = "realism/astroNN_dr17_contmask_7514.npy"
PROFILE_HALF_WIDTH, PROFILE_BIN = 3.0, 0.2  # Angstrom: the stacked FE_H attention profile around Fe I lines


def untrained_like(pipe: SpectraFMPipeline, seed: int) -> SpectraFMPipeline:
    """The same architecture and processor with fresh random weights (the library's own initialisation)."""
    torch.manual_seed(seed)
    return SpectraFMPipeline(SpectraFMModel(pipe.model.config), pipe.processor, device=pipe.device)


def measure(pipe, spectra, half_width, seed=0):
    """Per-star enrichment rows (label, line_set, attention_fraction, pixel_fraction, ...) and the stacked FE_H
    attention profile around Fe I lines (relative to a uniform map)."""
    labels = pipe.label_names
    rows, bins = [], np.arange(-PROFILE_HALF_WIDTH, PROFILE_HALF_WIDTH + 1e-9, PROFILE_BIN)
    prof_sum, prof_n = np.zeros(bins.size - 1), np.zeros(bins.size - 1)
    fe = line_table(species="Fe I")["wavelength"].to_numpy()
    sets = {name: line_table(species=name)["wavelength"].to_numpy() for name in LINE_SETS}
    with resource_path(CONTINUUM_MASK).open("rb") as fh:
        continuum = np.load(fh).astype(bool)
    for star, s in enumerate(spectra):
        maps = pipe._attention_maps(s, labels, seed=seed)  # (pixels, labels), the same maps as pipe.attention
        on_grid = len(s) == continuum.size  # the mask is on the 7514-pixel grid
        for q, label in enumerate(labels):
            for name, waves in {**sets, **({"continuum": continuum} if on_grid else {})}.items():
                r = attention_enrichment((s.wavelength, maps[:, q]), waves, half_width=half_width)
                rows.append({"star": star, "label": label, "line_set": name, **r})
        if "FE_H" in labels and fe.size:
            att = maps[:, labels.index("FE_H")]
            used = np.isfinite(att)
            rel = att[used] * used.sum() / att[used].sum()  # 1 = uniform
            wl = s.wavelength[used]
            right = np.clip(np.searchsorted(fe, wl), 0, fe.size - 1)
            left = np.clip(right - 1, 0, fe.size - 1)
            near = np.where(np.abs(wl - fe[left]) < np.abs(wl - fe[right]), fe[left], fe[right])
            k = np.digitize(wl - near, bins) - 1
            ok = (k >= 0) & (k < bins.size - 1)
            np.add.at(prof_sum, k[ok], rel[ok])
            np.add.at(prof_n, k[ok], 1)
    with np.errstate(invalid="ignore"):
        profile = pd.DataFrame({"offset_A": 0.5 * (bins[1:] + bins[:-1]), "relative_attention": prof_sum / prof_n})
    return pd.DataFrame(rows), profile


def figure(table, profiles, path, n_stars, model_name):
    from spectrafm_hf.plots import _plt, _save

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    prim = table[table["primary"]]
    labels = list(dict.fromkeys(prim["label"]))
    x = np.arange(len(labels))
    for k, (model, color) in enumerate([("trained", "C3"), ("untrained", "0.5")]):
        t = prim[prim["model"] == model].set_index("label").loc[labels]
        ax1.bar(x + (k - 0.5) * 0.38, t["enrichment"], 0.38, yerr=t["enrichment_err"], color=color, label=model,
                capsize=2)
    ax1.axhline(1, color="k", lw=0.8, ls=":")
    ax1.axhline(2, color="C3", lw=0.6, ls="--", alpha=0.6)
    ax1.set_xticks(x, [f"{lab}\n({LABEL_LINE_SETS.get(lab, '?')})" for lab in labels])
    ax1.set_ylabel("attention enrichment on the label's lines\n(attention fraction / pixel fraction)")
    ax1.set_title(f"{model_name}: {n_stars} observed-domain APOGEE stars, +-0.5 A windows", fontsize=9)
    ax1.legend(fontsize=8)
    for model, color in [("trained", "C3"), ("untrained", "0.5")]:
        p = profiles[model]
        ax2.plot(p["offset_A"], p["relative_attention"], color=color, label=model, drawstyle="steps-mid")
    ax2.axhline(1, color="k", lw=0.8, ls=":")
    ax2.axvspan(-0.5, 0.5, color="C0", alpha=0.1)
    ax2.set_xlabel(r"offset from the nearest strong Fe I line [$\AA$]")
    ax2.set_ylabel("FE_H attention / uniform")
    ax2.set_title("FE_H attention stacked on Fe I lines", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spectrafm-base", help="trained checkpoint (name, folder or Hub id)")
    p.add_argument("--n", type=int, default=300, help="observed-domain stars")
    p.add_argument("--seed", type=int, default=12345, help="synth seed (12345 = the `make demo` test set)")
    p.add_argument("--untrained-seed", type=int, default=0, help="torch seed of the untrained model's weights")
    p.add_argument("--half-width", type=float, default=0.5, help="line window half width [A]")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "attention_enrichment.csv"))
    p.add_argument("--figure", default=str(REPO / "benchmarks" / "results" / "attention_enrichment.png"))
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be >= 1, got {args.n}")

    t0 = time.time()
    trained = SpectraFMPipeline.from_pretrained(args.model, device="cpu")
    spectra = synth.generate(args.n, observed=True, seed=args.seed, as_spectra=True)
    rows, profiles = [], {}
    wmin, wmax = min(s.wavelength[0] for s in spectra), max(s.wavelength[-1] for s in spectra)
    for model, pipe in [("trained", trained), ("untrained", untrained_like(trained, args.untrained_seed))]:
        per_star, profiles[model] = measure(pipe, spectra, args.half_width)
        for (label, line_set), g in per_star.groupby(["label", "line_set"], sort=False):
            rows.append({"model": model, "label": label, "line_set": line_set,
                         "primary": LABEL_LINE_SETS.get(label) == line_set,
                         "n_lines": len(line_table(wmin, wmax, species=line_set)) if line_set in LINE_SETS else None,
                         **enrichment_summary(g)})
        print(f"{model}: {time.time() - t0:.0f} s")
    table = pd.DataFrame(rows)
    table.insert(0, "checkpoint", args.model)
    table["half_width_A"] = args.half_width
    table["data"] = f"synth.generate({args.n}, observed=True, seed={args.seed})"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table.round(4).to_csv(tmp, index=False)
    tmp.replace(out)
    figure(table, profiles, args.figure, args.n, args.model)
    prim = table[table["primary"]].pivot(index="label", columns="model", values="enrichment")
    print(prim.round(2).to_string())
    print(f"wrote {out} and {args.figure} ({time.time() - t0:.0f} s)")
    return table


if __name__ == "__main__":
    main()
