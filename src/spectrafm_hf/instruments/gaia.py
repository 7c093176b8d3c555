"""Gaia DR3 readers: RVS mean spectra and XP sampled spectra as the archive delivers them (DataLink CSV, ECSV,
FITS, VOTable, or the zip holding them), and the bulk ``RvsMeanSpectrum_*.csv.gz`` files.

Facts (shared/design/FORMATS.md section 2):

- RVS: 846.00-870.00 nm in 0.01 nm steps (2401 samples), **vacuum**, **rest frame**, flux normalised to the
  pseudo-continuum (``meta['normalized'] = True``), ``flux_error`` 1-sigma; NaN / empty / null = missing pixel.
- XP sampled: 336-1020 nm in 2 nm steps (343 samples), flux in W m^-2 nm^-1 (not normalised).
- Archive wavelengths are in **nm**; they are converted exactly to Angstrom (the column unit when one is given,
  else the archive's nm). Gaia observes from space: wavelengths are vacuum.
- CSV DataLink products hold one row per wavelength sample with the identifiers repeated; a COMBINED product holds
  several sources one after the other, which are split by ``source_id``. ECSV/FITS/VOTable carry ``source_id`` in
  meta / the ``SOURCEID`` keyword / a PARAM. The bulk files hold one source per row with ``flux``/``flux_error`` as
  ``"[v1,v2,...]"`` strings and no wavelength column (rebuilt as 846 + 0.01 i nm).
- ``source_id`` is an int64 and is kept as an int (never a float).
"""

from __future__ import annotations

import csv
import gzip
import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..spectrum import Spectrum
from ._common import ReaderError, is_gzip, make_spectrum, open_fits, scalar

__all__ = [
    "read_gaia_csv",
    "read_gaia_ecsv",
    "read_gaia_fits",
    "read_gaia_votable",
    "read_gaia_rvs_bulk",
    "read_gaia_zip",
    "RVS_N_PIXELS",
    "rvs_wavelength",
]

RVS_N_PIXELS = 2401
_SCALARS = ("solution_id", "ra", "dec", "combined_transits", "combined_ccds", "deblended_ccds")


def rvs_wavelength() -> np.ndarray:
    """The Gaia DR3 RVS grid in vacuum Angstrom: 8460.0 + 0.1 i, i = 0..2400 (846-870 nm)."""
    return 8460.0 + 0.1 * np.arange(RVS_N_PIXELS)


def _kind(wl_nm: np.ndarray, path) -> str:
    finite = wl_nm[np.isfinite(wl_nm)]
    if finite.size == 0:
        raise ReaderError(f"{path}: Gaia product has no finite wavelength")
    lo, hi = float(finite.min()), float(finite.max())
    if 840.0 <= lo and hi <= 875.0:
        return "gaia_rvs"
    if 300.0 <= lo and hi <= 1100.0:
        return "gaia_xp_sampled"
    raise ReaderError(f"{path}: wavelengths {lo:.6g}-{hi:.6g} (nm) are neither Gaia RVS (846-870 nm) "
                      "nor XP sampled (336-1020 nm)")


def _to_angstrom(wl, unit, path):
    """Exact conversion of the archive's wavelength column to Angstrom (unit given, or the archive's nm)."""
    from astropy import units as u

    if unit is None or str(unit).strip() == "":
        unit = u.nm
    try:
        q = np.asarray(wl, dtype=np.float64) * u.Unit(unit)
        return q.to_value(u.AA, equivalencies=u.spectral())
    except (ValueError, u.UnitsError) as exc:
        raise ReaderError(f"{path}: cannot convert the wavelength unit {unit!r} to Angstrom: {exc}") from exc


def _build(path, wl, flux, err, unit, meta) -> Spectrum:
    wl_aa = _to_angstrom(wl, unit, path)
    kind = _kind(wl_aa / 10.0, path)
    flux = np.asarray(flux, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64) if err is not None else None
    meta = dict(meta)
    meta.update(format=kind, normalized=(kind == "gaia_rvs"), rest_frame=(kind == "gaia_rvs"))
    if kind == "gaia_xp_sampled":
        meta.setdefault("flux_unit", "W m-2 nm-1")
    sid = meta.get("source_id")
    meta["object_id"] = None if sid is None else str(sid)
    return make_spectrum(path, wavelength=wl_aa, flux=flux, flux_err=err, instrument="gaia_rvs" if kind == "gaia_rvs"
                         else "gaia_xp", meta=meta)


def _masked_to_nan(col) -> np.ndarray:
    return np.ma.filled(np.ma.asarray(col, dtype=np.float64), np.nan)


def _int_or_none(v):
    v = scalar(v)
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


# ------------------------------------------------------------------ CSV (one row per sample)
def read_gaia_csv(path) -> list[Spectrum]:
    """Read a Gaia DataLink CSV product (RVS or XP_SAMPLED); several sources in one file give several spectra."""
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rt", newline="") as fh:
        text = fh.read()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ReaderError(f"{path}: empty CSV")
    head = [h.strip().lower() for h in rows[0]]
    need = ("wavelength", "flux")
    if not all(n in head for n in need):
        raise ReaderError(f"{path}: Gaia CSV needs wavelength and flux columns, found {rows[0]}")
    idx = {h: i for i, h in enumerate(head)}
    body = [r for r in rows[1:] if r and any(c.strip() for c in r)]
    if not body:
        raise ReaderError(f"{path}: Gaia CSV has a header but no data rows")

    def num(r, key):
        try:
            s = r[idx[key]].strip()
        except IndexError:
            raise ReaderError(f"{path}: short CSV row {r!r}") from None
        if s == "" or s.lower() in ("null", "nan"):
            return np.nan
        try:
            return float(s)
        except ValueError:
            raise ReaderError(f"{path}: non-numeric {key} value {s!r}") from None

    groups: dict = {}
    for r in body:
        sid = r[idx["source_id"]].strip() if "source_id" in idx else ""
        groups.setdefault(sid, []).append(r)
    out = []
    for k, (sid, rs) in enumerate(groups.items()):
        wl = np.array([num(r, "wavelength") for r in rs])
        flux = np.array([num(r, "flux") for r in rs])
        err = np.array([num(r, "flux_error") for r in rs]) if "flux_error" in idx else None
        meta = {"source_id": _int_or_none(sid) if sid else None, "container": "csv"}
        if len(groups) > 1:
            meta["row"] = k
        for key in _SCALARS:
            if key in idx:
                meta[key] = _int_or_none(rs[0][idx[key]]) if key not in ("ra", "dec") else num(rs[0], key)
        out.append(_build(path, wl, flux, err, None, meta))
    return out


# ------------------------------------------------------------------ ECSV / FITS / VOTable
def _from_table(path, t, meta, container) -> Spectrum:
    cols = {c.lower(): c for c in t.colnames}
    if "wavelength" not in cols or "flux" not in cols:
        raise ReaderError(f"{path}: Gaia {container} table needs wavelength and flux columns, found {t.colnames}")
    wl = _masked_to_nan(t[cols["wavelength"]])
    flux = _masked_to_nan(t[cols["flux"]])
    err = _masked_to_nan(t[cols["flux_error"]]) if "flux_error" in cols else None
    unit = t[cols["wavelength"]].unit
    m = {"container": container}
    for k, v in meta.items():
        lk = k.lower()
        if lk in ("source_id", "sourceid"):
            m["source_id"] = _int_or_none(v)
        elif lk in ("solution_id", "solution"):
            m["solution_id"] = _int_or_none(v)
        elif lk in ("combined_transits", "combined_ccds", "deblended_ccds"):
            m[lk] = _int_or_none(v)
        elif lk == "spatiallocation" and np.size(v) == 2:
            m["ra"], m["dec"] = (float(x) for x in np.ravel(v))
    return _build(path, wl, flux, err, unit, m)


def read_gaia_ecsv(path) -> list[Spectrum]:
    from astropy.table import Table

    try:
        t = Table.read(str(path), format="ascii.ecsv")
    except Exception as exc:
        raise ReaderError(f"{path}: not a readable ECSV table: {type(exc).__name__}: {exc}") from exc
    return [_from_table(path, t, dict(t.meta), "ecsv")]


def read_gaia_fits(path) -> list[Spectrum]:
    from astropy.table import Table

    with open_fits(path) as hdul:
        out = []
        for i, hdu in enumerate(hdul[1:], start=1):
            if hdu.header.get("XTENSION", "").strip() != "BINTABLE":
                continue
            t = Table(hdu.data)
            for c in hdu.columns:
                if c.unit and c.name in t.colnames:
                    t[c.name].unit = c.unit
            meta = {"source_id": hdu.header.get("SOURCEID"), "solution_id": hdu.header.get("SOLUTION")}
            pos = str(hdu.header.get("POS", "")).strip("() ")
            s = _from_table(path, t, meta, "fits")
            if pos:
                try:
                    s.meta["ra"], s.meta["dec"] = (float(x) for x in pos.split(","))
                except ValueError:
                    pass
            s.meta["hdu"] = i
            out.append(s)
    if not out:
        raise ReaderError(f"{path}: no table HDU in this Gaia FITS product")
    return out


def read_gaia_votable(path) -> list[Spectrum]:
    from astropy.io import votable

    try:
        vo = votable.parse(str(path), verify="ignore")
    except Exception as exc:
        raise ReaderError(f"{path}: not a readable VOTable: {type(exc).__name__}: {exc}") from exc
    out = []
    tables = list(vo.iter_tables())
    for k, tab in enumerate(tables):
        params = {p.name: p.value for p in tab.params}
        s = _from_table(path, tab.to_table(), params, "votable")
        if len(tables) > 1:
            s.meta["row"] = k
        out.append(s)
    if not out:
        raise ReaderError(f"{path}: VOTable holds no table")
    return out


# ------------------------------------------------------------------ bulk csv.gz
def _parse_array(s: str, path, key) -> np.ndarray:
    s = s.strip()
    if not (s.startswith("[") and s.endswith("]")):
        raise ReaderError(f"{path}: bulk column {key} is not a '[...]' array string: {s[:40]!r}")
    vals = []
    for tok in s[1:-1].split(","):
        tok = tok.strip()
        if tok == "" or tok.lower() in ("null", "nan", "none"):
            vals.append(np.nan)
        else:
            try:
                vals.append(float(tok))
            except ValueError:
                raise ReaderError(f"{path}: bad number {tok!r} in bulk column {key}") from None
    return np.array(vals)


def read_gaia_rvs_bulk(path) -> list[Spectrum]:
    """Read a Gaia bulk ``RvsMeanSpectrum_*.csv(.gz)`` file: one Spectrum per row (source)."""
    opener = gzip.open if is_gzip(path) else open
    try:
        with opener(path, "rt", newline="") as fh:
            lines = [ln for ln in fh if not ln.startswith("#")]
    except (OSError, EOFError) as exc:
        raise ReaderError(f"{path}: cannot read (truncated or corrupt gzip?): {exc}") from exc
    reader = csv.reader(lines)
    try:
        head = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ReaderError(f"{path}: bulk RVS file has no header line") from None
    if "flux" not in head or "source_id" not in head:
        raise ReaderError(f"{path}: bulk RVS file needs source_id and flux columns, found {head}")
    idx = {h: i for i, h in enumerate(head)}
    wl = rvs_wavelength() / 10.0  # nm
    out = []
    for k, r in enumerate(reader):
        if not r:
            continue
        if len(r) != len(head):
            raise ReaderError(f"{path}: row {k} has {len(r)} fields, header has {len(head)} (truncated file?)")
        flux = _parse_array(r[idx["flux"]], path, "flux")
        err = _parse_array(r[idx["flux_error"]], path, "flux_error") if "flux_error" in idx else None
        if flux.size != RVS_N_PIXELS or (err is not None and err.size != RVS_N_PIXELS):
            raise ReaderError(f"{path}: row {k} has {flux.size} flux values; Gaia DR3 RVS has {RVS_N_PIXELS}")
        meta = {"source_id": _int_or_none(r[idx["source_id"]]), "row": k, "container": "bulk_csv"}
        for key in _SCALARS:
            if key in idx:
                v = r[idx[key]].strip()
                meta[key] = (float(v) if v not in ("", "null") else None) if key in ("ra", "dec") else _int_or_none(v)
        out.append(_build(path, wl, flux, err, "nm", meta))
    if not out:
        raise ReaderError(f"{path}: bulk RVS file has no data rows")
    return out


# ------------------------------------------------------------------ DataLink zip
def read_gaia_zip(path) -> list[Spectrum]:
    """Read every sampled spectrum (RVS, XP_SAMPLED) in a Gaia DataLink zip; other products (XP_CONTINUOUS,
    MCMC...) are skipped. ``meta['member']`` names the file inside the zip."""
    from . import detect_format, read

    out = []
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ReaderError(f"{path}: not a readable zip file: {exc}") from exc
    with zf, tempfile.TemporaryDirectory() as tmp:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = Path(info.filename).name
            if not name.upper().startswith(("RVS", "XP_SAMPLED")):
                continue
            target = Path(tmp) / name
            try:
                target.write_bytes(zf.read(info))
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ReaderError(f"{path}: member {info.filename} cannot be extracted: {exc}") from exc
            fmt = detect_format(target)
            for s in read(target, format=fmt):
                s.meta["source"] = str(path)
                s.meta["member"] = info.filename
                out.append(s)
    if not out:
        raise ReaderError(f"{path}: the zip holds no Gaia RVS or XP_SAMPLED spectrum")
    return out
