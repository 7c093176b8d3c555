"""Spectrum file readers with format auto-detection.

``read(path)`` returns a list of :class:`~spectrafm_hf.Spectrum` (vacuum Angstrom, ascending, mask True = good)
from one file of any supported format; ``detect_format(path)`` names the format; ``READERS`` maps format names to
reader functions (their keyword options pass through ``read(path, **options)``).

Detection looks at the content, never only at the file name: FITS header keywords and HDU structure (TELESCOP,
INSTRUME, EXTNAMEs, image shapes, table columns), the first lines of text files, the members of zip files.

Supported formats (name: what):

- ``apogee_apstar``: APOGEE apStar / asStar (combined and visit rows)
- ``apogee_apvisit``: APOGEE apVisit (3 chips with their own wavelength arrays)
- ``apogee_aspcapstar``: APOGEE aspcapStar (ASPCAP-normalised, with the ASPCAP table row)
- ``lamost_lrs``: LAMOST low-resolution (DR1-8 image layout and DR9+ COADD table layout)
- ``lamost_mrs``: LAMOST medium-resolution (per-pixel-row LOGLAM tables and DR9+ one-row WAVELENGTH tables)
- ``sdss_spec``: SDSS / BOSS spec files (COADD table with loglam)
- ``galah_dr3``, ``galah_dr4``: GALAH per-camera reduced spectra (air -> vacuum)
- ``galah_fit_spectrum``: GALAH DR4 ``*_fit_spectrum.fits`` analysis tables
- ``gaia_csv``, ``gaia_ecsv``, ``gaia_fits``, ``gaia_votable``: Gaia DR3 DataLink RVS / XP_SAMPLED products
- ``gaia_rvs_bulk``: Gaia bulk ``RvsMeanSpectrum_*.csv.gz``
- ``gaia_zip``: a Gaia DataLink zip (every RVS / XP_SAMPLED member)
- ``generic_fits``, ``generic_table`` (ECSV/CSV/text), ``npz``: any file with wavelength and flux columns
- ``specutils``: a file none of the above recognises, read by ``specutils.Spectrum.read`` when specutils is installed
  (its loaders identify the format; the wavelength axis is taken as vacuum, and the flux unit, not the format, says
  whether the flux is normalised)

Every Spectrum has ``instrument`` set and ``meta`` with ``source`` (the file), ``format``, ``normalized`` (True when
the flux is already continuum-normalised), ``object_id`` (None when the file has none) and ``hdu``/``row`` where a
file holds several spectra.

Bad input raises :class:`ReaderError` (a :class:`~spectrafm_hf.SpectrumError`, hence a ``ValueError``) whose message
starts with the file path: missing/empty/truncated files, unknown formats, wavelengths in nm or microns without a
unit, duplicated wavelengths, negative inverse variances. Descending wavelengths are reversed (documented repair).
A spectrum with **no usable pixel** (e.g. all-NaN flux) is returned with an :class:`EmptySpectrumWarning` (its
``n_good`` is 0); ``read(..., strict=True)`` raises instead.
"""

from __future__ import annotations

import gzip
import inspect
import warnings
import zipfile
from pathlib import Path
from typing import Callable

from ..spectrum import Spectrum, SpectrumError
from . import apogee, gaia, galah, generic, lamost, sdss
from ._common import (EmptySpectrumWarning, MaskWarning, ReaderError, UnknownFormatError, _readable_file, is_fits, is_gzip,
                      open_fits)
from .continuum import normalize_continuum

__all__ = [
    "read",
    "detect_format",
    "READERS",
    "ReaderError",
    "UnknownFormatError",
    "EmptySpectrumWarning",
    "MaskWarning",
    "normalize_continuum",
]

READERS: dict[str, Callable[..., list[Spectrum]]] = {
    "apogee_apstar": apogee.read_apstar,
    "apogee_apvisit": apogee.read_apvisit,
    "apogee_aspcapstar": apogee.read_aspcapstar,
    "lamost_lrs": lamost.read_lamost_lrs,
    "lamost_mrs": lamost.read_lamost_mrs,
    "sdss_spec": sdss.read_sdss_spec,
    "galah_dr3": galah.read_galah_dr3,
    "galah_dr4": galah.read_galah_dr4,
    "galah_fit_spectrum": galah.read_galah_fit_spectrum,
    "gaia_csv": gaia.read_gaia_csv,
    "gaia_ecsv": gaia.read_gaia_ecsv,
    "gaia_fits": gaia.read_gaia_fits,
    "gaia_votable": gaia.read_gaia_votable,
    "gaia_rvs_bulk": gaia.read_gaia_rvs_bulk,
    "gaia_zip": gaia.read_gaia_zip,
    "generic_fits": generic.read_generic_fits,
    "generic_table": generic.read_generic_table,
    "npz": generic.read_npz,
}


# ------------------------------------------------------------------ detection
def _detect_fits(path) -> str:
    with open_fits(path) as hdul:
        if lamost.looks_like_lamost(hdul):
            layout = lamost.lamost_layout(hdul)
            if layout == "mrs":
                return "lamost_mrs"
            if layout in ("lrs_image", "lrs_table"):
                return "lamost_lrs"
            raise UnknownFormatError(f"{path}: LAMOST file with an unknown layout (HDUs {[h.name for h in hdul]})")
        if galah.looks_like_galah_dr4(hdul):
            return "galah_dr4"
        if galah.looks_like_galah_dr3(hdul):
            return "galah_dr3"
        if apogee.looks_like_apvisit(hdul):
            return "apogee_apvisit"
        if apogee.looks_like_apstar(hdul):
            return "apogee_apstar"
        if apogee.looks_like_aspcapstar(hdul):
            return "apogee_aspcapstar"
        if sdss.looks_like_sdss_spec(hdul):
            return "sdss_spec"
        if galah.looks_like_galah_fit_spectrum(hdul):
            return "galah_fit_spectrum"
        for hdu in hdul[1:]:
            if hdu.header.get("XTENSION", "").strip() != "BINTABLE":
                continue
            names = {c.lower() for c in hdu.columns.names}
            if {"wavelength", "flux"} <= names and ("SOURCEID" in hdu.header or "source_id" in names):
                return "gaia_fits"
            if generic.has_spectrum_columns(hdu.columns.names):
                return "generic_fits"
        for hdu in hdul:
            d = getattr(hdu, "data", None)
            if d is not None and getattr(d, "ndim", 0) == 1 and getattr(d, "dtype", None) is not None \
                    and d.dtype.names is None and "CRVAL1" in hdu.header:
                return "generic_fits"
        raise UnknownFormatError(
            f"{path}: FITS file of an unknown layout (HDUs: "
            f"{[(h.name, type(h).__name__, getattr(h.data, 'shape', None)) for h in hdul]}); "
            f"known formats: {sorted(READERS)}")


def _text_head(path, n=4096) -> str:
    raw = gzip.open(path, "rb").read(n) if is_gzip(path) else open(path, "rb").read(n)
    return raw.decode("utf-8", "replace")


def _detect_text(path, head: str) -> str:
    lines = head.splitlines()
    stripped = head.lstrip()
    if stripped.startswith("<?xml") or stripped[:200].upper().find("<VOTABLE") >= 0:
        return "gaia_votable"
    comments = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
    first = body[0].lower() if body else ""
    cols = [c.strip().strip('"') for c in first.replace("\t", ",").split(",")]
    header_text = "\n".join(comments)
    if "source_id" in cols and "flux" in cols and "wavelength" not in cols:
        return "gaia_rvs_bulk"
    if "subtype: float32[" in header_text or "subtype: float64[" in header_text:
        if "source_id" in header_text:
            return "gaia_rvs_bulk"
    if stripped.startswith("# %ECSV"):
        if "source_id" in header_text or "ESA/Gaia" in header_text:
            return "gaia_ecsv"
        return "generic_table"
    if "source_id" in cols and "wavelength" in cols and "flux" in cols:
        return "gaia_csv"
    if generic.has_spectrum_columns(cols) or generic.has_spectrum_columns(first.split()):
        return "generic_table"
    raise UnknownFormatError(f"{path}: text file without recognisable wavelength/flux columns "
                             f"(first line: {first[:120]!r})")


def detect_format(path) -> str:
    """The format name (a key of :data:`READERS`) of one file, from its content."""
    p = _readable_file(path)
    try:
        if is_fits(p):
            return _detect_fits(p)
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
            if names and all(n.endswith(".npy") for n in names):
                return "npz"
            if any(Path(n).name.upper().startswith(("RVS", "XP_SAMPLED")) for n in names):
                return "gaia_zip"
            raise UnknownFormatError(f"{p}: zip file holding no spectrum format we know ({names[:5]}...)")
        head = _text_head(p)
    except SpectrumError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, BadZipFile, astropy's VerifyError...: always a ReaderError
        raise ReaderError(f"{p}: cannot be read: {type(exc).__name__}: {exc}") from exc
    if "\x00" in head:
        raise UnknownFormatError(f"{p}: binary file of an unknown format (not FITS, zip/npz or text)")
    return _detect_text(p, head)


# ------------------------------------------------------------------ read
def _check_options(path, fmt, reader, kw):
    params = inspect.signature(reader).parameters
    unknown = [k for k in kw if k not in params]
    if unknown:
        allowed = [k for k in params if k != "path"]
        raise TypeError(f"{path}: the {fmt} reader does not take {unknown}; its options are {allowed}")


def read(path, format: str | None = None, strict: bool = False, **options) -> list[Spectrum]:
    """Read every spectrum in one file.

    Args:
        path: the file (FITS, FITS.gz, CSV/ECSV/text, VOTable, npz, Gaia DataLink zip).
        format: a key of :data:`READERS` to skip auto-detection.
        strict: raise :class:`ReaderError` when a spectrum has no usable pixel (default: warn and return it).
        **options: passed to the format's reader (e.g. ``rows="all"`` for apStar, ``normalized=True`` for GALAH or
            LAMOST DR9+ LRS, ``model=True`` for aspcapStar); an option the reader does not take is a ``TypeError``.

    Returns:
        A list of :class:`~spectrafm_hf.Spectrum` (one or more).
    """
    p = Path(path)
    if format is None:
        try:
            fmt = detect_format(p)
        except UnknownFormatError as exc:  # none of ours: specutils' loaders may know it
            return _read_with_specutils(p, exc, strict)
    else:
        fmt = format
    if fmt not in READERS:
        raise UnknownFormatError(f"{p}: unknown format {fmt!r}; known formats: {sorted(READERS)}")
    reader = READERS[fmt]
    _check_options(p, fmt, reader, options)
    try:
        spectra = reader(p, **options)
    except (ReaderError, TypeError):
        raise
    except SpectrumError as exc:
        msg = str(exc)
        raise ReaderError(msg if str(p) in msg else f"{p}: {msg}") from exc
    except ValueError as exc:
        msg = str(exc)
        if str(p) in msg:
            raise
        raise ReaderError(f"{p}: {fmt} reader failed: {msg}") from exc
    except Exception as exc:  # noqa: BLE001 - e.g. astropy's VerifyError on a broken header: always a ReaderError
        raise ReaderError(f"{p}: {fmt} reader failed: {type(exc).__name__}: {exc}") from exc
    for s in spectra:
        s.meta.setdefault("source", str(p))
        s.meta.setdefault("format", fmt)
        s.meta.setdefault("normalized", False)
        s.meta.setdefault("object_id", None)
        if s.n_good == 0:
            where = "".join(f", {k} {s.meta[k]}" for k in ("hdu", "row") if s.meta.get(k) is not None)
            msg = f"{p}: spectrum{where} has no usable pixel (all flux NaN/masked or ivar 0)"
            if strict:
                raise ReaderError(msg)
            warnings.warn(msg, EmptySpectrumWarning, stacklevel=2)
    return spectra


def _read_with_specutils(path: Path, unknown: UnknownFormatError, strict: bool) -> list[Spectrum]:
    """``specutils.Spectrum.read(path)`` for a file none of our readers recognises; an `UnknownFormatError` naming
    both attempts when specutils is missing or cannot read it either."""
    try:
        try:
            from specutils import Spectrum as SpecutilsSpectrum
        except ImportError:  # specutils < 2
            from specutils import Spectrum1D as SpecutilsSpectrum
    except ImportError:
        raise UnknownFormatError(f"{unknown}; specutils is not installed, so its readers were not tried "
                                 "(pip install specutils)") from unknown
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec = SpecutilsSpectrum.read(str(path))
        flux_unit = spec.flux.unit.to_string() if spec.flux.unit is not None else ""
        spectrum = Spectrum.from_specutils(spec)
    except Exception as exc:  # noqa: BLE001 - any loader failure: one message naming both attempts
        raise UnknownFormatError(f"{unknown}; specutils.Spectrum.read could not read it either: "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    # the flux unit decides normalised or not (SpectraFMProcessor.prepare); the loader's header stays out of meta
    spectrum.meta = {"source": str(path), "format": "specutils", "normalized": None, "object_id": None,
                     "flux_unit": flux_unit}
    if spectrum.n_good == 0:
        msg = f"{path}: spectrum has no usable pixel (all flux NaN/masked or ivar 0)"
        if strict:
            raise ReaderError(msg)
        warnings.warn(msg, EmptySpectrumWarning, stacklevel=3)
    return [spectrum]
