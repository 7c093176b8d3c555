"""Generic readers for spectra that are not a known survey product: a FITS binary table, a 1-D FITS image with a
linear or log-linear WCS, an ECSV/CSV table, or a NumPy ``.npz`` archive.

Columns (or npz keys) are found by common names, case-insensitively:

- wavelength: ``wavelength, wave, lambda, lam, wl, wavelengths, angstrom``; or ``loglam`` (log10 Angstrom)
- flux: ``flux, flux_norm, norm_flux, normalized_flux, spectrum, spec, f``
- inverse variance: ``ivar, inverse_variance, flux_ivar``; or a 1-sigma error: ``flux_err, flux_error, error,
  err, sigma, uncertainty, e_flux, eflux, unc``
- good-pixel mask (True / nonzero = good, the package convention): ``mask, good, good_mask, goodpix``;
  bad-pixel mask (nonzero = bad): ``bad, badpix, bad_mask, mask_bad, pixmask, and_mask, bitmask``.
  ``bad_mask="column"`` names the bad-pixel column explicitly. A :class:`MaskWarning` is raised when the meaning is
  doubtful: a bad-pixel-named column (read as nonzero = bad) without ``bad_mask=``, or a good-pixel column keeping
  less than half of the pixels (a 1 = bad mask misread?).
- object id: ``object_id, source_id, obj_id, objid, apogee_id, sobject_id, obsid, id, name``

Units: a column/WCS unit (FITS ``TUNIT``/``CUNIT1``, ECSV ``unit``) is converted exactly; without one the numbers
must be Angstrom (nm/micron mistakes raise :class:`~spectrafm_hf.SpectrumError`), or pass ``wavelength_unit``.
Wavelengths are taken as **vacuum** unless ``air=True`` (or a FITS WCS says ``AWAV`` / ``AIRORVAC='air'`` /
``VACUUM=F``). A table with vector columns gives one Spectrum per row (``meta['row']``).

``meta['normalized']``: pass ``normalized=True/False`` when you know, or a scalar ``normalized`` key of an npz;
otherwise a heuristic fills it (median flux within 0.5-1.5 and 90% of the pixels within 0-2 -> True) with
``meta['normalized_from'] = 'guess'``, and the processor decides from the flux unit (``meta['flux_unit']``: the
flux column's unit or the image's BUNIT) or its own guess (`SpectraFMProcessor.prepare`).
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..spectrum import Spectrum, air_to_vacuum
from ._common import MaskWarning, ReaderError, header_value, make_spectrum, native, open_fits, scalar

__all__ = ["read_generic_fits", "read_generic_table", "read_npz", "find_columns", "COLUMN_NAMES"]

COLUMN_NAMES = {
    "wavelength": ("wavelength", "wave", "lambda", "lam", "wl", "wavelengths", "angstrom", "wavelength_vac"),
    "loglam": ("loglam", "log_lambda", "log10_wavelength"),
    "flux": ("flux", "flux_norm", "norm_flux", "normalized_flux", "normalised_flux", "spectrum", "spec", "f"),
    "ivar": ("ivar", "inverse_variance", "flux_ivar", "invvar"),
    "error": ("flux_err", "flux_error", "error", "err", "sigma", "uncertainty", "e_flux", "eflux", "unc", "noise"),
    "good": ("mask", "good", "good_mask", "goodpix", "goodmask"),
    "bad": ("bad", "badpix", "bad_mask", "badmask", "mask_bad", "bad_pixels", "pixmask", "and_mask", "or_mask",
            "bitmask"),
    "object_id": ("object_id", "source_id", "obj_id", "objid", "apogee_id", "sobject_id", "obsid", "id", "name"),
}


def find_columns(names) -> dict[str, str]:
    """``{role: actual name}`` for the roles of :data:`COLUMN_NAMES` found among ``names`` (case-insensitive)."""
    lower = {}
    for n in names:
        lower.setdefault(str(n).lower(), n)
    found = {}
    for role, cands in COLUMN_NAMES.items():
        for c in cands:
            if c in lower:
                found[role] = lower[c]
                break
    return found


def has_spectrum_columns(names) -> bool:
    f = find_columns(names)
    return ("wavelength" in f or "loglam" in f) and "flux" in f


def _wavelength(values, unit, roles, role, wavelength_unit, air, path):
    from astropy import units as u

    wl = np.asarray(values, dtype=np.float64)
    if role == "loglam":
        wl = 10.0**wl
        unit = unit or u.AA
    unit = wavelength_unit or unit
    if unit is not None and str(unit).strip():
        try:
            wl = (wl * u.Unit(unit)).to(u.AA, equivalencies=u.spectral())
        except (ValueError, u.UnitsError) as exc:
            raise ReaderError(f"{path}: wavelength unit {unit!r} cannot be converted to Angstrom: {exc}") from exc
        wl = np.asarray(wl.value)
        unit_given = True
    else:
        unit_given = False
    if air:
        if not unit_given:
            # plain numbers: let Spectrum's unit check speak first (nm / microns by mistake)
            _ = make_spectrum(path, wavelength=wl, flux=np.zeros(wl.size))
        wl = air_to_vacuum(wl)
    return wl


def _build(path, cols, get, unit_of, meta, wavelength_unit, air, mask_rule, instrument):
    role = "wavelength" if "wavelength" in cols else "loglam"
    wl = _wavelength(get(cols[role]), unit_of(cols[role]), cols, role, wavelength_unit, air, path)
    flux = np.asarray(get(cols["flux"]), dtype=np.float64)
    ivar = err = None
    if "ivar" in cols:
        ivar = np.asarray(get(cols["ivar"]), dtype=np.float64)
    elif "error" in cols:
        err = np.asarray(get(cols["error"]), dtype=np.float64)
    mask = _read_mask(path, cols, get, *mask_rule)
    meta = dict(meta)
    meta["air_to_vacuum_applied"] = bool(air)
    unit = unit_of(cols["flux"])
    if unit is not None and str(unit).strip():
        meta.setdefault("flux_unit", str(unit))
    if "normalized" not in meta:  # nobody said: a guess, recorded as one (the processor looks at flux_unit first)
        meta.update(normalized=_looks_normalized(flux), normalized_from="guess")
    return make_spectrum(path, wavelength=wl, flux=flux, ivar=ivar, flux_err=err, mask=mask,
                         instrument=instrument or meta.get("instrument") or "unknown", meta=meta)


# a good-pixel mask leaving less than this fraction of the pixels is probably a bad-pixel mask (1 = bad) misread
MIN_GOOD_MASK_FRACTION = 0.5


def _read_mask(path, cols, get, mask_true_is_bad=False, bad_mask=None):
    """The good-pixel mask (True = good) from the file's mask column, with a MaskWarning when its meaning is
    doubtful: a column named like a bad-pixel mask (read as nonzero = bad), or a ``mask``/``good`` column that would
    leave few pixels (perhaps 1 = bad)."""
    if bad_mask is not None:  # the user names the bad-pixel column: nonzero = bad, no doubt
        try:
            values = np.asarray(get(bad_mask))
        except (KeyError, ValueError, IndexError):
            raise ReaderError(f"{path}: bad_mask={bad_mask!r}: no such column") from None
        return np.nan_to_num(values.astype(np.float64), nan=1.0) == 0
    if "good" in cols:
        g = np.nan_to_num(np.asarray(get(cols["good"])).astype(np.float64), nan=0.0)
        if mask_true_is_bad:
            return g == 0
        good = g != 0
        if good.size and good.mean() < MIN_GOOD_MASK_FRACTION:
            warnings.warn(
                f"{path}: column {cols['good']!r} is read as a GOOD-pixel mask (nonzero = good) and keeps only "
                f"{good.mean():.0%} of the pixels; if nonzero means bad, pass bad_mask={cols['good']!r} "
                "(or mask_true_is_bad=True)", MaskWarning, stacklevel=4)
        return good
    if "bad" in cols:
        warnings.warn(f"{path}: column {cols['bad']!r} is read as a BAD-pixel mask (nonzero = bad); pass "
                      f"bad_mask={cols['bad']!r} to say so and silence this", MaskWarning, stacklevel=4)
        return np.nan_to_num(np.asarray(get(cols["bad"])).astype(np.float64), nan=1.0) == 0
    return None


def _with_norm(meta, normalized):
    return meta if normalized is None else dict(meta, normalized=bool(normalized))


def _looks_normalized(flux) -> bool:
    """Heuristic for generic files only: median of finite flux within 0.5-1.5 and 90% of it within 0-2."""
    f = flux[np.isfinite(flux)]
    if f.size == 0:
        return False
    return bool(0.5 < np.median(f) < 1.5 and np.mean((f > 0) & (f < 2)) > 0.9)


def _table_spectra(path, table, meta, container, wavelength_unit, air, mask_rule, instrument):
    names = table.colnames
    cols = find_columns(names)
    if not (("wavelength" in cols or "loglam" in cols) and "flux" in cols):
        raise ReaderError(f"{path}: no wavelength and flux columns found among {names} "
                          f"(known names: {COLUMN_NAMES['wavelength'] + COLUMN_NAMES['loglam']} / {COLUMN_NAMES['flux']})")
    wcol = cols.get("wavelength", cols.get("loglam"))

    def unit_of(name):
        return getattr(table[name], "unit", None)

    base = dict(meta, format="generic_table", container=container)
    vector = np.ndim(table[wcol][0]) > 0 if len(table) else False
    if not vector:
        if "object_id" in cols and len(table):
            base.setdefault("object_id", scalar(table[cols["object_id"]][0]))

        def get(name):
            return np.ma.filled(np.ma.asarray(table[name], dtype=np.float64), np.nan) \
                if table[name].dtype.kind in "fiu" else np.asarray(table[name])

        return [_build(path, cols, get, unit_of, base, wavelength_unit, air, mask_rule, instrument)]
    out = []
    for r in range(len(table)):
        m = dict(base, row=r)
        if "object_id" in cols:
            m["object_id"] = scalar(table[cols["object_id"]][r])

        def get(name, r=r):
            v = table[name][r]
            return np.ma.filled(np.ma.asarray(v, dtype=np.float64), np.nan) if np.asarray(v).dtype.kind in "fiu" \
                else np.asarray(v)

        out.append(_build(path, cols, get, unit_of, m, wavelength_unit, air, mask_rule, instrument))
    return out


def _header_says_air(h) -> bool:
    ctype = str(h.get("CTYPE1", "")).upper()
    if ctype.startswith("AWAV"):
        return True
    if str(h.get("AIRORVAC", "")).strip().lower() == "air":
        return True
    vac = h.get("VACUUM", None)
    return vac is False


def read_generic_fits(path, wavelength_unit=None, air: bool | None = None, mask_true_is_bad: bool = False,
                      instrument: str | None = None, hdu=None, normalized: bool | None = None,
    bad_mask: str | None = None) -> list[Spectrum]:
    """Read a FITS file holding a spectrum table (first BINTABLE with wavelength and flux columns, or ``hdu``) or a
    1-D image with a linear / log-linear wavelength WCS (CRVAL1, CDELT1 or CD1_1, CRPIX1; log10 when
    ``CTYPE1`` contains LOG or ``DC-FLAG = 1``)."""
    from astropy.table import Table

    with open_fits(path) as hdul:
        h0 = hdul[0].header
        oid = header_value(h0, "OBJECT", "OBJID", "OBJNAME", "SOURCEID")
        candidates = [hdul[hdu]] if hdu is not None else list(hdul)
        for i, h in enumerate(candidates):
            idx = hdu if hdu is not None else i
            if h.header.get("XTENSION", "").strip() == "BINTABLE" and has_spectrum_columns(h.columns.names):
                t = Table(h.data)
                for c in h.columns:
                    if c.unit and c.name in t.colnames:
                        try:
                            t[c.name].unit = c.unit
                        except ValueError:
                            pass
                a = (_header_says_air(h.header) or _header_says_air(h0)) if air is None else air
                return _table_spectra(path, t, _with_norm({"hdu": idx, "object_id": oid}, normalized), "fits",
                                      wavelength_unit, a, (mask_true_is_bad, bad_mask), instrument)
        for i, h in enumerate(candidates):
            idx = hdu if hdu is not None else i
            d = getattr(h, "data", None)
            if isinstance(d, np.ndarray) and d.dtype.names is None and d.ndim == 1 and "CRVAL1" in h.header:
                s = _image_spectrum(path, h, h0, idx, oid, wavelength_unit, air, instrument)
                if normalized is not None:
                    s.meta.update(normalized=bool(normalized), normalized_from="user")
                return [s]
    raise ReaderError(f"{path}: FITS file has neither a table with wavelength/flux columns nor a 1-D image with a "
                      "wavelength WCS (CRVAL1/CDELT1)")


def _image_spectrum(path, h, h0, idx, oid, wavelength_unit, air, instrument):
    from astropy import units as u

    hd = h.header
    crval, cdelt = float(hd["CRVAL1"]), header_value(hd, "CDELT1", "CD1_1")
    if cdelt is None:
        raise ReaderError(f"{path}: 1-D image HDU {idx} has CRVAL1 but no CDELT1/CD1_1")
    crpix = float(header_value(hd, "CRPIX1", default=1.0))
    n = h.data.size
    x = crval + (np.arange(n) + 1.0 - crpix) * float(cdelt)
    log = "LOG" in str(hd.get("CTYPE1", "")).upper() or hd.get("DC-FLAG", 0) == 1
    wl = 10.0**x if log else x
    unit = wavelength_unit or (str(hd.get("CUNIT1", "")).strip() or None)
    if unit is not None:
        unit = {"angstroms": "Angstrom", "angstrom": "Angstrom"}.get(unit.lower(), unit)
        try:
            wl = np.asarray((wl * u.Unit(unit)).to_value(u.AA, equivalencies=u.spectral()))
        except (ValueError, u.UnitsError) as exc:
            raise ReaderError(f"{path}: CUNIT1 {unit!r} cannot be converted to Angstrom: {exc}") from exc
    is_air = (_header_says_air(hd) or _header_says_air(h0)) if air is None else air
    if is_air:
        if unit is None:
            _ = make_spectrum(path, wavelength=wl, flux=np.zeros(wl.size))
        wl = air_to_vacuum(wl)
    flux = native(h.data)
    meta = {"format": "generic_fits_image", "hdu": idx, "object_id": oid, "air_to_vacuum_applied": bool(is_air),
            "normalized": _looks_normalized(flux), "normalized_from": "guess"}
    bunit = header_value(hd, "BUNIT") or header_value(h0, "BUNIT")
    if bunit is not None:
        meta["flux_unit"] = str(bunit)
    return make_spectrum(path, wavelength=wl, flux=flux, instrument=instrument or "unknown", meta=meta)


def read_generic_table(path, wavelength_unit=None, air: bool = False, mask_true_is_bad: bool = False,
                       instrument: str | None = None, normalized: bool | None = None,
    bad_mask: str | None = None) -> list[Spectrum]:
    """Read an ECSV (with units) or CSV / whitespace text table with wavelength and flux columns."""
    from astropy.table import Table

    p = Path(path)
    head = p.read_bytes()[:200].lstrip()
    try:
        if head.startswith(b"# %ECSV"):
            t, container = Table.read(str(p), format="ascii.ecsv"), "ecsv"
        elif p.suffix.lower() == ".csv":
            t, container = Table.read(str(p), format="ascii.csv"), "csv"
        else:
            t, container = Table.read(str(p), format="ascii"), "text"
    except Exception as exc:
        raise ReaderError(f"{path}: cannot parse as a table: {type(exc).__name__}: {exc}") from exc
    meta = {"object_id": next((scalar(v) for k, v in t.meta.items() if str(k).lower() in COLUMN_NAMES["object_id"]),
                              None)}
    return _table_spectra(path, t, _with_norm(meta, normalized), container, wavelength_unit, air,
                          (mask_true_is_bad, bad_mask), instrument)


def read_npz(path, wavelength_unit=None, air: bool = False, mask_true_is_bad: bool = False,
             instrument: str | None = None, normalized: bool | None = None,
    bad_mask: str | None = None) -> list[Spectrum]:
    """Read a ``.npz`` with wavelength and flux arrays (1-D; or 2-D flux ``(n_spectra, n_pix)`` with a shared 1-D
    wavelength, giving one Spectrum per row)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ReaderError(f"{path}: not a readable .npz archive: {type(exc).__name__}: {exc}") from exc
    cols = find_columns(arrays)
    if not (("wavelength" in cols or "loglam" in cols) and "flux" in cols):
        raise ReaderError(f"{path}: .npz has no wavelength and flux arrays (keys: {sorted(arrays)})")
    flux = arrays[cols["flux"]]
    oid = arrays.get(cols.get("object_id")) if "object_id" in cols else None
    base = {"format": "generic_npz", "container": "npz"}
    if "normalized" in arrays and np.ndim(arrays["normalized"]) == 0:
        base["normalized"] = bool(arrays["normalized"])
    base = _with_norm(base, normalized)
    if flux.ndim == 1:
        if oid is not None and np.ndim(oid) == 0:
            base["object_id"] = scalar(oid)
        return [_build(path, cols, lambda k: arrays[k], lambda k: None, base, wavelength_unit, air,
                       (mask_true_is_bad, bad_mask), instrument)]
    if flux.ndim != 2:
        raise ReaderError(f"{path}: flux array has shape {flux.shape}; expected 1-D or (n_spectra, n_pixels)")
    out = []
    for r in range(flux.shape[0]):
        def get(k, r=r):
            a = arrays[k]
            return a[r] if a.ndim == 2 else a

        m = dict(base, row=r)
        if oid is not None and np.ndim(oid) == 1 and len(oid) == flux.shape[0]:
            m["object_id"] = scalar(oid[r])
        out.append(_build(path, cols, get, lambda k: None, m, wavelength_unit, air, (mask_true_is_bad, bad_mask),
                          instrument))
    return out
