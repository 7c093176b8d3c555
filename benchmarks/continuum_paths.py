"""How labels move between the old CLI normalisation (generic Chebyshev pseudo-continuum,
`instruments.normalize_continuum`) and the processor's (the training data's per-chip polynomial on the APOGEE
continuum pixels, `SpectraFMProcessor.prepare`) on the real APOGEE fixtures, with spectrafm-base.

    python benchmarks/continuum_paths.py   # writes benchmarks/results/continuum_paths.json
"""

from __future__ import annotations

import json
from pathlib import Path

from spectrafm_hf import SpectraFMPipeline, read
from spectrafm_hf.instruments import normalize_continuum

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "tests" / "fixtures" / "apogee").glob("ap*.fits"))
COLS = ["TEFF", "TEFF_err", "LOGG", "LOGG_err", "FE_H", "FE_H_err", "n_pixels", "snr", "ood_distance",
        "normalization", "flag"]


def main():
    pipe = SpectraFMPipeline.from_pretrained(ROOT / "src/spectrafm_hf/resources/models/spectrafm-base", device="cpu")
    out = []
    for path in FILES:
        s = read(path)[0]
        old = pipe.predict(normalize_continuum(s)).iloc[0]  # what `spectrafm predict` did before
        new = pipe.predict(s).iloc[0]
        row = {"file": path.name, "old_cli_chebyshev": {c: old[c] for c in COLS},
               "processor": {c: new[c] for c in COLS},
               "delta": {c: float(new[c] - old[c]) for c in ("TEFF", "LOGG", "FE_H")}}
        out.append(row)
        print(json.dumps(row, default=float))
    dest = ROOT / "benchmarks" / "results" / "continuum_paths.json"
    dest.write_text(json.dumps(out, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)) + "\n")


if __name__ == "__main__":
    main()
