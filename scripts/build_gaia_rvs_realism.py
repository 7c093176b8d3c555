#!/usr/bin/env python
"""Build the Gaia RVS realism resources of ``INSTRUMENTS["gaia_rvs"]`` (run once; the outputs ship in the package):

    OMP_NUM_THREADS=1 .venv/bin/python scripts/build_gaia_rvs_realism.py

Writes, under ``src/spectrafm_hf/resources/realism/``:

- ``gaia_rvs_realism_templates.npz``: ONE neutral template on the RVS grid (``wavelength``; ``telluric`` = 1,
  ``sky`` = 0, ``pixmask`` = 0: Gaia observes from space) and a flat relative-error shape ``rel_err`` = 1.
- ``gaia_rvs_contmask_2401.npy``: the pseudo-continuum pixels: the ``N_CONTINUUM`` pixels with the smallest
  90th-percentile line depth (1 - flux) over the RVS MOOG grid stars with TEFF >= 4000 K (grid row 60, corrupt,
  excluded). TiO-bearing M stars are left out so the set is not driven by bands that only they have.
- ``gaia_rvs_line_table.npz``: the line table of the physics gap, made by ``realism.build_line_table`` (the APOGEE
  recipe: strength ``log gf - theta_ref * EP + log N(species)``) from the RVS-band rows of
  ``resources/lines/strongest_atomic_lines_by_band.csv`` with the recipe in ``line_table_recipe``.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from spectrafm_hf.synth import GAIA_RVS, realism  # noqa: E402

GRID = ROOT / "data/grids/moog_gaia_rvs_grid.npz"
CORRUPT_ROWS = (60,)  # see scripts/configs/emulator_gaia_rvs.yaml
N_CONTINUUM = 360
CONT_TEFF_MIN = 4000.0
CONT_PERCENTILE = 90.0


def continuum_mask(grid=GRID) -> np.ndarray:
    d = np.load(grid)
    flux, labels = d["flux"].astype(np.float32), d["labels"]
    if not np.allclose(d["wavelength"], GAIA_RVS.wavelength):
        raise SystemExit(f"{grid}: wavelength differs from the gaia_rvs grid")
    use = labels[:, 0] >= CONT_TEFF_MIN
    use[list(CORRUPT_ROWS)] = False
    depth = np.percentile(1.0 - flux[use], CONT_PERCENTILE, axis=0)
    mask = np.zeros(flux.shape[1], bool)
    mask[np.argsort(depth, kind="stable")[:N_CONTINUUM]] = True
    return mask


def csv_to_linelist_npz(csv_path, band: str, out_npz) -> int:
    """The RVS rows of the strongest-lines CSV in the layout ``realism.build_line_table`` reads."""
    cols = {"wl_vac": [], "species": [], "ep": [], "loggf": []}
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["band"] != band:
                continue
            cols["wl_vac"].append(float(row["wl_vac_A"]))
            cols["species"].append(float(row["species_code"]))
            cols["ep"].append(float(row["ep_eV"]))
            cols["loggf"].append(float(row["loggf"]))
    np.savez(out_npz, **{k: np.asarray(v, np.float64) for k, v in cols.items()})
    return len(cols["wl_vac"])


def main() -> None:
    rs = GAIA_RVS.realism
    out_dir = Path(str(realism.resource_path("realism")))
    wave = GAIA_RVS.wavelength
    n = wave.size
    np.savez_compressed(out_dir / Path(rs.templates_file).name, **{
        rs.templates_wave_key: wave.astype(np.float64),
        "telluric": np.ones((1, n), np.float32),
        "sky": np.zeros((1, n), np.float32),
        "pixmask": np.zeros((1, n), np.int16),
        "rel_err": np.ones((1, n), np.float32),
    })
    mask = continuum_mask()
    np.save(out_dir / Path(rs.continuum_mask_file).name, mask)
    rec = rs.line_table_recipe
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "rvs_lines.npz"
        n_rows = csv_to_linelist_npz(realism.resource_path("lines/strongest_atomic_lines_by_band.csv"), rec["band"],
                                     lines)
        t = realism.build_line_table(str(lines), str(out_dir / Path(rs.line_table_file).name),
                                     rec["species_log_n"], rec["theta_ref"], rec["n_keep"])
    print(f"templates: 1 neutral template on {n} px; continuum mask: {int(mask.sum())} px; "
          f"line table: {t['wl_vac'].size} of {n_rows} {rec['band']} rows")


if __name__ == "__main__":
    main()
