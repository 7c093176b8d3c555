"""Shared helpers of the file readers: errors that name the file, safe FITS opening, header values."""

from __future__ import annotations

import gzip
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..spectrum import Spectrum, SpectrumError

__all__ = [
    "ReaderError",
    "UnknownFormatError",
    "EmptySpectrumWarning",
    "MaskWarning",
    "SPEED_OF_LIGHT_KMS",
    "open_fits",
    "is_fits",
    "is_gzip",
    "header_value",
    "header_subset",
    "make_spectrum",
    "to_rest_frame",
    "scalar",
]

SPEED_OF_LIGHT_KMS = 299_792.458

# String values that surveys write for "missing" in headers (GALAH DR4 writes 'None').
_MISSING_STRINGS = {"", "none", "nan", "null", "n/a", "-9999", "-9999.0"}


class ReaderError(SpectrumError):
    """A file that cannot be read as a spectrum; the message starts with the file path."""


class UnknownFormatError(ReaderError):
    """No reader recognises the file."""


class MaskWarning(UserWarning):
    """A mask column whose meaning (True = good or True = bad) is doubtful; the message says how it was read."""


class EmptySpectrumWarning(UserWarning):
    """A spectrum was read but has no usable pixel (``n_good == 0``)."""


def _readable_file(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ReaderError(f"{p}: no such file")
    if p.is_dir():
        raise ReaderError(f"{p}: is a folder; read() takes one file (loop over the files yourself)")
    if p.stat().st_size == 0:
        raise ReaderError(f"{p}: empty file (0 bytes)")
    return p


def is_gzip(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _head_bytes(path, n: int = 2880) -> bytes:
    if is_gzip(path):
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read(n)
        except (OSError, EOFError):
            return b""
    with open(path, "rb") as fh:
        return fh.read(n)


def is_fits(path) -> bool:
    """True if the file (or its gzip content) starts with a FITS primary header."""
    return _head_bytes(path, 80).startswith(b"SIMPLE  =")


@contextmanager
def open_fits(path):
    """Open a FITS file fully (all HDUs, data read eagerly) or raise :class:`ReaderError` naming the file.

    astropy opens a truncated file lazily and only warns; we turn "may have been truncated" into an error so a
    half-downloaded file never yields a half-filled spectrum.
    """
    from astropy.io import fits

    p = _readable_file(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(p, memmap=False, lazy_load_hdus=False)
            try:
                for hdu in hdul:  # force every data block to be read now
                    _ = hdu.data
            except Exception:
                hdul.close()
                raise
    except ReaderError:
        raise
    except Exception as exc:  # astropy raises OSError/ValueError/TypeError/EOFError on corrupt files
        raise ReaderError(f"{p}: not a readable FITS file (truncated or corrupt?): {type(exc).__name__}: {exc}") from exc
    for w in caught:
        msg = str(w.message)
        if "truncated" in msg.lower() or "unexpected end" in msg.lower():
            hdul.close()
            raise ReaderError(f"{p}: FITS file is truncated ({msg})")
    try:
        yield hdul
    finally:
        hdul.close()


def scalar(value):
    """A header/table value as a plain Python scalar; survey 'None'/'NaN' strings become None."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        value = value.strip()
        if value.lower() in _MISSING_STRINGS:
            return None
        return value
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def header_value(header, *keys, default=None):
    """First present, non-missing value among ``keys`` in a FITS header."""
    for k in keys:
        if header is not None and k in header:
            v = scalar(header[k])
            if v is not None:
                return v
    return default


def header_subset(header, keys: Iterable[str]) -> dict[str, Any]:
    """``{key: value}`` for the keys present (missing-value strings become None)."""
    out = {}
    for k in keys:
        if header is not None and k in header:
            out[k] = scalar(header[k])
    return out


def to_rest_frame(wavelength, rv_kms: float):
    """Doppler-shift observed wavelengths to the rest frame: ``lambda / (1 + v/c)`` (non-relativistic, as the
    surveys' own pipelines do)."""
    return np.asarray(wavelength, dtype=np.float64) / (1.0 + float(rv_kms) / SPEED_OF_LIGHT_KMS)


def make_spectrum(path, **kwargs) -> Spectrum:
    """Build a :class:`Spectrum` whose errors name the file, with ``meta['source']`` set."""
    meta = dict(kwargs.pop("meta", {}) or {})
    meta.setdefault("source", str(path))
    try:
        return Spectrum(meta=meta, **kwargs)
    except SpectrumError as exc:
        msg = str(exc)
        if str(path) not in msg:
            msg = f"{path}: {msg}"
        raise ReaderError(msg) from exc


def native(a, dtype=np.float64) -> np.ndarray:
    """A native-byte-order copy of a FITS array (FITS is big-endian)."""
    return np.array(a, dtype=dtype, copy=True)
