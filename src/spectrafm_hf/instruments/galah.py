"""GALAH (HERMES) readers: DR3 per-camera files (4-5 HDUs), DR4 per-camera files (8 HDUs, "Iraf 6.0"), and the
DR4 ``<sobject_id>_*_fit_spectrum.fits`` analysis tables.

Facts (shared/design/FORMATS.md section 1, checked on real files):

- One file per camera: ``<15-digit sobject_id><camera>.fits``, camera 1 blue ~4713-4903 A, 2 green ~5648-5874 A,
  3 red ~6477-6737 A, 4 IR ~7585-7887 A. :func:`read_galah_star` reads and joins the cameras of one star.
- Wavelengths are **air** Angstrom on a linear grid ``CRVAL1 + (i + 1 - CRPIX1) * CDELT1``; every reader here
  converts them to **vacuum** with :func:`spectrafm_hf.air_to_vacuum` (``meta['air_to_vacuum_applied'] = True``).
- Reduced spectra are barycentric, not rest frame. ``rest_frame=True`` divides by ``1 + RV/c`` using DR4's ``RVCOM``,
  or for DR3 the RV implied by the normalised HDU's own rest-frame grid (its CRVAL1 is the reduced one times
  ``1 - RV/c``), or an ``rv_kms`` you pass.
- Errors are **relative** (sigma / flux): sigma = rel * flux. No mask exists: a pixel is bad when its relative error is
  not finite or <= 0, or its flux is not finite or (for counts) <= 0.
- DR3 HDU4 (``normalized=True``) is in the rest frame on its own grid (length not always 4096) and some stars lack
  it; its error is the relative error resampled onto that grid.
- DR4 header values are the reduction pipeline's initial guesses (TEFF_R, LOGG_R, FE_H_R, A_FE_R, ...), not DR4
  results; missing values are the string 'None' and become None here. HDU7 is the LSF FWHM per pixel
  (``lsf_sigma = FWHM / 2.3548``; the GALAH LSF is not exactly Gaussian, ``meta['LSF_B']`` is its boxiness).
"""

from __future__ import annotations

import re
from pathlib import Path

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
    to_rest_frame,
)

__all__ = [
    "read_galah_dr3",
    "read_galah_dr4",
    "read_galah_fit_spectrum",
    "read_galah_star",
    "looks_like_galah_dr3",
    "looks_like_galah_dr4",
    "looks_like_galah_fit_spectrum",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
_NAME_RE = re.compile(r"(?<!\d)(\d{15})([1-4])\.fits?(\.gz)?$")
_FIT_NAME_RE = re.compile(r"(?<!\d)(\d{15})_(allstar|single|coadds|binary|plxcom)_fit_spectrum")
_DR4_EXTNAMES = {"NORMALIZED", "RELATIVE_ERROR"}
_DR4_HEADER_KEYS = (
    "TEFF_R", "LOGG_R", "FE_H_R", "A_FE_R", "VMIC_R", "VBROAD_R", "PAR_OK", "RV", "E_RV", "RV_OK", "RVCOM", "E_RVCOM",
    "RVCOM_OK", "SNR", "SNR_AA", "RES", "GAIA_ID", "2MASS_ID", "GALAH_ID", "OBJ_NAME", "PIPE_VER", "WAV_OK",
    "CROSS_OK", "TRACE_OK", "SLITMASK", "BARYEFF", "NCOMBINE", "PLATE", "UTMJD_S", "RA_OBS", "DEC_OBS",
)
_DR3_HEADER_KEYS = ("OBJECT", "PIPE_VER", "BARYEFF", "NCOMBINE", "UTMJD", "MOLECFIT", "RA", "DEC")


def _is_hermes(h0) -> bool:
    return "HERMES" in str(h0.get("INSTRUME", "")).upper() or str(h0.get("ORIGIN", "")).upper().startswith("GALAH")


def looks_like_galah_dr4(hdul) -> bool:
    names = {h.name.upper() for h in hdul[1:]}
    return _is_hermes(hdul[0].header) and _DR4_EXTNAMES <= names


def looks_like_galah_dr3(hdul) -> bool:
    h0 = hdul[0].header
    if not _is_hermes(h0) or looks_like_galah_dr4(hdul) or len(hdul) not in (4, 5):
        return False
    return hdul[0].data is not None and np.ndim(hdul[0].data) == 1 and np.ndim(hdul[1].data) == 1


def looks_like_galah_fit_spectrum(hdul) -> bool:
    for hdu in hdul[1:2]:
        if hdu.header.get("XTENSION", "").strip() == "BINTABLE":
            return {"wave", "sob", "uob"} <= {c.lower() for c in hdu.columns.names}
    return False


def _linear_air_grid(header, n, path):
    crval, cdelt = header_value(header, "CRVAL1"), header_value(header, "CDELT1", "CD1_1")
    crpix = header_value(header, "CRPIX1", default=1.0)
    if crval is None or cdelt is None:
        raise ReaderError(f"{path}: GALAH HDU has no CRVAL1/CDELT1 wavelength keywords")
    return float(crval) + (np.arange(n) + 1.0 - float(crpix)) * float(cdelt)


def _camera(path, wl_air) -> int:
    m = _NAME_RE.search(Path(path).name)
    if m:
        return int(m.group(2))
    w0 = float(wl_air[0])
    return 1 if w0 < 5200 else 2 if w0 < 6100 else 3 if w0 < 7100 else 4


def _sobject_id(path, h0=None):
    m = _NAME_RE.search(Path(path).name) or _FIT_NAME_RE.search(Path(path).name)
    if m:
        return m.group(1)
    obj = str(h0.get("OBJECT", "")).strip() if h0 is not None else ""
    return obj if re.fullmatch(r"\d{15}", obj) else None


def _rel_to_ivar(flux, rel, counts: bool):
    ok = np.isfinite(rel) & (rel > 0) & np.isfinite(flux)
    if counts:
        ok &= flux > 0
    sigma = np.where(ok, rel * np.abs(flux), 1.0)
    ivar = np.where(ok & (sigma > 0), 1.0 / sigma**2, 0.0)
    return ivar, ok


def _finish(path, wl_air, flux, ivar, good, meta, rest_rv, lsf=None):
    wl = air_to_vacuum(wl_air)
    meta["air_to_vacuum_applied"] = True
    if rest_rv is not None:
        wl = to_rest_frame(wl, rest_rv)
        meta["rest_frame"] = True
        meta["rv_kms"] = float(rest_rv)
    return make_spectrum(path, wavelength=wl, flux=flux, ivar=ivar, mask=good, lsf_sigma=lsf, instrument="galah",
                         meta=meta)


def read_galah_dr3(path, normalized: bool = False, rest_frame: bool = False, rv_kms: float | None = None) -> list[Spectrum]:
    """Read one GALAH DR3 camera file (reduced counts, or with ``normalized=True`` the rest-frame HDU4)."""
    with open_fits(path) as hdul:
        if not looks_like_galah_dr3(hdul):
            raise ReaderError(f"{path}: not a GALAH DR3 per-camera file (HERMES, 4-5 one-dimensional HDUs)")
        h0 = hdul[0].header
        flux0, rel = native(hdul[0].data), native(hdul[1].data)
        if flux0.size != rel.size:
            raise ReaderError(f"{path}: flux ({flux0.size}) and relative error ({rel.size}) lengths differ")
        wl0 = _linear_air_grid(h0, flux0.size, path)
        has_norm = len(hdul) >= 5
        norm_hdr = hdul[4].header if has_norm else None
        norm = native(hdul[4].data) if has_norm else None
    meta = {"format": "galah_dr3", "hdu": 0, "normalized": False, "rest_frame": False,
            "object_id": _sobject_id(path, h0), "camera": _camera(path, wl0)}
    meta.update(header_subset(h0, _DR3_HEADER_KEYS))
    rv_norm = None
    if has_norm:
        c0, c4 = float(h0["CRVAL1"]), float(norm_hdr["CRVAL1"])
        rv_norm = SPEED_OF_LIGHT_KMS * (1.0 - c4 / c0)  # HDU4 grid = reduced grid * (1 - RV/c)
        meta["rv_kms_from_normalised_grid"] = rv_norm
    if normalized:
        if not has_norm:
            raise ReaderError(f"{path}: this GALAH DR3 file has no normalised HDU4 (some DR3 stars lack it); "
                              "read it with normalized=False and use normalize_continuum")
        wl4 = _linear_air_grid(norm_hdr, norm.size, path)
        # the relative error lives on the barycentric grid: map the rest-frame HDU4 grid back onto it
        rel_bad = ~(np.isfinite(rel) & (rel > 0))
        rel4 = np.interp(wl4 * (float(h0["CRVAL1"]) / float(norm_hdr["CRVAL1"])), wl0, np.where(rel_bad, np.nan, rel),
                         left=np.nan, right=np.nan)
        ivar, good = _rel_to_ivar(norm, rel4, counts=False)
        meta.update(hdu=4, normalized=True, rest_frame=True, rv_kms=rv_norm, n_pixels_normalised_hdu=int(norm.size))
        return [_finish(path, wl4, norm, ivar, good, meta, None)]
    ivar, good = _rel_to_ivar(flux0, rel, counts=True)
    rest_rv = None
    if rest_frame:
        rest_rv = rv_kms if rv_kms is not None else rv_norm
        if rest_rv is None:
            raise ReaderError(f"{path}: rest_frame=True needs an RV: GALAH DR3 files carry none (and this one has no "
                              "normalised HDU to infer it from); pass rv_kms= from the DR3 catalogue")
    return [_finish(path, wl0, flux0, ivar, good, meta, rest_rv)]


def read_galah_dr4(path, normalized: bool = False, rest_frame: bool = False, rv_kms: float | None = None) -> list[Spectrum]:
    """Read one GALAH DR4 camera file: counts (HDU0) or, with ``normalized=True``, the normalised HDU1."""
    with open_fits(path) as hdul:
        if not looks_like_galah_dr4(hdul):
            raise ReaderError(f"{path}: not a GALAH DR4 per-camera file (needs 'normalized' and 'relative_error' HDUs)")
        h0 = hdul[0].header
        flux = native(hdul["NORMALIZED"].data if normalized else hdul[0].data)
        rel = native(hdul["RELATIVE_ERROR"].data)
        fwhm = native(hdul["RESOLUTION_PROFILE"].data) if "RESOLUTION_PROFILE" in hdul else None
    if flux.size != rel.size:
        raise ReaderError(f"{path}: flux ({flux.size}) and relative error ({rel.size}) lengths differ")
    wl = _linear_air_grid(h0, flux.size, path)
    meta = {"format": "galah_dr4", "hdu": 1 if normalized else 0, "normalized": bool(normalized), "rest_frame": False,
            "object_id": _sobject_id(path, h0), "camera": _camera(path, wl),
            "flux_unit": None if normalized else (str(h0.get("BUNIT", "")).strip() or None)}
    meta.update(header_subset(h0, _DR4_HEADER_KEYS))
    if isinstance(meta.get("GAIA_ID"), str) and meta["GAIA_ID"].isdigit():
        meta["GAIA_ID"] = int(meta["GAIA_ID"])  # a Gaia source_id is an int64, never a float
    meta["LSF_B"] = header_value(h0, "B")
    ivar, good = _rel_to_ivar(flux, rel, counts=not normalized)
    lsf = None
    if fwhm is not None and fwhm.size == flux.size and np.all(np.isfinite(fwhm)) and np.all(fwhm > 0):
        lsf = fwhm * _FWHM_TO_SIGMA * (air_to_vacuum(wl + 0.5) - air_to_vacuum(wl - 0.5))  # A(air) -> A(vacuum)
    meta["lsf_measured"] = lsf is not None
    rest_rv = None
    if rest_frame:
        rest_rv = rv_kms if rv_kms is not None else meta.get("RVCOM")
        if rest_rv is None:
            raise ReaderError(f"{path}: rest_frame=True but RVCOM is missing; pass rv_kms=")
    return [_finish(path, wl, flux, ivar, good, meta, rest_rv, lsf=lsf)]


def read_galah_fit_spectrum(path, model: bool = False, use_fit_mask: bool = True) -> list[Spectrum]:
    """Read a GALAH DR4 ``*_fit_spectrum.fits`` table (wave, sob, uob, smod, mob): normalised observed flux with its
    sigma; ``mob`` (pixels used by the GALAH fit) is the mask when ``use_fit_mask``. ``wave`` is taken to be air
    (GALAH's convention; not verified on a public file) and converted to vacuum. ``model=True`` adds ``smod`` as a
    second Spectrum with ``meta['is_model'] = True``."""
    with open_fits(path) as hdul:
        if not looks_like_galah_fit_spectrum(hdul):
            raise ReaderError(f"{path}: not a GALAH fit_spectrum table (HDU1 with wave/sob/uob columns)")
        cols = {c.lower(): c for c in hdul[1].columns.names}
        d = hdul[1].data
        wl, sob, uob = (native(d[cols[c]]) for c in ("wave", "sob", "uob"))
        smod = native(d[cols["smod"]]) if "smod" in cols else None
        mob = np.asarray(d[cols["mob"]]).astype(bool) if "mob" in cols else np.ones(wl.size, bool)
    ok = np.isfinite(uob) & (uob > 0) & np.isfinite(sob)
    ivar = np.where(ok, 1.0 / np.where(ok, uob, 1.0) ** 2, 0.0)
    good = ok & (mob if use_fit_mask else True)
    meta = {"format": "galah_fit_spectrum", "hdu": 1, "normalized": True, "rest_frame": None,
            "object_id": _sobject_id(path)}
    out = [_finish(path, wl, sob, ivar, good, meta, None)]
    if model and smod is not None:
        out.append(_finish(path, wl, smod, None, np.isfinite(smod), dict(meta, is_model=True), None))
    return out


def read_galah_star(path, normalized: bool = False, rest_frame: bool = False, rv_kms: float | None = None) -> Spectrum:
    """Read every camera file of one GALAH star (the siblings ``<sobject_id>[1-4].fits`` of ``path`` in its folder)
    and join them into one Spectrum; a missing camera is skipped. ``meta['cameras']`` lists those found."""
    from . import detect_format

    p = Path(path)
    m = _NAME_RE.search(p.name)
    if not m:
        raise ReaderError(f"{path}: not a GALAH per-camera file name (<15-digit sobject_id><camera 1-4>.fits)")
    parts = []
    for cam in "1234":
        for cand in sorted(p.parent.glob(f"{m.group(1)}{cam}.fit*")):
            fmt = detect_format(cand)
            reader = read_galah_dr4 if fmt == "galah_dr4" else read_galah_dr3
            parts.append(reader(cand, normalized=normalized, rest_frame=rest_frame, rv_kms=rv_kms)[0])
            break
    order = np.argsort([s.wavelength[0] for s in parts])
    parts = [parts[i] for i in order]
    meta = dict(parts[0].meta, source=str(p.parent / f"{m.group(1)}[1-4].fits"), cameras=[s.meta["camera"] for s in parts],
                sources=[s.meta["source"] for s in parts], hdu=parts[0].meta.get("hdu"))
    meta.pop("camera", None)
    lsf = None
    if all(s.lsf_sigma is not None and np.ndim(s.lsf_sigma) == 1 for s in parts):
        lsf = np.concatenate([s.lsf_sigma for s in parts])
    return make_spectrum(meta["source"], wavelength=np.concatenate([s.wavelength for s in parts]),
                         flux=np.concatenate([s.flux for s in parts]), ivar=np.concatenate([s.ivar for s in parts]),
                         mask=np.concatenate([s.mask for s in parts]), lsf_sigma=lsf, instrument="galah", meta=meta)
