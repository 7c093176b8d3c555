"""What spectrafm-base says about inputs with no stellar information: flat flux 1.0, pure noise (with and without
ivar), one- and two-pixel spectra, and the real dwarf divided by its median. Runs on old code too ("before").

    python benchmarks/degenerate_inputs.py [--out benchmarks/results/degenerate_inputs.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from spectrafm_hf import SpectraFMPipeline, Spectrum, read
from spectrafm_hf.grids import apogee_wavelength_7514

ROOT = Path(__file__).resolve().parents[1]


def cases():
    wl = apogee_wavelength_7514()
    rng = np.random.default_rng(0)
    dwarf = read(ROOT / "tests/fixtures/apogee/apStar-dr17-2M19485057+5005279.fits")[0]
    med = np.median(dwarf.flux[dwarf.good])
    return {
        "flat_1.0": Spectrum(wl, np.ones(wl.size)),
        "noise_no_ivar": Spectrum(wl, rng.normal(1.0, 0.01, wl.size)),
        "noise_with_ivar": Spectrum(wl, rng.normal(1.0, 0.01, wl.size), ivar=np.full(wl.size, 1e4)),
        "one_pixel": Spectrum(wl[:1], [0.98]),
        "two_pixels": Spectrum(wl[:2], [0.98, 0.95]),
        "dwarf_divided_by_median": Spectrum(dwarf.wavelength, dwarf.flux / med, ivar=dwarf.ivar * med**2,
                                            mask=dwarf.mask),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "src/spectrafm_hf/resources/models/spectrafm-base"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/degenerate_inputs.json"))
    args = ap.parse_args(argv)
    pipe = SpectraFMPipeline.from_pretrained(args.model, device="cpu")
    out = {}
    for name, s in cases().items():
        try:
            row = pipe.predict(s).iloc[0]
        except Exception as e:  # noqa: BLE001 - a refusal is a result too
            out[name] = {"refused": f"{type(e).__name__}: {e}"}
        else:
            out[name] = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in
                         ("TEFF", "TEFF_err", "LOGG", "FE_H", "n_pixels", "normalization", "ood_distance", "flag")
                         if k in row}
        print(name, out[name])
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
