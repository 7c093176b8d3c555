"""APOGEE readers: apStar / asStar (combined + visit rows), apVisit (3 chips), aspcapStar (normalised).

Layouts (DR13-DR17, checked on real files; see shared/design/DATA.md 2c):

- **apStar**: HDU0 header (CRVAL1=4.179, CDELT1=6e-6 log10 Angstrom, NWAVE=8575, NVISITS, Doppler RV_TEFF/...);
  HDU1 flux, HDU2 error, HDU3 pixel bitmask, HDU4-7 sky/telluric, each ``(nrow, 8575)`` (or 1-D with one row).
  Row 0 = pixel-weighted combination, row 1 = global-weighted combination, rows 2.. = the visits. A one-visit
  file stores the visit as row 0 (row 1, when present, is all zeros). Vacuum, rest frame. dtype varies (f4 on SAS,
  f8/i8 in some re-packaged files): we never assume one.
- **apVisit**: HDU1 flux, HDU2 error, HDU3 bitmask, HDU4 **wavelength**, each ``(3, 4096)``; the chips are stored
  red-first and each chip is descending. Vacuum, observed (not rest) frame.
- **aspcapStar**: HDU1 pseudo-continuum-normalised flux, HDU2 error, HDU3 ASPCAP best-fit model, HDU4 the ASPCAP
  table row; apStar grid; flux 0 in the chip gaps.

Bad pixels: a pixel is bad when its bitmask has any of ``DEFAULT_BAD_BITS`` = bits 0-7 and 12 (BADPIX, CRPIX,
SATPIX, UNFIXABLE, BADDARK, BADFLAT, BADERR, NOSKY, SIG_SKYLINE), the astroNN default; or when its error is not
finite, <= 0 or >= 1e9 (APOGEE's "no data" sentinel is 1e10).
"""

from __future__ import annotations

import numpy as np

from ..spectrum import Spectrum
from ._common import (
    ReaderError,
    header_subset,
    header_value,
    make_spectrum,
    native,
    open_fits,
    scalar,
    to_rest_frame,
)

__all__ = [
    "DEFAULT_BAD_BITS",
    "bitmask_from_bits",
    "read_apstar",
    "read_apvisit",
    "read_aspcapstar",
    "looks_like_apstar",
    "looks_like_apvisit",
    "looks_like_aspcapstar",
]

DEFAULT_BAD_BITS = (0, 1, 2, 3, 4, 5, 6, 7, 12)
_ERR_SENTINEL = 1e9

_APSTAR_HEADER_KEYS = (
    "SNR", "SNREV", "NVISITS", "STARFLAG", "ANDFLAG", "VHELIO", "VSCATTER", "VERR", "RV_TEFF", "RV_LOGG", "RV_FEH",
    "RV_ALPHA", "RV_CARB", "RV_CHI2", "RA", "DEC", "GLON", "GLAT", "J", "H", "K", "FIELD", "TELESCOP",
)
_APVISIT_HEADER_KEYS = (
    "SNR", "STARFLAG", "MJD5", "JD", "VRAD", "VRADERR", "VHELIO", "BC", "RVTEFF", "RVLOGG", "RVFEH", "RVALPH",
    "RVCARB", "RA", "DEC", "TELESCOP", "FIELD", "PLATEID", "FIBERID",
)
_ASPCAP_LABELS = ("TEFF", "LOGG", "M_H", "ALPHA_M", "FE_H", "MG_FE", "O_FE", "VMICRO", "VMACRO", "VSINI")


def bitmask_from_bits(bits) -> int:
    """The integer mask with the given bit numbers set (e.g. ``DEFAULT_BAD_BITS`` -> 4351)."""
    m = 0
    for b in bits:
        m |= 1 << int(b)
    return m


def _good_from(bitmask, err, bad_bits):
    bad = bitmask_from_bits(bad_bits)
    bm = np.asarray(bitmask)
    if bm.dtype.kind == "f":  # some re-packaged files store the mask as float
        bm = np.nan_to_num(bm, nan=0.0).astype(np.int64)
    good = (bm.astype(np.int64) & bad) == 0
    return good


def _ivar_from_err(err):
    err = native(err)
    ok = np.isfinite(err) & (err > 0) & (err < _ERR_SENTINEL)
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(ok, 1.0 / np.where(ok, err, 1.0) ** 2, 0.0)


def _loglam_grid(header, n, path):
    crval = header_value(header, "CRVAL1")
    cdelt = header_value(header, "CDELT1", "CD1_1")
    crpix = header_value(header, "CRPIX1", default=1.0)
    if crval is None or cdelt is None:
        raise ReaderError(f"{path}: no CRVAL1/CDELT1 wavelength keywords in the APOGEE header")
    crval, cdelt = float(crval), float(cdelt)
    if not (3.9 < crval < 4.5):
        raise ReaderError(f"{path}: CRVAL1={crval} is not an APOGEE log10(Angstrom) start (expected ~4.179)")
    return 10.0 ** (crval + cdelt * (np.arange(n) + 1.0 - float(crpix)))


# ------------------------------------------------------------------ detection
def _image_shape(hdu):
    from astropy.io import fits

    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        return None
    d = hdu.data
    return None if d is None or not hasattr(d, "shape") else tuple(d.shape)


def looks_like_apstar(hdul) -> bool:
    if len(hdul) < 4:
        return False
    s1, s3 = _image_shape(hdul[1]), _image_shape(hdul[3])
    if not s1 or not s3 or s1 != s3 or len(s1) not in (1, 2):
        return False
    if hdul[3].data.dtype.kind not in "iu":
        return False
    nwave = s1[-1]
    h0 = hdul[0].header
    crval = h0.get("CRVAL1", hdul[1].header.get("CRVAL1"))
    return (h0.get("NWAVE", nwave) == nwave) and crval is not None and 3.9 < float(crval) < 4.5


def looks_like_apvisit(hdul) -> bool:
    if len(hdul) < 5:
        return False
    s1, s4 = _image_shape(hdul[1]), _image_shape(hdul[4])
    if not s1 or s1 != s4 or len(s1) != 2 or s1[0] != 3:
        return False
    w = hdul[4].data
    finite = np.isfinite(w)
    return bool(finite.any()) and 14000.0 < float(np.nanmedian(w)) < 18000.0


def looks_like_aspcapstar(hdul) -> bool:
    if len(hdul) < 4:
        return False
    s1, s2, s3 = (_image_shape(hdul[i]) for i in (1, 2, 3))
    if not s1 or len(s1) != 1 or s1 != s2:
        return False
    if hdul[1].data.dtype.kind != "f":
        return False
    crval = hdul[1].header.get("CRVAL1")
    return crval is not None and 3.9 < float(crval) < 4.5


# ------------------------------------------------------------------ apStar
def _apstar_row_plan(nrow: int, nvisits: int | None, path):
    """[(row, kind, visit_number)] for the combined rows and the visit rows of an apStar."""
    if nvisits is None or nvisits < 1:
        nvisits = max(nrow - 2, 1) if nrow > 2 else 1
    if nvisits == 1:
        combined = [(0, "combined_pixel_weighted", None)]
        visits = [(0, "visit", 1)]  # a one-visit apStar stores the visit as the combined row
        return combined, visits
    if nrow < 2 + nvisits:
        raise ReaderError(f"{path}: apStar has {nrow} rows but NVISITS={nvisits} needs {2 + nvisits} (2 combined + visits)")
    combined = [(0, "combined_pixel_weighted", None), (1, "combined_global_weighted", None)]
    visits = [(2 + k, "visit", k + 1) for k in range(nvisits)]
    return combined, visits


def read_apstar(path, rows="combined", bad_bits=DEFAULT_BAD_BITS) -> list[Spectrum]:
    """Read an APOGEE apStar/asStar file.

    Args:
        path: the file.
        rows: ``"combined"`` (default: the pixel-weighted combined spectrum, row 0), ``"visits"`` (one Spectrum per
            visit; a one-visit file gives its single row), ``"all"`` (both combined rows, then the visits), or an
            int / list of ints (explicit rows).
        bad_bits: APOGEE pixel-mask bits that make a pixel bad (default bits 0-7 and 12).

    Returns:
        Spectra on the 8575-pixel vacuum rest-frame apStar grid; ``meta`` carries ``row``, ``kind``
        (``combined_pixel_weighted`` / ``combined_global_weighted`` / ``visit``), ``visit``, the header's SNR,
        NVISITS, VHELIO and Doppler labels (``RV_TEFF``, ``RV_LOGG``, ``RV_FEH``: rough RV-fit values, not ASPCAP)
        and the visit's own header values (``SFILEn``, ``JDn``, ``VHELIOn``, ``SNRVISn``) for visit rows.
    """
    with open_fits(path) as hdul:
        if not looks_like_apstar(hdul):
            raise ReaderError(f"{path}: not an APOGEE apStar layout (need HDU1 flux, HDU2 error, HDU3 integer bitmask)")
        h0 = hdul[0].header
        flux = np.atleast_2d(native(hdul[1].data))
        err = np.atleast_2d(native(hdul[2].data))
        bitmask = np.atleast_2d(np.asarray(hdul[3].data))
        hdr_wl = hdul[1].header if "CRVAL1" in hdul[1].header else h0
        nrow, npix = flux.shape
        if err.shape != flux.shape or bitmask.shape != flux.shape:
            raise ReaderError(f"{path}: apStar flux {flux.shape}, error {err.shape} and bitmask {bitmask.shape} differ")
        wl = _loglam_grid(hdr_wl, npix, path)
        nvisits = header_value(h0, "NVISITS")
        nvisits = int(nvisits) if nvisits is not None else None
        combined, visits = _apstar_row_plan(nrow, nvisits, path)
        base_meta = {
            "format": "apogee_apstar",
            "object_id": header_value(h0, "OBJID", "APOGEE_ID", "OBJECT"),
            "normalized": False,
            "rest_frame": True,
            "hdu": 1,
            "flux_unit": str(hdul[1].header.get("BUNIT", "")).strip() or None,
            "labels_source": "Doppler RV fit (header RV_*; not ASPCAP)",
        }
        base_meta.update(header_subset(h0, _APSTAR_HEADER_KEYS))

    if isinstance(rows, str):
        if rows == "combined":
            plan = combined[:1]
        elif rows == "visits":
            plan = visits
        elif rows == "all":
            plan = combined + [v for v in visits if v[0] not in {c[0] for c in combined}]
        else:
            raise ValueError(f"{path}: rows must be 'combined', 'visits', 'all' or row numbers, got {rows!r}")
    else:
        wanted = [int(r) for r in np.atleast_1d(rows)]
        kinds = {r: (r, k, v) for r, k, v in combined + visits}
        plan = []
        for r in wanted:
            if not 0 <= r < nrow:
                raise ValueError(f"{path}: row {r} out of range (file has {nrow} rows)")
            plan.append(kinds.get(r, (r, "row", None)))

    out = []
    for row, kind, visit in plan:
        f, e, m = flux[row], err[row], bitmask[row]
        if not np.any(np.isfinite(f) & (f != 0)):
            if kind == "combined_global_weighted":
                continue  # one-visit files carry an all-zero row 1
        meta = dict(base_meta, row=row, kind=kind, visit=visit)
        if visit is not None:
            meta["visit_header"] = {
                p: h0[f"{p}{visit}"] for p in ("SFILE", "JD", "VHELIO", "VRAD", "SNRVIS", "FIBER") if f"{p}{visit}" in h0
            }
        good = _good_from(m, e, bad_bits) & (f != 0)
        out.append(make_spectrum(path, wavelength=wl, flux=f, ivar=_ivar_from_err(e), mask=good, instrument="apogee",
                                 meta=meta))
    return out


# ------------------------------------------------------------------ apVisit
def read_apvisit(path, bad_bits=DEFAULT_BAD_BITS, rest_frame: bool = False) -> list[Spectrum]:
    """Read an APOGEE apVisit file: the three chips, each with its own (descending) wavelength array, merged into one
    ascending 12288-pixel Spectrum (vacuum; observed frame unless ``rest_frame=True``, which divides by
    ``1 + VRAD/c`` with the header's VRAD, or VREL from the table).
    """
    with open_fits(path) as hdul:
        if not looks_like_apvisit(hdul):
            raise ReaderError(f"{path}: not an APOGEE apVisit layout (need (3, N) flux and HDU4 wavelength arrays)")
        h0 = hdul[0].header
        flux, err, bitmask, wave = (np.asarray(hdul[i].data) for i in (1, 2, 3, 4))
        if not (flux.shape == err.shape == bitmask.shape == wave.shape):
            raise ReaderError(f"{path}: apVisit flux/error/mask/wavelength shapes differ: "
                              f"{flux.shape} {err.shape} {bitmask.shape} {wave.shape}")
        table = {}
        for hdu in hdul[5:]:
            if hdu.header.get("XTENSION", "").strip() == "BINTABLE" and "APOGEE_ID" in (hdu.columns.names or []):
                row = hdu.data[0]
                table = {n: scalar(row[n]) for n in hdu.columns.names if np.ndim(row[n]) == 0}
                break
        meta = {
            "format": "apogee_apvisit",
            "object_id": table.get("APOGEE_ID") or header_value(h0, "OBJID", "OBJECT"),
            "normalized": False,
            "rest_frame": False,
            "hdu": 1,
            "chips": 3,
        }
        meta.update(header_subset(h0, _APVISIT_HEADER_KEYS))
        for k in ("VREL", "VHELIO", "SNR", "MJD", "TELESCOPE", "FIELD", "RV_TEFF", "RV_LOGG", "RV_FEH"):
            if k in table and k not in meta:
                meta[k] = table[k]
    wl = native(wave).ravel()
    if rest_frame:
        rv = meta.get("VRAD", meta.get("VREL"))
        if rv is None:
            raise ReaderError(f"{path}: rest_frame=True but the apVisit has no VRAD/VREL velocity")
        wl = to_rest_frame(wl, rv)
        meta["rest_frame"] = True
        meta["rv_kms"] = float(rv)
    f, e, m = native(flux).ravel(), native(err).ravel(), np.asarray(bitmask).ravel()
    good = _good_from(m, e, bad_bits)
    return [make_spectrum(path, wavelength=wl, flux=f, ivar=_ivar_from_err(e), mask=good, instrument="apogee",
                          meta=meta)]


# ------------------------------------------------------------------ aspcapStar
def read_aspcapstar(path, model: bool = False) -> list[Spectrum]:
    """Read an APOGEE aspcapStar file (ASPCAP pseudo-continuum-normalised spectrum on the apStar grid).

    ``meta['normalized']`` is True; the ASPCAP table row (HDU4) is in ``meta['aspcap']`` (scalars, and short vectors
    as lists) and the usual labels (TEFF, LOGG, M_H, ALPHA_M, FE_H, MG_FE, O_FE...) in ``meta['labels']`` when the
    table has them as columns. Pixels with flux 0 (the chip gaps) are masked. With ``model=True`` a second Spectrum
    holds the ASPCAP best-fit model (HDU3), flagged ``meta['is_model'] = True``.
    """
    with open_fits(path) as hdul:
        if not looks_like_aspcapstar(hdul):
            raise ReaderError(f"{path}: not an APOGEE aspcapStar layout (need 1-D HDU1 flux, HDU2 error, HDU3 model)")
        h0 = hdul[0].header
        flux, err, mod = native(hdul[1].data), native(hdul[2].data), native(hdul[3].data)
        if not (flux.shape == err.shape == mod.shape):
            raise ReaderError(f"{path}: aspcapStar flux {flux.shape}, error {err.shape}, model {mod.shape} differ")
        wl = _loglam_grid(hdul[1].header, flux.size, path)
        aspcap = {}
        if len(hdul) > 4 and hdul[4].header.get("XTENSION", "").strip() == "BINTABLE" and len(hdul[4].data):
            row = hdul[4].data[0]
            for n in hdul[4].columns.names:
                v = row[n]
                if np.ndim(v) == 0:
                    aspcap[n] = scalar(v)
                elif np.size(v) <= 64 and np.asarray(v).dtype.kind in "fiub":
                    aspcap[n] = np.asarray(v).tolist()
    labels = {k: aspcap[k] for k in _ASPCAP_LABELS if k in aspcap}
    if not labels and isinstance(aspcap.get("PARAM"), list) and len(aspcap["PARAM"]) >= 7:
        # DR13/DR14 keep the calibrated parameters in the PARAM vector: TEFF, LOGG, LOG10VDOP, M_H, C_M, N_M, ALPHA_M..
        p = aspcap["PARAM"]
        labels = {k: (None if p[i] <= -9999 else p[i]) for k, i in (("TEFF", 0), ("LOGG", 1), ("M_H", 3), ("ALPHA_M", 6))}
    meta = {
        "format": "apogee_aspcapstar",
        "object_id": aspcap.get("APOGEE_ID") or header_value(h0, "OBJID", "OBJ", "APOGEE_ID", "OBJECT"),
        "normalized": True,
        "rest_frame": True,
        "hdu": 1,
        "aspcap": aspcap,
        "labels": labels,
    }
    meta.update(header_subset(h0, ("SNR", "NVISITS", "VHELIO", "VSCATTER", "FIELD", "TELESCOP")))
    good = np.isfinite(flux) & (flux != 0)
    out = [make_spectrum(path, wavelength=wl, flux=flux, ivar=_ivar_from_err(err), mask=good, instrument="apogee",
                         meta=meta)]
    if model:
        mmeta = dict(meta, is_model=True, hdu=3)
        out.append(make_spectrum(path, wavelength=wl, flux=mod, mask=np.isfinite(mod) & (mod != 0),
                                 instrument="apogee", meta=mmeta))
    return out
