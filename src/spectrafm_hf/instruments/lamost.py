"""LAMOST readers: LRS (old primary-image and DR9+ one-row COADD table layouts) and MRS (old per-pixel-row tables
with LOGLAM and DR9+ one-row vector tables with WAVELENGTH), told apart by structure, never by date.

Facts (shared/design/FORMATS.md section 3, checked on real DR6/DR7/DR10 files):

- Wavelengths are **vacuum** Angstrom (header ``VACUUM = T``; a file saying ``VACUUM = F`` is converted from air),
  heliocentric (``HELIO = T``), **not** rest frame: LASP's redshift is ``Z``, so ``lambda_rest = lambda / (1 + Z)``
  (``rest_frame=True`` applies it for LRS; MRS has only ``HELIO_RV``, the heliocentric correction, so
  ``rest_frame=True`` is refused for MRS).
- LRS image layout: primary (5, N) float32 rows flux, ivar, wavelength, andmask, ormask. DR9+ table layout:
  HDU1 ``COADD`` one row with vector columns FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK, NORMALIZATION. N is usually
  3909 but not always (a real DR10 file has 3903). The grid is ``10**(COEFF0 + COEFF1 * i)``; we compute it in float64
  from the header when it agrees with the stored float32 array to 0.01 A.
- Errors are ivar (0 = bad). Pixels are bad when ``ivar <= 0`` or ``ORMASK != 0`` (``mask_with="ormask"``, the
  FORMATS.md recommendation; ``"andmask"`` is the looser SDSS-style choice, ``None`` uses ivar only).
- ``NORMALIZATION`` (DR9+ LRS) is LAMOST's continuum-normalised flux, 0 at bad pixels; ``normalized=True`` returns it
  (ivar scaled by the continuum squared) with ``meta['normalized'] = True``.
- Labels are not in the files (only CLASS, SUBCLASS, Z, SNR); join LASP catalogues on ``meta['obsid']``.
"""

from __future__ import annotations

import numpy as np

from ..spectrum import Spectrum, air_to_vacuum
from ._common import (
    SPEED_OF_LIGHT_KMS,
    ReaderError,
    header_subset,
    header_value,
    make_spectrum,
    native,
    open_fits,
)

__all__ = ["read_lamost_lrs", "read_lamost_mrs", "looks_like_lamost", "lamost_layout"]

_HEADER_KEYS = (
    "OBSID", "DESIG", "OBJNAME", "RA", "DEC", "CLASS", "SUBCLASS", "Z", "Z_ERR", "HELIO_RV", "SNRU", "SNRG", "SNRR",
    "SNRI", "SNRZ", "DATA_V", "LMJD", "MJD", "PLANID", "SPID", "FIBERID", "OBS_DATE", "FIBERTYP", "OBJTYPE",
)
_MRS_ARMS = ("COADD_B", "COADD_R")


def looks_like_lamost(hdul) -> bool:
    h0 = hdul[0].header
    return "LAMOST" in str(h0.get("TELESCOP", "")).upper() or "LAMOST" in str(h0.get("ORIGIN", "")).upper()


def lamost_layout(hdul) -> str | None:
    """'lrs_image', 'lrs_table', 'mrs' or None."""
    names = [h.name.upper() for h in hdul]
    if any(n in _MRS_ARMS or n[:2] in ("B-", "R-") for n in names[1:]):
        return "mrs"
    if "COADD" in names[1:]:
        return "lrs_table"
    d = hdul[0].data
    if d is not None and np.ndim(d) == 2 and d.shape[0] >= 3:
        return "lrs_image"
    return None


def _bad_from_masks(ivar, andmask, ormask, mask_with, path):
    bad = ~(np.isfinite(ivar) & (ivar > 0))
    if mask_with == "ormask":
        bad |= np.nan_to_num(ormask) != 0
    elif mask_with == "andmask":
        bad |= np.nan_to_num(andmask) != 0
    elif mask_with is not None:
        raise ValueError(f"{path}: mask_with must be 'ormask', 'andmask' or None, got {mask_with!r}")
    return bad


def _vacuum(wl, h0, meta):
    vac = h0.get("VACUUM", True)
    if vac is False or str(vac).strip().upper() in ("F", "FALSE", "0"):
        meta["air_to_vacuum_applied"] = True
        return air_to_vacuum(wl)
    meta["air_to_vacuum_applied"] = False
    return wl


def _lrs_grid(h0, stored, path):
    """float64 grid from COEFF0/COEFF1 when it matches the stored wavelength row; else the stored row."""
    stored = native(stored)
    n = stored.size
    if not np.all(np.isfinite(stored)) or not (2500 < stored[0] < stored[-1] < 12000):
        raise ReaderError(
            f"{path}: the LAMOST wavelength row runs {stored[0]:.4g}..{stored[-1]:.4g}; expected an ascending "
            "3700-9100 A grid (a pilot-survey file keeps a continuum-subtracted spectrum in that row)")
    c0, c1 = header_value(h0, "COEFF0", "CRVAL1"), header_value(h0, "COEFF1", "CD1_1", "CDELT1")
    if c0 is not None and c1 is not None:
        grid = 10.0 ** (float(c0) + float(c1) * np.arange(n))
        if np.max(np.abs(grid - stored)) < 0.01:
            return grid
    return stored


def read_lamost_lrs(path, mask_with="ormask", normalized: bool = False, rest_frame: bool = False) -> list[Spectrum]:
    """Read a LAMOST low-resolution spectrum (either layout) into one Spectrum (see the module docstring)."""
    with open_fits(path) as hdul:
        if not looks_like_lamost(hdul):
            raise ReaderError(f"{path}: not a LAMOST file (TELESCOP/ORIGIN do not say LAMOST)")
        layout = lamost_layout(hdul)
        h0 = hdul[0].header
        norm = None
        if layout == "lrs_image":
            d = np.asarray(hdul[0].data)
            if d.shape[0] < 5:
                raise ReaderError(f"{path}: LAMOST LRS image has {d.shape[0]} rows; expected 5 "
                                  "(flux, ivar, wavelength, andmask, ormask)")
            flux, ivar, wave, andm, orm = (native(d[i]) for i in range(5))
            hdu = 0
        elif layout == "lrs_table":
            t = hdul["COADD"]
            cols = {c.upper(): c for c in t.columns.names}
            for need in ("FLUX", "IVAR", "WAVELENGTH"):
                if need not in cols:
                    raise ReaderError(f"{path}: LAMOST COADD table has no {need} column (columns: {t.columns.names})")
            if len(t.data) != 1:
                raise ReaderError(f"{path}: LAMOST COADD table has {len(t.data)} rows; expected 1")
            row = t.data[0]

            def col(name, default=0.0):
                return native(row[cols[name]]) if name in cols else np.full(np.size(row[cols["FLUX"]]), default)

            flux, ivar, wave, andm, orm = col("FLUX"), col("IVAR"), col("WAVELENGTH"), col("ANDMASK"), col("ORMASK")
            norm = col("NORMALIZATION") if "NORMALIZATION" in cols else None
            hdu = "COADD"
        else:
            raise ReaderError(f"{path}: LAMOST file is not an LRS layout (found HDUs {[h.name for h in hdul]})")
        meta = {"format": "lamost_lrs", "layout": layout, "hdu": hdu, "normalized": False, "rest_frame": False}
        meta.update(header_subset(h0, _HEADER_KEYS))
        wl = _lrs_grid(h0, wave, path)
    if not (flux.size == ivar.size == wl.size == andm.size == orm.size):
        raise ReaderError(f"{path}: LAMOST columns have different lengths")
    meta["object_id"] = str(meta["OBSID"]) if meta.get("OBSID") is not None else meta.get("DESIG")
    meta["obsid"] = meta.get("OBSID")
    wl = _vacuum(wl, h0, meta)
    if rest_frame:
        z = meta.get("Z")
        if z is None:
            raise ReaderError(f"{path}: rest_frame=True but the header has no redshift Z")
        wl = wl / (1.0 + float(z))
        meta["rest_frame"] = True
        meta["rv_kms"] = float(z) * SPEED_OF_LIGHT_KMS
    bad = _bad_from_masks(ivar, andm, orm, mask_with, path)
    if normalized:
        if norm is None:
            raise ReaderError(f"{path}: normalized=True but this LAMOST layout has no NORMALIZATION column "
                              "(use spectrafm_hf.instruments.continuum.normalize_continuum)")
        ok = (norm > 0) & np.isfinite(norm) & (flux > 0)
        cont = np.where(ok, flux / np.where(ok, norm, 1.0), np.nan)
        ivar = np.where(ok, np.nan_to_num(ivar) * np.nan_to_num(cont) ** 2, 0.0)
        flux = np.where(ok, norm, np.nan)
        bad |= ~ok
        meta["normalized"] = True
        meta["normalization"] = "LAMOST pipeline NORMALIZATION column"
    return [make_spectrum(path, wavelength=wl, flux=flux, ivar=np.where(np.isfinite(ivar), ivar, 0.0), mask=~bad,
                          instrument="lamost_lrs", meta=meta)]


def _mrs_table(hdu, path):
    """(wavelength, flux, ivar, andmask, ormask) of one MRS table, old (per-pixel rows) or new (one vector row)."""
    cols = {c.upper(): c for c in hdu.columns.names}
    d = hdu.data
    if "LOGLAM" in cols:  # DR6 v2 .. DR9 v0: one row per pixel
        get = lambda c: native(d[cols[c]]) if c in cols else None  # noqa: E731
        wl = 10.0 ** get("LOGLAM")
    elif "WAVELENGTH" in cols:  # DR9 v1+: one row, vector columns
        if len(d) != 1:
            raise ReaderError(f"{path}: LAMOST MRS table {hdu.name} with WAVELENGTH has {len(d)} rows; expected 1")
        get = lambda c: native(d[cols[c]][0]) if c in cols else None  # noqa: E731
        wl = get("WAVELENGTH")
    else:
        raise ReaderError(f"{path}: LAMOST MRS table {hdu.name} has neither LOGLAM nor WAVELENGTH "
                          f"(columns: {hdu.columns.names})")
    flux, ivar = get("FLUX"), get("IVAR")
    if flux is None or ivar is None:
        raise ReaderError(f"{path}: LAMOST MRS table {hdu.name} lacks FLUX or IVAR")
    andm = get("ANDMASK")
    orm = get("ORMASK")
    if orm is None:
        orm = get("PIXMASK")  # exposures carry one PIXMASK
    if andm is None:
        andm = orm
    zeros = np.zeros(flux.size)
    return wl, flux, ivar, zeros if andm is None else andm, zeros if orm is None else orm


def read_lamost_mrs(path, arms: str = "combine", exposures: bool = False, mask_with="ormask") -> list[Spectrum]:
    """Read a LAMOST medium-resolution file.

    Args:
        arms: ``"combine"`` (default: COADD_B and COADD_R in one Spectrum, blue ~4950-5350 A then red ~6300-6800 A)
            or ``"separate"`` (one Spectrum per coadd arm). A missing arm is skipped.
        exposures: also return every single-exposure table (``B-<LMJM>``, ``R-<LMJM>``), one Spectrum each.
        mask_with: ``"ormask"`` (default; PIXMASK for exposures), ``"andmask"`` or None (ivar only).
    """
    if arms not in ("combine", "separate"):
        raise ValueError(f"{path}: arms must be 'combine' or 'separate', got {arms!r}")
    with open_fits(path) as hdul:
        if not looks_like_lamost(hdul) or lamost_layout(hdul) != "mrs":
            raise ReaderError(f"{path}: not a LAMOST MRS file (no COADD_B/COADD_R/B-*/R-* tables)")
        h0 = hdul[0].header
        base = {"format": "lamost_mrs", "normalized": False, "rest_frame": False}
        base.update(header_subset(h0, _HEADER_KEYS))
        base["object_id"] = str(base["OBSID"]) if base.get("OBSID") is not None else base.get("DESIG")
        base["obsid"] = base.get("OBSID")
        parts = []
        for hdu in hdul[1:]:
            name = hdu.name.upper()
            is_coadd = name in _MRS_ARMS
            if not (is_coadd or (exposures and name[:2] in ("B-", "R-"))):
                continue
            wl, flux, ivar, andm, orm = _mrs_table(hdu, path)
            meta = dict(base, hdu=hdu.name, arm=name[-1] if is_coadd else name[0], coadd=is_coadd)
            meta.update({k.lower(): v for k, v in header_subset(hdu.header, ("SNR", "LMJM", "EXPTIME")).items()})
            bad = _bad_from_masks(ivar, andm, orm, mask_with, path)
            parts.append((wl, flux, ivar, bad, meta))
    if not parts:
        raise ReaderError(f"{path}: LAMOST MRS file has no COADD_B/COADD_R tables")
    out = []
    coadds = [p for p in parts if p[4]["coadd"]]
    if arms == "combine" and len(coadds) > 1:
        meta = dict(coadds[0][4], hdu="+".join(p[4]["hdu"] for p in coadds), arm="+".join(p[4]["arm"] for p in coadds),
                    snr={p[4]["arm"]: p[4].get("snr") for p in coadds})
        merged = tuple(np.concatenate([p[i] for p in coadds]) for i in range(4))
        parts = [(*merged, meta)] + [p for p in parts if not p[4]["coadd"]]
    for wl, flux, ivar, bad, meta in parts:
        wl = _vacuum(wl, h0, meta)
        out.append(make_spectrum(path, wavelength=wl, flux=flux, ivar=np.where(np.isfinite(ivar), ivar, 0.0),
                                 mask=~bad, instrument="lamost_mrs", meta=meta))
    return out
