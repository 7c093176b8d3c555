"""SDSS / BOSS ``spec-PLATE-MJD-FIBER.fits`` reader (DR8+ "lite"/full spec files; also SDSS-V BOSS).

Layout: HDU1 ``COADD`` table, one row per pixel, columns ``loglam`` (log10 vacuum Angstrom), ``flux``
(1e-17 erg/s/cm2/A), ``ivar``, ``and_mask``, ``or_mask``, ``wdisp`` (LSF dispersion in units of the 1e-4 dex
pixel), ``sky``, ``model``; HDU2 ``SPECOBJ``/``SPALL`` with the pipeline row (CLASS, Z, and for stars the ELODIE
or SSPP parameters). Wavelengths are vacuum and heliocentric (barycentric for BOSS), not rest frame.

A pixel is bad when ``ivar <= 0`` or ``and_mask != 0`` (bad in every exposure; SDSS's own recommendation).
``lsf_sigma`` (Angstrom) is ``wdisp * dloglam * ln(10) * lambda`` (dloglam = 1e-4, the pixel) when ``wdisp`` is present.
"""

from __future__ import annotations

import numpy as np

from ..spectrum import Spectrum
from ._common import ReaderError, header_subset, header_value, make_spectrum, native, open_fits, scalar

__all__ = ["read_sdss_spec", "looks_like_sdss_spec"]

_LABEL_COLUMNS = (
    "CLASS", "SUBCLASS", "Z", "Z_ERR", "ZWARNING", "SN_MEDIAN_ALL", "ELODIE_TEFF", "ELODIE_LOGG", "ELODIE_FEH",
    "ELODIE_SPTYPE", "ELODIE_OBJECT", "SPECOBJID", "PLATE", "MJD", "FIBERID", "PLUG_RA", "PLUG_DEC", "SURVEY",
    "PROGRAMNAME", "CATALOGID", "SDSS_ID",
)


def _coadd_hdu(hdul):
    for hdu in hdul[1:]:
        if hdu.header.get("XTENSION", "").strip() != "BINTABLE":
            continue
        names = {c.lower() for c in hdu.columns.names}
        if {"loglam", "flux", "ivar"} <= names:
            return hdu
    return None


def looks_like_sdss_spec(hdul) -> bool:
    return _coadd_hdu(hdul) is not None


def read_sdss_spec(path, mask_with="and_mask") -> list[Spectrum]:
    """Read an SDSS/BOSS spec file into one Spectrum (see the module docstring).

    Args:
        mask_with: ``"and_mask"`` (default), ``"or_mask"`` (stricter) or None (ivar only).
    """
    with open_fits(path) as hdul:
        hdu = _coadd_hdu(hdul)
        if hdu is None:
            raise ReaderError(f"{path}: no SDSS COADD table with loglam/flux/ivar columns")
        cols = {c.lower(): c for c in hdu.columns.names}
        d = hdu.data
        loglam, flux, ivar = (native(d[cols[c]]) for c in ("loglam", "flux", "ivar"))
        if mask_with is not None and mask_with not in ("and_mask", "or_mask"):
            raise ValueError(f"{path}: mask_with must be 'and_mask', 'or_mask' or None, got {mask_with!r}")
        bits = np.asarray(d[cols[mask_with]]) if mask_with in cols else np.zeros(flux.size, np.int64)
        wdisp = native(d[cols["wdisp"]]) if "wdisp" in cols else None
        h0 = hdul[0].header
        labels = {}
        for other in hdul[2:3]:
            if other.header.get("XTENSION", "").strip() == "BINTABLE" and len(other.data) >= 1:
                row = other.data[0]
                names = {c.upper(): c for c in other.columns.names}
                labels = {k: scalar(row[names[k]]) for k in _LABEL_COLUMNS if k in names and np.ndim(row[names[k]]) == 0}
        meta = {"format": "sdss_spec", "hdu": hdu.name or 1, "normalized": False, "rest_frame": False,
                "flux_unit": "1e-17 erg/s/cm2/A"}
        meta.update(header_subset(h0, ("TELESCOP", "PLATEID", "MJD", "FIBERID", "RA", "DEC", "OBJTYPE", "RUN2D")))
        meta["labels"] = labels
    plate = labels.get("PLATE", meta.get("PLATEID"))
    mjd = labels.get("MJD", meta.get("MJD"))
    fiber = labels.get("FIBERID", meta.get("FIBERID"))
    if plate is not None and mjd is not None and fiber is not None:
        meta["object_id"] = f"{int(plate):04d}-{int(mjd):05d}-{int(fiber):04d}"
    else:
        meta["object_id"] = header_value(h0, "NAME", "OBJID")
    if labels.get("SPECOBJID") is not None:
        meta["specobjid"] = labels["SPECOBJID"]
    wl = 10.0 ** loglam
    lsf = None
    if wdisp is not None:
        ok = np.isfinite(wdisp) & (wdisp > 0)
        if ok.any():
            wd = np.where(ok, wdisp, np.median(wdisp[ok]))
            dloglam = float(loglam[-1] - loglam[0]) / (loglam.size - 1) if loglam.size > 1 else 1e-4  # mean step: float32 steps are noisy
            lsf = wd * abs(dloglam) * np.log(10.0) * wl
    good = np.isfinite(ivar) & (ivar > 0) & (bits == 0)
    return [make_spectrum(path, wavelength=wl, flux=flux, ivar=np.where(np.isfinite(ivar), ivar, 0.0), mask=good,
                          lsf_sigma=lsf, instrument="sdss_boss", meta=meta)]
