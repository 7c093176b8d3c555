#!/usr/bin/env python
"""Where MILES giants sit against the red-giant-branch relation the giant-branch label prior uses.

    python benchmarks/miles_giant_branch_prior.py [--config scripts/configs/miles_fewshot_cpu.yaml]

``synthetic.giant_branch: {teff_sigma, box_fraction}`` (`spectrafm_hf.synth.optical.sample_optical_labels`) puts the
synthetic Teff on the APOGEE DR17 RGB relation of `spectrafm_hf.synth.priors.LabelPrior.rgb_teff`. Its two numbers were
set from the MILES giants (logg < 3.5) with [Fe/H] > -1 in the train and validation splits, in the preset's domain: no
test star and no metal-poor star. This prints and writes their Teff offsets from the relation (median, robust sd
= 1.4826 MAD, the share beyond 3 robust sd), and how far off the branch the degenerate move of the metal-poor cool
giants (+332 K, +0.33 dex logg, +0.37 dex [M/H]; docs/real_spectra.md, session 35) ends. Output:
benchmarks/results/miles_giant_branch_prior.json. A few seconds on one core, once the MILES data are cached.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import miles_fewshot  # noqa: E402

from spectrafm_hf.synth.priors import DEFAULT_PRIOR  # noqa: E402
from spectrafm_hf.training.presets import read_yaml  # noqa: E402

DEGENERATE_MOVE = (332.0, 0.33, 0.37)  # Teff, logg, [M/H] (benchmarks/results/miles_emulator_fit.json, session 35)


rgb_teff = DEFAULT_PRIOR.rgb_teff_at


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "scripts/configs/miles_fewshot_cpu.yaml"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/miles_giant_branch_prior.json"))
    a = p.parse_args(argv)
    cfg = read_yaml(Path(a.config).read_text())
    arrays, _, _, keep = miles_fewshot.miles_tables(cfg)
    teff, logg, feh = (np.asarray(arrays.labels[n], float) for n in ("TEFF", "LOGG", "FE_H"))
    split = np.empty(len(arrays), object)
    for name, idx in arrays.splits.items():
        split[idx] = name
    chosen = keep & np.isin(split, ["train", "validation"]) & (feh > -1.0) & (logg < 3.5)
    offset = teff[chosen] - rgb_teff(logg[chosen], feh[chosen])
    median = float(np.median(offset))
    robust_sd = float(1.4826 * np.median(np.abs(offset - median)))
    dt, dg, dm = DEGENERATE_MOVE
    result = {
        "command": "python benchmarks/miles_giant_branch_prior.py",
        "relation": "Teff = a + b logg + c max(logg - 2, 0)^2 + d [Fe/H], (a, b, c, d) = "
                    f"{list(DEFAULT_PRIOR.rgb_teff)} (LabelPrior.rgb_teff)",
        "stars": "MILES giants (logg < 3.5) with [Fe/H] > -1 in the train and validation splits, in the preset's domain",
        "n": int(chosen.sum()),
        "teff_offset_median": round(median, 1),
        "teff_offset_robust_sd": round(robust_sd, 1),
        "fraction_beyond_3_robust_sd": round(float(np.mean(np.abs(offset - median) > 3 * robust_sd)), 4),
        "teff_offset_percentiles_5_16_50_84_95": [round(float(v), 1) for v in np.percentile(offset, [5, 16, 50, 84, 95])],
        # from a giant at logg 1 (the cool metal-poor giants sit below logg 2, where the relation is linear)
        "degenerate_move_off_branch_k_from_logg_1": round(dt - (rgb_teff(1.0 + dg, dm) - rgb_teff(1.0, 0.0)), 1),
    }
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
