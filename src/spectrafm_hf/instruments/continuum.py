"""Pseudo-continuum normalisation for un-normalised spectra (apStar, apVisit, BOSS/SDSS, LAMOST, GALAH counts).

Method (:func:`normalize_continuum`):

1. **Segments.** The spectrum is cut into segments that are fitted independently: at every gap between consecutive
   usable pixels wider than ``max_gap_pixels`` median pixel steps (default 50; this splits the three APOGEE chips,
   whose gaps are >150 px, and the two LAMOST MRS arms), or at the ``segments`` you give as ``[(wmin, wmax), ...]``
   in Angstrom. A segment with fewer than ``min_pixels`` usable pixels gets no continuum (its pixels are masked).
2. **Continuum per segment**, one of
   - ``"polynomial"`` (default): a Chebyshev polynomial of ``degree`` (default 3) in wavelength scaled to [-1, 1],
     fitted by unweighted least squares, iterated ``niter`` times with asymmetric sigma clipping: pixels more than
     ``sigma_low`` robust standard deviations (1.4826 x MAD of the residuals) *below* the fit (absorption lines) or
     ``sigma_high`` above it (cosmics, emission) are dropped from the next fit; stops early when the kept set no
     longer changes.
   - ``"percentile"``: a running ``percentile`` (default 90th) of the usable fluxes in a window of
     ``window_pixels`` pixels (default: a tenth of the segment, at least 51), smoothed by a running mean of the same
     width, interpolated onto every pixel of the segment.
3. **Result**: ``flux / continuum`` and ``ivar * continuum**2``; pixels where the continuum is not finite or <= 0 are
   masked. ``meta['normalized'] = True`` and ``meta['continuum']`` records the method, its parameters and the
   segments. Use ``return_continuum=True`` to also get the continuum array.

This is a generic pseudo-continuum, not ASPCAP's (which fits each chip to the model spectrum); on a real apStar it
agrees with an aspcapStar-style per-chip quadratic normalisation to about a percent (tests/test_readers.py).
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import chebyshev as C

from ..spectrum import Spectrum, SpectrumError

__all__ = ["normalize_continuum", "split_segments"]


def split_segments(wavelength, usable, max_gap_pixels: float = 50.0, segments=None) -> list[np.ndarray]:
    """Index arrays (into the spectrum) of the segments to fit separately (see the module docstring)."""
    wl = np.asarray(wavelength, dtype=np.float64)
    usable = np.asarray(usable, bool)
    if segments is not None:
        out = []
        for lo, hi in segments:
            idx = np.flatnonzero((wl >= lo) & (wl <= hi))
            if idx.size:
                out.append(idx)
        return out
    good = np.flatnonzero(usable)
    if good.size == 0:
        return []
    step = np.median(np.diff(wl)) if wl.size > 1 else 1.0
    breaks = np.flatnonzero(np.diff(wl[good]) > max_gap_pixels * step)
    starts = np.concatenate([[good[0]], good[breaks + 1]])
    ends = np.concatenate([good[breaks], [good[-1]]])
    return [np.arange(a, b + 1) for a, b in zip(starts, ends)]


def _robust_std(r) -> float:
    if r.size == 0:
        return np.inf
    return 1.4826 * float(np.median(np.abs(r - np.median(r)))) or float(np.std(r)) or 1e-30


def _poly_continuum(x, f, use, degree, niter, sigma_low, sigma_high):
    keep = use.copy()
    cont = None
    for _ in range(max(1, niter)):
        if keep.sum() <= degree + 1:
            break
        coef = C.chebfit(x[keep], f[keep], degree)
        cont = C.chebval(x, coef)
        r = f - cont
        s = _robust_std(r[keep])
        new = use & (r > -sigma_low * s) & (r < sigma_high * s)
        if np.array_equal(new, keep):
            break
        keep = new
    if cont is None:
        return np.full(x.size, np.nan)
    return cont


def _percentile_continuum(f, use, percentile, window):
    from scipy.ndimage import percentile_filter, uniform_filter1d

    idx = np.flatnonzero(use)
    w = int(min(window, idx.size))
    w = max(w | 1, 1)  # odd
    p = percentile_filter(f[idx], percentile, size=w, mode="nearest")
    p = uniform_filter1d(p, size=w, mode="nearest")
    return np.interp(np.arange(f.size), idx, p)


def normalize_continuum(
    spectrum: Spectrum,
    method: str = "polynomial",
    degree: int = 3,
    niter: int = 10,
    sigma_low: float = 1.5,
    sigma_high: float = 3.0,
    percentile: float = 90.0,
    window_pixels: int | None = None,
    segments=None,
    max_gap_pixels: float = 50.0,
    min_pixels: int = 50,
    return_continuum: bool = False,
    force: bool = False,
):
    """Divide ``spectrum`` by a pseudo-continuum (method in the module docstring) and return the new Spectrum
    (and the continuum array when ``return_continuum``). A spectrum whose ``meta['normalized']`` is already True is
    returned unchanged unless ``force=True``."""
    if method not in ("polynomial", "percentile"):
        raise ValueError(f"method must be 'polynomial' or 'percentile', got {method!r}")
    src = spectrum.meta.get("source")
    if spectrum.meta.get("normalized") and not force:
        cont = np.ones(len(spectrum))
        return (spectrum, cont) if return_continuum else spectrum
    wl, flux = spectrum.wavelength, spectrum.flux
    usable = spectrum.good
    if not usable.any():
        raise SpectrumError(f"{src + ': ' if src else ''}cannot normalise a spectrum with no usable pixel")
    cont = np.full(wl.size, np.nan)
    used_segments = []
    for idx in split_segments(wl, usable, max_gap_pixels, segments):
        use = usable[idx]
        if use.sum() < max(min_pixels, degree + 2):
            continue
        f = np.where(use, flux[idx], 0.0)
        if method == "polynomial":
            lo, hi = wl[idx][0], wl[idx][-1]
            x = (2.0 * wl[idx] - (lo + hi)) / max(hi - lo, 1e-12)
            c = _poly_continuum(x, f, use, degree, niter, sigma_low, sigma_high)
        else:
            w = window_pixels if window_pixels is not None else max(51, idx.size // 10)
            c = _percentile_continuum(f, use, percentile, w)
        cont[idx] = c
        used_segments.append((float(wl[idx][0]), float(wl[idx][-1])))
    ok = np.isfinite(cont) & (cont > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        nflux = np.where(ok, flux / np.where(ok, cont, 1.0), np.nan)
        ivar = None if spectrum.ivar is None else np.where(ok, spectrum.ivar * np.where(ok, cont, 0.0) ** 2, 0.0)
    params = {"method": method, "segments": used_segments, "max_gap_pixels": max_gap_pixels}
    if method == "polynomial":
        params.update(degree=degree, niter=niter, sigma_low=sigma_low, sigma_high=sigma_high, basis="chebyshev")
    else:
        params.update(percentile=percentile, window_pixels=window_pixels)
    meta = dict(spectrum.meta, normalized=True, continuum=params)
    out = Spectrum(wavelength=wl, flux=nflux, ivar=ivar, mask=spectrum.mask & ok, lsf_sigma=spectrum.lsf_sigma,
                   instrument=spectrum.instrument, meta=meta)
    return (out, cont) if return_continuum else out
