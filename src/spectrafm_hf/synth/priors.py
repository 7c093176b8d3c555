"""The label prior of the synthetic spectra and :func:`sample_labels` (see :mod:`spectrafm_hf.synth`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .emulator import LABEL_NAMES
from .instruments import InstrumentSpec, get_instrument

@dataclass(frozen=True)
class LabelPrior:
    """The shipped label prior: giants and dwarfs on parametric Teff-logg sequences, a realistic [Fe/H] density
    with a metal-poor tail, a two-sequence alpha-[Fe/H] relation, and [O/Fe] correlated with [Mg/Fe].

    The numbers are fits (by least squares on binned medians, rounded) to the shapes of the DR17 labels of
    SpectraFM's 102,747 training stars (PAPER_FACTS.md section 4); the table itself is not shipped. Sampling:

    1. [Fe/H]: with probability ``metal_poor_fraction`` from the tail, density ``exp(([Fe/H] + 1)/tail_scale)``
       on [feh_min, -1) (DR17: 2.5 % below -1, 0.9 % below -1.5, 0.13 % below -2); otherwise a skew-normal
       ``feh_skewnorm = (shape, loc, scale)`` truncated to [-1, feh_max] (DR17 median -0.16).
    2. dwarf (probability ``dwarf_fraction``) or giant. Giants: red clump (``red_clump_fraction`` of giants with
       [Fe/H] > ``red_clump_min_feh``) with logg ~ N(rc_logg) and Teff ~ rc_teff0 + rc_teff_feh*[Fe/H] +
       N(0, rc_teff_sigma); RGB with logg from the piecewise-linear density ``rgb_logg_density`` and
       Teff = a + b logg + c max(logg - 2, 0)^2 + d [Fe/H] + N(0, rgb_teff_sigma) (``rgb_teff``: a, b, c, d).
       Dwarfs: Teff from ``dwarf_teff_density``, logg on the main sequence ``dwarf_logg_ms`` + N(0, sigma); with
       probability ``subgiant_fraction`` (Teff > 5000 K) a subgiant, logg lowered by |N(0, subgiant_dlogg)|.
       Teff/logg draws outside the valid box are redrawn (keeping [Fe/H]).
    3. [Mg/Fe]: for [Fe/H] >= -1 a high-alpha sequence with probability
       ``hi_frac / (1 + exp(([Fe/H] - hi_mid)/hi_width))`` at ``hi_alpha`` (a plateau declining above its knee),
       else the low-alpha sequence (piecewise linear in [Fe/H], kink at 0); below -1 a halo N(halo_alpha).
    4. [O/Fe] = o_mg[0] + o_mg[1] [Mg/Fe] + o_lowfeh_extra * clip(-([Fe/H] + 0.8)/0.5, 0, 1) + N(0, o_mg[2])
       (DR17: corr([O/Fe], [Mg/Fe]) = 0.84). Alpha draws outside the box are redrawn.
    """

    metal_poor_fraction: float = 0.025
    feh_min: float = -2.5
    feh_max: float = 0.5
    feh_split: float = -1.0
    tail_scale: float = 0.5
    feh_skewnorm: tuple[float, float, float] = (-2.17, 0.107, 0.386)
    dwarf_fraction: float = 0.26
    red_clump_fraction: float = 0.25
    red_clump_min_feh: float = -0.9
    rc_logg: tuple[float, float] = (2.43, 0.08)
    rc_teff0: float = 4700.0
    rc_teff_feh: float = -400.0
    rc_teff_sigma: float = 80.0
    rgb_logg_density: tuple[tuple[float, float], ...] = (
        (0.0, 0.1), (0.4, 0.3), (0.7, 0.75), (1.0, 0.9), (1.6, 1.0), (2.0, 0.85), (2.6, 0.8), (3.0, 0.65),
        (3.6, 0.3))
    rgb_teff: tuple[float, float, float, float] = (3100.0, 620.0, -110.0, -340.0)
    rgb_teff_sigma: float = 90.0
    dwarf_teff_density: tuple[tuple[float, float], ...] = (
        (3550.0, 0.12), (3700.0, 0.17), (4400.0, 0.18), (4600.0, 0.3), (5400.0, 0.6), (5700.0, 1.0),
        (6000.0, 1.0), (6200.0, 0.75), (6400.0, 0.3), (6692.0, 0.03))
    dwarf_logg_ms: tuple[tuple[float, float], ...] = (
        (3550.0, 4.67), (4000.0, 4.63), (4600.0, 4.59), (4900.0, 4.55), (5200.0, 4.50), (5500.0, 4.42),
        (5800.0, 4.25), (6100.0, 4.16), (6700.0, 4.10))
    dwarf_logg_sigma: float = 0.05
    subgiant_fraction: float = 0.3
    subgiant_dlogg: float = 0.35
    hi_frac: float = 0.8
    hi_mid: float = -0.35
    hi_width: float = 0.2
    hi_alpha: tuple[float, float, float, float] = (0.30, -0.6, -0.35, 0.06)  # plateau, knee, slope above, sigma
    lo_alpha: tuple[float, float, float, float] = (0.03, -0.14, -0.02, 0.05)  # at 0, slope below/above 0, sigma
    halo_alpha: tuple[float, float] = (0.24, 0.13)
    o_mg: tuple[float, float, float] = (0.03, 0.85, 0.055)
    o_lowfeh_extra: float = 0.04

    def rgb_teff_at(self, logg, feh):
        """The RGB relation's Teff (no scatter) at ``logg`` and ``[Fe/H]``: a + b logg + c max(logg - 2, 0)^2 + d [Fe/H]
        (``rgb_teff``)."""
        a, b, c, d = self.rgb_teff
        return a + b * logg + c * np.maximum(logg - 2.0, 0.0) ** 2 + d * feh


DEFAULT_PRIOR = LabelPrior()
DEFAULT_TABLE_JITTER = (50.0, 0.1, 0.03, 0.03, 0.05)  # as in the MOOG grid's own label draws


def _sample_pwl(rng, knots, n) -> np.ndarray:
    kx, ky = np.array(knots, np.float64).T
    x = np.linspace(kx[0], kx[-1], 4001)
    pdf = np.interp(x, kx, ky)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(x))])
    return np.interp(rng.random(n), cdf / cdf[-1], x)


def _sample_feh(rng, n, p: LabelPrior, mpf: float, lo: float, hi: float) -> np.ndarray:
    lo, hi = max(lo, p.feh_min), min(hi, p.feh_max)
    out = np.empty(n)
    tail = rng.random(n) < mpf
    k = int(tail.sum())
    a = np.exp((lo - p.feh_split) / p.tail_scale)
    out[tail] = p.feh_split + p.tail_scale * np.log(a + rng.random(k) * (1.0 - a))
    shp, loc, scale = p.feh_skewnorm
    delta = shp / np.sqrt(1.0 + shp**2)
    todo = np.flatnonzero(~tail)
    while todo.size:
        u0, u1 = rng.standard_normal((2, todo.size))
        x = loc + scale * (delta * np.abs(u0) + np.sqrt(1.0 - delta**2) * u1)
        ok = (x >= p.feh_split) & (x <= hi)
        out[todo[ok]] = x[ok]
        todo = todo[~ok]
    return out


def _sample_teff_logg(rng, feh, p: LabelPrior, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    n = feh.size
    teff, logg = np.empty(n), np.empty(n)
    todo = np.arange(n)
    for _ in range(1000):
        k = todo.size
        fe = feh[todo]
        t, g = np.empty(k), np.empty(k)
        dwarf = rng.random(k) < p.dwarf_fraction
        rc = ~dwarf & (rng.random(k) < p.red_clump_fraction) & (fe > p.red_clump_min_feh)
        rgb = ~dwarf & ~rc
        g[rc] = rng.normal(*p.rc_logg, size=rc.sum())
        t[rc] = p.rc_teff0 + p.rc_teff_feh * fe[rc] + rng.normal(0, p.rc_teff_sigma, rc.sum())
        gg = _sample_pwl(rng, p.rgb_logg_density, rgb.sum())
        g[rgb] = gg
        t[rgb] = p.rgb_teff_at(gg, fe[rgb]) + rng.normal(0, p.rgb_teff_sigma, rgb.sum())
        td = _sample_pwl(rng, p.dwarf_teff_density, dwarf.sum())
        kx, ky = np.array(p.dwarf_logg_ms).T
        gd = np.interp(td, kx, ky) + rng.normal(0, p.dwarf_logg_sigma, td.size)
        sub = (td > 5000.0) & (rng.random(td.size) < p.subgiant_fraction)
        gd[sub] -= np.abs(rng.normal(0, p.subgiant_dlogg, sub.sum()))
        t[dwarf], g[dwarf] = td, gd
        ok = (t >= lo[0]) & (t <= hi[0]) & (g >= lo[1]) & (g <= hi[1])
        teff[todo[ok]], logg[todo[ok]] = t[ok], g[ok]
        todo = todo[~ok]
        if not todo.size:
            break
    if todo.size:  # pragma: no cover - only for pathological priors
        teff[todo] = np.clip(t[~ok], lo[0], hi[0])
        logg[todo] = np.clip(g[~ok], lo[1], hi[1])
    return teff, logg


def _sample_alpha(rng, feh, p: LabelPrior, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    n = feh.size
    ofe, mgfe = np.empty(n), np.empty(n)
    todo = np.arange(n)
    for _ in range(1000):
        fe = feh[todo]
        k = todo.size
        hi_seq = rng.random(k) < p.hi_frac / (1.0 + np.exp((fe - p.hi_mid) / p.hi_width))
        h0, hknee, hslope, hsig = p.hi_alpha
        l0, lbelow, labove, lsig = p.lo_alpha
        mg = np.where(hi_seq,
                      h0 + hslope * np.maximum(fe - hknee, 0.0) + rng.normal(0, hsig, k),
                      l0 + lbelow * np.minimum(fe, 0.0) + labove * np.maximum(fe, 0.0) + rng.normal(0, lsig, k))
        halo = fe < p.feh_split
        mg[halo] = rng.normal(*p.halo_alpha, size=halo.sum())
        o = (p.o_mg[0] + p.o_mg[1] * mg + p.o_lowfeh_extra * np.clip(-(fe + 0.8) / 0.5, 0.0, 1.0)
             + rng.normal(0, p.o_mg[2], k))
        ok = (o >= lo[2]) & (o <= hi[2]) & (mg >= lo[3]) & (mg <= hi[3])
        ofe[todo[ok]], mgfe[todo[ok]] = o[ok], mg[ok]
        todo = todo[~ok]
        if not todo.size:
            break
    if todo.size:  # pragma: no cover
        ofe[todo], mgfe[todo] = np.clip(o[~ok], lo[2], hi[2]), np.clip(mg[~ok], lo[3], hi[3])
    return ofe, mgfe


def _table_to_array(table) -> np.ndarray:
    """(m, 5) float64 from an (m, 5) array, a structured array, a dict/DataFrame/astropy Table with the 5 names."""
    if isinstance(table, np.ndarray) and table.dtype.names is None:
        arr = np.asarray(table, np.float64)
    else:
        cols = []
        names = list(getattr(table, "dtype", None).names or []) if hasattr(table, "dtype") else []
        keys = names or list(getattr(table, "colnames", None) or getattr(table, "columns", None) or table.keys())
        lower = {str(k).lower(): k for k in keys}
        for nm in LABEL_NAMES:
            if nm.lower() not in lower:
                raise ValueError(f"label table has no column {nm!r} (needs {LABEL_NAMES}, case-insensitive)")
            cols.append(np.asarray(table[lower[nm.lower()]], np.float64))
        arr = np.stack(cols, axis=1)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(f"label table must be (m, 5) in the order {LABEL_NAMES}, got shape {arr.shape}")
    return arr


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def sample_labels(n: int, seed=0, prior: Any = "default", *, metal_poor_fraction: float | None = None,
                  jitter=None, instrument: str | InstrumentSpec = "apogee") -> np.ndarray:
    """Draw (n, 5) float32 labels TEFF, LOGG, O_FE, MG_FE, FE_H inside the instrument's valid label box.

    Args:
        n: number of stars.
        seed: int or ``np.random.Generator``.
        prior: ``"default"`` (alias ``"dr17"``): :data:`DEFAULT_PRIOR`, the DR17-shaped parametric prior;
            a :class:`LabelPrior`; ``"box"``: uniform in the valid box (emulator coverage tests);
            or a label TABLE (an (m, 5) array, a structured array, dict, DataFrame or astropy Table with the five
            column names): rows are drawn with replacement and jittered by ``jitter`` (default
            ``DEFAULT_TABLE_JITTER`` = 50 K, 0.1, 0.03, 0.03, 0.05 dex), rows with NaN or outside the box are
            dropped (with a warning), jittered labels are clamped into the box.
        metal_poor_fraction: fraction with [Fe/H] < -1 for the parametric prior (DR17: 0.025; raise it, e.g. to
            0.2, to cover the metal-poor tail better in pretraining sets).
    """
    spec = get_instrument(instrument)
    rng = _rng(seed)
    lo, hi = spec.label_lo, spec.label_hi
    if n < 0:
        raise ValueError("n must be >= 0")
    if isinstance(prior, str) and prior.lower() == "box":
        return (lo + rng.random((n, 5)) * (hi - lo)).astype(np.float32)
    if isinstance(prior, str) or isinstance(prior, LabelPrior) or prior is None:
        if isinstance(prior, str) and prior.lower() not in ("default", "dr17"):
            raise ValueError(f"unknown prior {prior!r}: use 'default', 'box', a LabelPrior or a label table")
        p = prior if isinstance(prior, LabelPrior) else DEFAULT_PRIOR
        mpf = p.metal_poor_fraction if metal_poor_fraction is None else float(metal_poor_fraction)
        if not 0.0 <= mpf <= 1.0:
            raise ValueError("metal_poor_fraction must be in [0, 1]")
        feh = _sample_feh(rng, n, p, mpf, lo[4], hi[4])
        teff, logg = _sample_teff_logg(rng, feh, p, lo, hi)
        ofe, mgfe = _sample_alpha(rng, feh, p, lo, hi)
        return np.stack([teff, logg, ofe, mgfe, feh], axis=1).astype(np.float32)
    # a user's label table
    if metal_poor_fraction is not None:
        raise ValueError("metal_poor_fraction applies to the parametric prior, not to a label table")
    tab = _table_to_array(prior)
    finite = np.all(np.isfinite(tab), axis=1)
    inside = finite & np.all((tab >= lo) & (tab <= hi), axis=1)
    if not inside.all():
        warnings.warn(f"label table: dropped {int((~finite).sum())} rows with NaN and "
                      f"{int((finite & ~inside).sum())} rows outside the valid box of {spec.name!r}", stacklevel=2)
    tab = tab[inside]
    if tab.shape[0] == 0:
        raise ValueError("label table has no usable rows inside the valid box")
    jit = np.asarray(DEFAULT_TABLE_JITTER if jitter is None else jitter, np.float64)
    out = tab[rng.integers(0, tab.shape[0], size=n)] + rng.standard_normal((n, 5)) * jit
    return np.clip(out, lo, hi).astype(np.float32)


