#!/usr/bin/env python
"""Does the +-10 sigma flux clip cost SpectraFM XP information? (issue 14: "clip_sigma=10 masks 4.1 % of XP pixels")

The per-pixel normalisation (median / MAD-std of each XP pixel over the training stars) puts the blue and red ends of
cool stars' spectra tens of sigma out, and the processor's ``clip_sigma`` = 10 treats those pixels as missing
(``masked_fraction`` in the output: of all validation stars' pixels, and of those below 4000 K). Three ways to read
them, each trained with xp_full's recipe (``scripts/configs/real_xp_cpu.yaml``) on its 10,000 training stars for
``--steps`` optimizer steps and scored on the VALIDATION split (the test split is never used):

- ``clip10``: the recipe (pixels beyond +-10 sigma missing);
- ``no_clip``: the same with ``clip_sigma`` 1e6 (every pixel read, however far out);
- ``asinh``: flux replaced by asinh(flux / median / 0.05) before the recipe's normalisation (log-like: the tails
  come in).

    OMP_NUM_THREADS=1 python benchmarks/xp_flux_clipping.py [--variants clip10,no_clip,asinh] [--steps 4000]
        [--out benchmarks/results/xp_flux_clipping.json]

Runs go to ``runs/xp_flux_clipping/<variant>`` and are reused when their ``final/`` exists; ~10 min each on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import real_data  # noqa: E402
from spectrafm_hf.training.presets import read_yaml  # noqa: E402
from spectrafm_hf.training.run import select_stars, train_or_reuse  # noqa: E402

ASINH_SOFTENING = 0.05  # in units of the spectrum's median flux
NO_CLIP = 1e6


def asinh_flux(ds):
    def transform(batch):
        out = []
        for flux in batch["flux"]:
            f = np.asarray(flux, np.float64)
            out.append(np.arcsinh(f / np.median(f[np.isfinite(f)]) / ASINH_SOFTENING))
        return {"flux": out}

    return ds.map(transform, batched=True)


def masked_fractions(final, ds) -> dict:
    """Fraction of the validation pixels the run's processor treats as missing (all stars, stars below 4000 K)."""
    from spectrafm_hf import SpectraFMProcessor

    proc = SpectraFMProcessor.from_pretrained(final)
    rows = ds.with_format("numpy")
    lost = np.array([np.mean(~proc.normalize_arrays(r["wavelength"], r["flux"], np.isfinite(r["flux"]))[1])
                     for r in rows])
    cool = np.asarray(ds["TEFF"], np.float64) < 4000
    return {"masked_fraction": round(float(lost.mean()), 4),
            "masked_fraction_below_4000K": round(float(lost[cool].mean()), 4)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "scripts/configs/real_xp_cpu.yaml"))
    p.add_argument("--variants", default="clip10,no_clip,asinh")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--size", type=int, default=10000)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/xp_flux_clipping.json"))
    a = p.parse_args(argv)
    cfg = read_yaml(Path(a.config).read_text())
    labels = list(cfg["labels"])
    train, val, _ = real_data.load_splits(cfg)
    sub = select_stars(train, {}, a.size, int(cfg["xp_full"].get("selection_seed", 77)))
    out = {"split": "validation", "n_train": len(sub), "steps": a.steps, "variants": {}}
    for variant in a.variants.split(","):
        data = [real_data.fm_data(cfg, d) for d in (sub, val)]
        if variant == "asinh":
            data = [asinh_flux(d) for d in data]
        extra = {"clip_sigma": NO_CLIP} if variant == "no_clip" else {}
        run_dir = REPO / "runs" / "xp_flux_clipping" / variant
        final = train_or_reuse(real_data.spectrafm_values(cfg, run_dir, a.steps, labels, **extra),
                               splits=(data[0], data[1], None))
        m = json.loads((Path(final).parent / "final_metrics.json").read_text())
        out["variants"][variant] = {"eval_loss": round(m["eval_loss"], 4),
                                    **{n: round(m[f"eval_{n}_robust_scatter"], 4) for n in labels},
                                    **masked_fractions(final, data[1])}
        print(variant, out["variants"][variant], flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
