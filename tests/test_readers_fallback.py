"""read() falls back to specutils.Spectrum.read for files none of our readers recognises, and says so clearly when
that fails too (or specutils is missing)."""

import sys

import numpy as np
import pytest

from spectrafm_hf.instruments import UnknownFormatError, detect_format, read

pytest.importorskip("specutils")


def _odd_fits(path):
    """A FITS table whose column names we do not know, but whose units specutils' tabular loader understands."""
    import astropy.units as u
    from astropy.table import Table

    wl = np.linspace(1.52, 1.69, 60)
    Table({"SPECTRAL_AXIS": wl * u.um, "INTENSITY": (2 + np.sin(wl * 40)) * u.Jy}).write(path)
    return wl


def test_unknown_layout_is_read_by_specutils(tmp_path):
    path = tmp_path / "odd.fits"
    wl = _odd_fits(path)
    with pytest.raises(UnknownFormatError):
        detect_format(path)  # not one of ours
    (s,) = read(path)
    np.testing.assert_allclose(s.wavelength, wl * 1e4)  # microns -> Angstrom
    np.testing.assert_allclose(s.flux, 2 + np.sin(wl * 40))
    assert s.meta["format"] == "specutils" and s.meta["source"] == str(path) and s.meta["flux_unit"] == "Jy"
    assert s.meta["normalized"] is None  # unknown: the processor decides from the flux unit (Jy: raw)


def test_unreadable_by_both_names_both(tmp_path):
    path = tmp_path / "junk.dat"
    path.write_bytes(b"\x00\x01 not a spectrum " * 20)
    with pytest.raises(UnknownFormatError) as e:
        read(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "unknown format" in msg and "specutils.Spectrum.read could not read it" in msg


def test_without_specutils_says_how_to_get_it(tmp_path, monkeypatch):
    path = tmp_path / "odd.fits"
    _odd_fits(path)
    monkeypatch.setitem(sys.modules, "specutils", None)  # as if not installed
    with pytest.raises(UnknownFormatError, match=r"specutils is not installed.*pip install specutils"):
        read(path)
