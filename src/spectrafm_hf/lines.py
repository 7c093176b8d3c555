"""Known spectral lines, and how much of a label query's attention falls on them.

    >>> table = pipe.attention(spectrum, "FE_H")                                # doctest: +SKIP
    >>> attention_enrichment(table, "Fe I")                                     # doctest: +SKIP
    {'attention_fraction': 0.31, 'pixel_fraction': 0.12, 'enrichment': 2.6, 'n_pixels': 7146}

The enrichment of a line set is the fraction of attention on pixels within ``half_width`` (0.5 A) of its lines divided
by the fraction of the used pixels (those with an attention value) that lie there: 1 = the query ignores the lines,
> 1 = it looks at them more than at the rest of the spectrum.

Line sets (vacuum wavelengths, `line_table`): a species name as in the shipped tables (``"Fe I"``, ``"Mg I"``, ...,
``"OH"``, ``"CO"``, ``"CN"``), ``"atomic"`` (every atomic species), ``"molecular"`` or ``"all"``. Only strong lines
count by default: atomic lines with the table's strength index (at Teff 4500 K, log Pe 0.5) >= -2, which in an
emulated 4500 K giant are on average clearly deeper than the background of weak lines (196 Fe I, 23 Mg I lines in the
APOGEE band), and the ~170-220 strongest lines of each molecule by log gf - (5040/4500) EP (178 OH, 223 CO, 169 CN;
the OH ones are ~0.2-0.3 deep in a 4000 K giant); see resources/lines/PROVENANCE.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["LABEL_LINE_SETS", "line_table", "line_windows", "nearest_line_names", "attention_enrichment",
           "enrichment_summary", "top_attended_lines"]

_DIR = Path(__file__).resolve().parent / "resources" / "lines"
# the strength cuts that make a line "strong" (see the module docstring)
STRONG_ATOMIC_INDEX = -2.0  # molecules: the `strong` column of hband_molecular_lines.csv
# the line set each label's attention is measured against: [Fe/H] on Fe I, [Mg/Fe] on Mg I, [O/Fe] on OH (the H band
# has no usable O I line); Teff and log g have no single species (excitation balance, line wings, molecules), so
# they are measured against all strong lines (atomic, OH, CO, CN): does the query look at lines rather than the
# continuum?
LABEL_LINE_SETS = {"FE_H": "Fe I", "MG_FE": "Mg I", "O_FE": "OH", "TEFF": "all", "LOGG": "all"}


@functools.lru_cache(maxsize=1)
def _all_lines() -> pd.DataFrame:
    atomic = pd.read_csv(_DIR / "strongest_atomic_lines_by_band.csv")
    atomic = pd.DataFrame({"wavelength": atomic["wl_vac_A"], "species": atomic["species"],
                           "strong": atomic["strength_T4500_logPe0.5"] >= STRONG_ATOMIC_INDEX, "kind": "atomic"})
    mol = pd.read_csv(_DIR / "hband_molecular_lines.csv")
    mol = pd.DataFrame({"wavelength": mol["wl_vac_A"], "species": mol["species"], "strong": mol["strong"].astype(bool),
                        "kind": "molecular"})
    # the bands of the atomic table overlap (LAMOST covers GALAH): one row per line
    t = pd.concat([atomic, mol]).drop_duplicates(subset=["wavelength", "species"])
    return t.sort_values("wavelength", kind="stable").reset_index(drop=True)


def line_table(wmin: float = 0.0, wmax: float = np.inf, species: str | Sequence[str] | None = "all",
               strong: bool = True) -> pd.DataFrame:
    """Shipped lines with vacuum wavelength in [wmin, wmax] (Angstrom): columns wavelength, species, strong, kind.

    ``species``: a line set (see the module docstring) or a list of species names; None or ``"all"`` = every line.
    ``strong``: keep only the strong lines (the default).
    """
    t = _all_lines()
    t = t[(t["wavelength"] >= wmin) & (t["wavelength"] <= wmax)]
    if strong:
        t = t[t["strong"]]
    if species not in (None, "all"):
        if species in ("atomic", "molecular"):
            t = t[t["kind"] == species]
        else:
            names = [species] if isinstance(species, str) else list(species)
            unknown = sorted(set(names) - set(_all_lines()["species"]))
            if unknown:
                raise ValueError(f"unknown species {unknown}; the line tables have e.g. 'Fe I', 'Mg I', 'OH', 'CO', "
                                 "'CN' (or give 'atomic', 'molecular' or 'all')")
            t = t[t["species"].isin(names)]
    return t.reset_index(drop=True)


def _nearest(wavelength, lines):
    """Index of the nearest line to each pixel and the distance to it (inf when there is no line)."""
    wl = np.asarray(wavelength, dtype=np.float64)
    lines = np.sort(np.asarray(lines, dtype=np.float64))
    if lines.size == 0:
        return np.zeros(wl.shape, int), np.full(wl.shape, np.inf)
    right = np.clip(np.searchsorted(lines, wl), 0, lines.size - 1)
    left = np.clip(right - 1, 0, lines.size - 1)
    take_left = np.abs(wl - lines[left]) < np.abs(wl - lines[right])
    idx = np.where(take_left, left, right)
    return idx, np.abs(wl - lines[idx])


def line_windows(wavelength, line_wavelengths, half_width: float = 0.5) -> np.ndarray:
    """Boolean mask of the pixels within ``half_width`` Angstrom of any of ``line_wavelengths``."""
    if not half_width > 0:
        raise ValueError(f"half_width must be > 0 Angstrom, got {half_width!r}")
    return _nearest(wavelength, line_wavelengths)[1] <= half_width


def nearest_line_names(wavelength, half_width: float = 0.5, species: str | Sequence[str] | None = "all") -> np.ndarray:
    """For each pixel, the nearest strong line within ``half_width`` as ``"Fe I 15207.53"``, or ``""``."""
    wl = np.asarray(wavelength, dtype=np.float64)
    names = np.full(wl.shape, "", dtype=object)
    if wl.size == 0:
        return names
    t = line_table(np.nanmin(wl) - half_width, np.nanmax(wl) + half_width, species=species)
    idx, dist = _nearest(wl, t["wavelength"].to_numpy())  # line_table is sorted by wavelength
    hit = dist <= half_width
    labels = np.array([f"{s} {w:.2f}" for s, w in zip(t["species"], t["wavelength"])], dtype=object)
    names[hit] = labels[idx[hit]]
    return names


def _arrays(table):
    if isinstance(table, pd.DataFrame):
        missing = {"wavelength", "attention"} - set(table.columns)
        if missing:
            raise ValueError(f"the attention table has no column {sorted(missing)} (expected pipe.attention output)")
        return table["wavelength"].to_numpy(float), table["attention"].to_numpy(float)
    wl, att = table
    return np.asarray(wl, float), np.asarray(att, float)


def attention_enrichment(table, lines: str | Sequence[str] | np.ndarray = "Fe I", half_width: float = 0.5) -> dict:
    """How much more of one attention map falls within ``half_width`` of ``lines`` than a uniform map would put there.

    ``table``: `SpectraFMPipeline.attention` output (wavelength, attention; NaN = pixel not used) or a
    (wavelength, attention) pair. ``lines``: a line set name (see the module docstring), line wavelengths, or a
    boolean pixel mask as long as the map (any pixel set, e.g. continuum pixels; ``half_width`` is then unused).
    Returns attention_fraction, pixel_fraction (of the used pixels), enrichment (their ratio; NaN when no used pixel
    lies in a window) and n_pixels (used).
    """
    wl, att = _arrays(table)
    if isinstance(lines, str) or (isinstance(lines, Sequence) and lines and isinstance(lines[0], str)):
        lines = line_table(species=lines)["wavelength"].to_numpy()
    used = np.isfinite(att)
    if not used.any():
        raise ValueError("the attention map has no used pixel (all NaN)")
    if (att[used] < 0).any():
        raise ValueError("attention weights must be >= 0")
    if isinstance(lines, np.ndarray) and lines.dtype == bool:
        if lines.shape != att.shape:
            raise ValueError(f"a pixel mask must be as long as the attention map ({att.size}), got {lines.shape}")
        inside = lines & used
    else:
        inside = line_windows(wl, lines, half_width) & used
    total = att[used].sum()
    a = float(att[inside].sum() / total) if total > 0 else np.nan
    p = float(inside.sum() / used.sum())
    return {"attention_fraction": a, "pixel_fraction": p, "enrichment": a / p if p > 0 else np.nan,
            "n_pixels": int(used.sum())}


def enrichment_summary(per_map: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict:
    """Combine `attention_enrichment` results of many stars (rows of ``per_map``): mean attention and pixel
    fractions, enrichment = their ratio, and its bootstrap (over stars) standard error and 16-84 % interval."""
    a = per_map["attention_fraction"].to_numpy(float)
    p = per_map["pixel_fraction"].to_numpy(float)
    ok = np.isfinite(a) & np.isfinite(p)
    a, p = a[ok], p[ok]
    if not a.size or p.sum() == 0:
        return {"n_stars": int(a.size), "attention_fraction": np.nan, "pixel_fraction": np.nan, "enrichment": np.nan,
                "enrichment_err": np.nan, "enrichment_p16": np.nan, "enrichment_p84": np.nan}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, (n_boot, a.size))
    boot = a[idx].mean(1) / p[idx].mean(1)
    return {"n_stars": int(a.size), "attention_fraction": float(a.mean()), "pixel_fraction": float(p.mean()),
            "enrichment": float(a.mean() / p.mean()), "enrichment_err": float(boot.std()),
            "enrichment_p16": float(np.percentile(boot, 16)), "enrichment_p84": float(np.percentile(boot, 84))}


def top_attended_lines(table: pd.DataFrame, n: int = 5) -> list[tuple[float, str, float]]:
    """The ``n`` lines of an attention table (its ``line`` column) that get the most attention:
    ``[(wavelength, name, fraction of the map's attention), ...]``, most attended first."""
    if "line" not in table.columns:
        raise ValueError("the attention table has no 'line' column (expected pipe.attention output)")
    att = table["attention"].to_numpy(float)
    used = np.isfinite(att)
    total = att[used].sum()
    t = pd.DataFrame({"line": table["line"][used], "attention": att[used]})
    t = t[t["line"] != ""].groupby("line")["attention"].sum().sort_values(ascending=False).head(n)
    return [(float(name.rsplit(" ", 1)[1]), name, float(v / total)) for name, v in t.items()]
