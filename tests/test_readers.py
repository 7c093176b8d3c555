"""File readers on REAL files: committed APOGEE/Gaia fixtures (tests/fixtures, see PROVENANCE.md) and the team's
local-only LAMOST / GALAH / Gaia RVS / APOGEE DR13 files under ../shared (skipped when absent)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from spectrafm_hf import Spectrum, SpectrumError, air_to_vacuum
from spectrafm_hf.instruments import (
    READERS,
    EmptySpectrumWarning,
    ReaderError,
    UnknownFormatError,
    detect_format,
    normalize_continuum,
    read,
)

FIX = Path(__file__).resolve().parent / "fixtures"
APSTAR = FIX / "apogee" / "apStar-dr17-2M19485057+5005279.fits"
APVISITS = sorted((FIX / "apogee").glob("apVisit-*.fits"))
ASPCAP_TESTONLY = FIX / "apogee" / "TESTONLY_aspcapStar-format_2M19485057+5005279.fits"
XP_ZIPS = sorted((FIX / "gaia_datalink_xp_reference").glob("*.zip"))
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LOCAL = SHARED / "data" / "local-only"
C_KMS = 299_792.458

# vacuum rest wavelengths (Angstrom) of lines used as checks
H_ALPHA_VAC, H_BETA_VAC = 6564.61, 4862.68
CA_TRIPLET_VAC = (8500.35, 8544.44, 8664.52)


def shared_file(*parts) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (only beside the development checkout)")
    return p


def line_minimum(s: Spectrum, lo: float, hi: float) -> float:
    m = (s.wavelength > lo) & (s.wavelength < hi) & s.good
    return float(s.wavelength[m][np.argmin(s.flux[m])])


def assert_common_meta(s: Spectrum, path):
    assert s.instrument
    assert s.meta["source"] == str(path)
    assert isinstance(s.meta["normalized"], bool)
    assert "object_id" in s.meta and "format" in s.meta
    assert np.all(np.diff(s.wavelength) > 0)


# ====================================================================== registry
def test_registry_and_public_import():
    from spectrafm_hf.instruments import read as read_again

    assert read_again is read
    assert {"apogee_apstar", "apogee_apvisit", "apogee_aspcapstar", "lamost_lrs", "lamost_mrs", "sdss_spec",
            "galah_dr3", "galah_dr4", "gaia_csv", "gaia_rvs_bulk", "generic_fits", "npz"} <= set(READERS)
    for name, fn in READERS.items():
        assert callable(fn), name


# ====================================================================== APOGEE apStar
def test_apstar_combined_row():
    assert detect_format(APSTAR) == "apogee_apstar"
    (s,) = read(APSTAR)
    assert_common_meta(s, APSTAR)
    assert len(s) == 8575
    assert s.wavelength[0] == pytest.approx(10**4.179, rel=1e-6)
    assert s.wavelength[-1] == pytest.approx(10 ** (4.179 + 6e-6 * 8574), rel=1e-6)
    assert s.flux.dtype == np.float64  # stored f8 here; readers never assume a dtype
    assert 1 - s.n_good / len(s) < 0.30
    assert np.isfinite(np.median(s.flux[s.good])) and np.median(s.flux[s.good]) > 0
    assert s.meta["object_id"] == "2M19485057+5005279"
    assert s.meta["normalized"] is False and s.meta["kind"] == "combined_pixel_weighted" and s.meta["row"] == 0
    assert s.meta["RV_TEFF"] == pytest.approx(5226.245, abs=1e-2)
    assert s.meta["RV_LOGG"] == pytest.approx(5.0)
    assert s.meta["RV_FEH"] == pytest.approx(-0.2198, abs=1e-3)
    assert s.meta["SNR"] == pytest.approx(137.49, abs=0.01)


def test_apstar_rows_follow_nvisits_and_bitmask():
    with fits.open(APSTAR) as h:
        nvisits = h[0].header["NVISITS"]
        raw_flux, bitmask, err = h[1].data[0].copy(), h[3].data[0].copy(), h[2].data[0].copy()
    combined = read(APSTAR, rows="combined")
    visits = read(APSTAR, rows="visits")
    assert len(combined) == 1
    assert len(visits) == nvisits == 1
    assert visits[0].meta["kind"] == "visit" and visits[0].meta["visit"] == 1
    assert visits[0].meta["visit_header"]["SFILE"] == "apVisit-dr17-7496-56804-171.fits"
    # a one-visit apStar stores the visit as the combined row; row 1 is all zeros and is not returned
    np.testing.assert_array_equal(visits[0].flux, combined[0].flux)
    assert len(read(APSTAR, rows="all")) == 1
    # bits 0-7 and 12 mark bad pixels (the astroNN default), NaN flux / bad errors too
    s = combined[0]
    flagged = (bitmask.astype(np.int64) & 0b1_0000_1111_1111) != 0
    assert flagged.sum() > 0 and not np.any(s.good & flagged)
    unflagged = read(APSTAR, bad_bits=())[0]
    assert unflagged.n_good > s.n_good
    np.testing.assert_array_equal(s.good, ~flagged & np.isfinite(raw_flux) & np.isfinite(err) & (err > 0) & (err < 1e9)
                                  & (raw_flux != 0))
    with pytest.raises(ValueError, match=str(APSTAR).replace("+", r"\+")):
        read(APSTAR, rows=[5])


def test_apstar_nvisits_inconsistent_is_an_error(tmp_path):
    bad = tmp_path / "apStar-badvisits.fits"
    with fits.open(APSTAR) as h:
        h[0].header["NVISITS"] = 3
        h.writeto(bad)
    with pytest.raises(ReaderError, match="NVISITS=3") as e:
        read(bad)
    assert str(bad) in str(e.value)


# ====================================================================== APOGEE apVisit
@pytest.mark.parametrize("path", APVISITS, ids=lambda p: p.name)
def test_apvisit_matches_specutils(path):
    specutils = pytest.importorskip("specutils")
    assert detect_format(path) == "apogee_apvisit"
    (s,) = read(path)
    assert_common_meta(s, path)
    assert len(s) == 3 * 4096
    assert 15100 < s.wavelength[0] < 15200 and 16900 < s.wavelength[-1] < 17000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = specutils.Spectrum.read(path, format="APOGEE apVisit")
    wl = ref.spectral_axis.to_value("Angstrom")
    order = np.argsort(wl)
    np.testing.assert_array_equal(s.wavelength, wl[order])
    np.testing.assert_allclose(s.flux, ref.flux.value[order], rtol=1e-6, equal_nan=True)
    ok = s.ivar > 0
    np.testing.assert_allclose(s.flux_err[ok], ref.uncertainty.array[order][ok], rtol=1e-5)
    assert s.meta["object_id"].startswith("2M") and s.meta["rest_frame"] is False


def test_apvisit_rest_frame_uses_vrad():
    path = APVISITS[0]
    obs = read(path)[0]
    rest = read(path, rest_frame=True)[0]
    vrad = fits.getheader(path)["VRAD"]
    assert rest.meta["rv_kms"] == pytest.approx(vrad)
    np.testing.assert_allclose(rest.wavelength, obs.wavelength / (1 + vrad / C_KMS), rtol=1e-12)


# ====================================================================== APOGEE aspcapStar
def test_aspcapstar_testonly_fixture():
    assert detect_format(ASPCAP_TESTONLY) == "apogee_aspcapstar"
    s, model = read(ASPCAP_TESTONLY, model=True)
    assert_common_meta(s, ASPCAP_TESTONLY)
    assert s.meta["normalized"] is True
    assert abs(np.median(s.flux[s.good]) - 1.0) < 0.05
    assert s.meta["labels"]["TEFF"] == pytest.approx(5226.0)
    assert s.meta["aspcap"]["APOGEE_ID"] == "2M19485057+5005279" == s.meta["object_id"]
    assert model.meta["is_model"] is True and len(model) == len(s) == 8575
    with fits.open(ASPCAP_TESTONLY) as h:
        gaps = h[1].data == 0
    assert gaps.sum() > 1000 and not np.any(s.good & gaps)  # chip gaps (flux 0) are masked


def test_aspcapstar_real_dr13():
    import pandas as pd

    folder = shared_file("data", "local-only", "spectra", "apogee_dr13_aspcapStar")
    summary = pd.read_csv(folder / "aspcap_summary.csv").set_index("APOGEE_ID")
    files = sorted(folder.glob("aspcapStar-*.fits"))
    assert len(files) == 25
    for f in files:
        (s,) = read(f)
        assert s.meta["format"] == "apogee_aspcapstar" and s.meta["normalized"] is True
        row = summary.loc[s.meta["object_id"]]
        assert s.meta["aspcap"]["ASPCAPFLAG"] == row.ASPCAPFLAG
        assert s.meta["aspcap"]["FPARAM"][0] == pytest.approx(row.FPARAM_TEFF, rel=1e-6)
        teff = s.meta["labels"]["TEFF"]
        assert (teff is None and row.PARAM_TEFF <= -9999) or teff == pytest.approx(row.PARAM_TEFF, rel=1e-6)
        assert 0.85 < np.median(s.flux[s.good]) < 1.1


# ====================================================================== continuum
def test_continuum_of_real_apstar_matches_testonly_aspcapstar():
    """The TESTONLY aspcapStar is this apStar divided by a per-chip quadratic (checked: apStar / aspcapStar is a
    quadratic to 1e-7 on every chip), so our continuum must agree with it to a few percent."""
    from spectrafm_hf.grids import apogee_7514_indices

    raw = read(APSTAR)[0]
    ref = read(ASPCAP_TESTONLY)[0]
    norm, cont = normalize_continuum(raw, return_continuum=True)
    assert norm.meta["normalized"] is True and len(norm.meta["continuum"]["segments"]) == 3  # the three chips
    both = norm.good & ref.good
    assert both.sum() > 7000
    assert np.median(np.abs(norm.flux[both] - ref.flux[both])) < 0.02
    ok = norm.ivar > 0
    np.testing.assert_allclose(norm.ivar[ok], raw.ivar[ok] * cont[ok] ** 2)
    pct = normalize_continuum(raw, method="percentile")
    assert np.median(np.abs(pct.flux[both] - ref.flux[both])) < 0.03
    contmask = SHARED / "data" / "shippable" / "grids" / "astroNN_dr17_contmask_7514.npy"
    if contmask.exists():  # median ~1 on the DR17 continuum pixels
        idx = apogee_7514_indices()[np.load(contmask)]
        assert abs(np.median(norm.flux[idx][norm.good[idx]]) - 1.0) < 0.01
    # already normalised input is returned unchanged unless forced
    assert normalize_continuum(ref) is ref
    assert normalize_continuum(ref, force=True) is not ref


def test_continuum_of_lamost_agrees_with_pipeline_normalization():
    f = shared_file("data", "local-only", "spectra", "lamost_lrs_dr10", "spec-59549-TD035052N235741K01_sp09-176.fits.gz")
    ours = normalize_continuum(read(f)[0], degree=5)
    pipe = read(f, normalized=True)[0]
    both = ours.good & pipe.good
    assert np.median(np.abs(ours.flux[both] - pipe.flux[both])) < 0.05


# ====================================================================== LAMOST
LAMOST_LRS = [
    ("lamost", "spec-58397-EG014118N254444M01_sp03-031.fits", "lrs_image", 3909),
    ("lamost", "spec-57287-KP193637N444141V03_sp10-161.fits.gz", "lrs_image", 3909),
    ("lamost_lrs_dr10", "spec-59549-HD094852N223633V01_sp07-121.fits.gz", "lrs_table", 3909),
    ("lamost_lrs_dr10", "spec-59549-TD035052N235741K01_sp09-176.fits.gz", "lrs_table", 3903),
]


@pytest.mark.parametrize("folder,name,layout,npix", LAMOST_LRS, ids=[x[1][:16] for x in LAMOST_LRS])
def test_lamost_lrs_both_layouts(folder, name, layout, npix):
    f = shared_file("data", "local-only", "spectra", folder, name)
    assert detect_format(f) == "lamost_lrs"
    (s,) = read(f)
    assert_common_meta(s, f)
    assert s.meta["layout"] == layout and len(s) == npix
    # vacuum log-linear grid 10**(3.5682 + 1e-4 i), as FORMATS.md states; no air conversion
    np.testing.assert_allclose(s.wavelength, 10 ** (3.5682 + 1e-4 * np.arange(npix)), rtol=1e-12)
    assert s.meta["air_to_vacuum_applied"] is False and fits.getheader(f)["VACUUM"] is True
    assert s.meta["object_id"] == str(fits.getheader(f)["OBSID"]) and s.meta["CLASS"] == "STAR"
    rest = read(f, rest_frame=True)[0]
    assert abs(line_minimum(rest, 6550, 6580) - H_ALPHA_VAC) < 2.0  # ~1.5 A pixels
    assert abs(line_minimum(rest, 4850, 4875) - H_BETA_VAC) < 1.5


def test_lamost_dr10_normalization_column():
    f = shared_file("data", "local-only", "spectra", "lamost_lrs_dr10", "spec-59549-HD094852N223633V01_sp07-121.fits.gz")
    raw, norm = read(f)[0], read(f, normalized=True)[0]
    assert norm.meta["normalized"] is True and raw.meta["normalized"] is False
    assert 0.9 < np.median(norm.flux[norm.good]) < 1.05
    with fits.open(f) as h:
        stored = h[1].data["NORMALIZATION"][0]
    np.testing.assert_allclose(norm.flux[norm.good], stored[norm.good], rtol=1e-6)
    ok = norm.good & raw.good
    # signal-to-noise is unchanged by the normalisation
    np.testing.assert_allclose((norm.flux * np.sqrt(norm.ivar))[ok], (raw.flux * np.sqrt(raw.ivar))[ok], rtol=1e-4)
    with pytest.raises(ReaderError, match="NORMALIZATION"):
        read(shared_file("data", "local-only", "spectra", "lamost", "spec-58397-EG014118N254444M01_sp03-031.fits"),
             normalized=True)


def test_lamost_mrs_old_and_new_layouts():
    old = shared_file("data", "local-only", "spectra", "lamost", "med-58625-TD192102N424113K01_sp12-076.fits.gz")
    new = shared_file("data", "local-only", "testonly_fixtures",
                      "TESTONLY_med-58625-TD192102N424113K01_sp12-076_dr9v1layout.fits.gz")
    assert detect_format(old) == detect_format(new) == "lamost_mrs"
    (comb,) = read(old)
    assert len(comb) == 4156 + 3800 and comb.meta["arm"] == "B+R"
    b, r = read(old, arms="separate")
    assert (b.meta["arm"], r.meta["arm"]) == ("B", "R")
    assert 4890 < b.wavelength[0] < 4910 and 5380 < b.wavelength[-1] < 5400
    assert 6260 < r.wavelength[0] < 6280 and 6840 < r.wavelength[-1] < 6850
    assert b.meta["snr"] == pytest.approx(26.54) and comb.meta["object_id"] == "744812076"
    every = read(old, exposures=True)
    assert len(every) == 1 + 6
    red_exposure = [s for s in every if s.meta["hdu"] == "R-84420148"][0]
    assert np.all(np.diff(red_exposure.wavelength) > 0)  # stored descending, returned ascending
    (comb_new,) = read(new)
    np.testing.assert_allclose(comb_new.wavelength, comb.wavelength, rtol=1e-6)
    np.testing.assert_allclose(comb_new.flux, comb.flux, rtol=1e-6)
    np.testing.assert_array_equal(comb_new.good, comb.good)


# ====================================================================== GALAH
GALAH_RANGES = {1: (4713, 4903), 2: (5648, 5874), 3: (6477, 6737), 4: (7585, 7887)}  # air, FORMATS.md


def test_galah_dr3_cameras_air_to_vacuum():
    folder = shared_file("data", "local-only", "spectra", "galah_dr3")
    for cam in (1, 2, 3, 4):
        f = folder / f"170509003701037{cam}.fits"
        assert detect_format(f) == "galah_dr3"
        (s,) = read(f)
        assert_common_meta(s, f)
        assert s.meta["camera"] == cam and s.meta["object_id"] == "170509003701037"
        h = fits.getheader(f)
        air = h["CRVAL1"] + np.arange(h["NAXIS1"]) * h["CDELT1"]
        np.testing.assert_allclose(s.wavelength, air_to_vacuum(air), rtol=1e-12)
        lo, hi = GALAH_RANGES[cam]
        assert abs(air[0] - lo) < 5 and abs(air[-1] - hi) < 5
        shift = s.wavelength - air
        if cam == 3:  # vacuum - air is about +1.8 A near 6500 A
            assert 1.7 < shift.mean() < 1.9
        with fits.open(f) as hd:  # sigma = relative error x flux
            rel, flux = hd[1].data.astype(float), hd[0].data.astype(float)
        ok = s.ivar > 0
        np.testing.assert_allclose(s.flux_err[ok], (rel * flux)[ok], rtol=1e-6)


def test_galah_dr3_normalised_hdu_rest_frame_and_odd_length():
    folder = shared_file("data", "local-only", "spectra", "galah_dr3")
    (n,) = read(folder / "1705090037010373.fits", normalized=True)
    assert n.meta["normalized"] is True and n.meta["rest_frame"] is True
    assert abs(line_minimum(n, 6555, 6575) - H_ALPHA_VAC) < 0.1
    assert 0.95 < np.median(n.flux[n.good]) < 1.02
    (odd,) = read(folder / "1504290041020151.fits")
    assert len(odd) == 4111 and odd.n_good == 4111 - 24  # 24 pixels with relative error <= 0
    (odd_n,) = read(folder / "1504290041020151.fits", normalized=True)
    assert len(odd_n) == 4111 and odd_n.meta["n_pixels_normalised_hdu"] == 4111


def test_galah_dr3_star_with_missing_camera():
    from spectrafm_hf.instruments.galah import read_galah_star

    f = shared_file("data", "local-only", "spectra", "galah_dr3", "1812220018011571.fits")
    s = read_galah_star(f)
    assert s.meta["cameras"] == [1, 2, 3] and len(s) == 3 * 4096
    assert np.all(np.diff(s.wavelength) > 0)


def test_galah_dr4_vesta_is_the_sun():
    from spectrafm_hf.instruments.galah import read_galah_star

    folder = shared_file("data", "local-only", "spectra", "galah_dr4")
    f3 = folder / "2101150022012393.fits"
    assert detect_format(f3) == "galah_dr4"
    (s,) = read(f3, normalized=True, rest_frame=True)
    assert_common_meta(s, f3)
    assert s.meta["OBJ_NAME"] == "Vesta/Sun" and s.meta["GAIA_ID"] is None  # 'None' string -> None
    assert s.meta["RVCOM"] == pytest.approx(-21.38, abs=0.01) and s.meta["TEFF_R"] == pytest.approx(5655.05, abs=0.1)
    assert s.meta["air_to_vacuum_applied"] is True
    assert abs(line_minimum(s, 6555, 6575) - H_ALPHA_VAC) < 0.1
    (s1,) = read(folder / "2101150022012391.fits", normalized=True, rest_frame=True)
    assert abs(line_minimum(s1, 4855, 4870) - H_BETA_VAC) < 0.1
    assert s.lsf_sigma is not None and 0.08 < np.median(s.lsf_sigma) < 0.2  # FWHM ~0.28 A
    star = read_galah_star(f3, normalized=True)
    assert star.meta["cameras"] == [1, 2, 3, 4] and len(star) == 4 * 4096


def test_galah_dr4_field_star_float64_and_bad_pixels():
    f = shared_file("data", "local-only", "spectra", "galah_dr4", "2101150001010014.fits")
    (s,) = read(f)
    with fits.open(f) as h:
        assert h[0].data.dtype.kind == "f" and h[0].data.dtype.itemsize == 8
        nonpos = int((h[0].data <= 0).sum())
    assert nonpos == 10 and s.n_good == 4096 - 10
    assert s.meta["GAIA_ID"] == 3335074476514836608 and s.meta["object_id"] == "210115000101001"


def test_galah_fit_spectrum_testonly():
    f = shared_file("data", "local-only", "testonly_fixtures", "TESTONLY_210115002201239_allstar_fit_spectrum.fits")
    assert detect_format(f) == "galah_fit_spectrum"
    obs, model = read(f, model=True)
    assert obs.meta["normalized"] is True and model.meta["is_model"] is True
    assert obs.meta["object_id"] == "210115002201239" and len(obs) == 16384


# ====================================================================== Gaia
@pytest.mark.parametrize("name,n_nan", [("Kepler-93.csv", 7), ("HD176650.csv", 0), ("Kepler-409.csv", 10)])
def test_gaia_rvs_real_csv(name, n_nan):
    f = shared_file("data", "local-only", "spectra", "gaia_rvs", name)
    assert detect_format(f) == "gaia_csv"
    (s,) = read(f)
    assert_common_meta(s, f)
    assert len(s) == 2401 and s.instrument == "gaia_rvs"
    np.testing.assert_allclose(s.wavelength, 8460.0 + 0.1 * np.arange(2401), atol=1e-9)  # nm -> A exactly
    assert s.meta["normalized"] is True and s.meta["rest_frame"] is True
    assert isinstance(s.meta["source_id"], int) and s.meta["object_id"] == str(s.meta["source_id"])
    assert len(s) - s.n_good == n_nan
    for line in CA_TRIPLET_VAC:  # vacuum Ca II triplet (air would be 2.3 A bluer)
        assert abs(line_minimum(s, line - 5, line + 5) - line) < 0.25


def test_gaia_rvs_other_containers_agree_with_csv():
    ref = read(shared_file("data", "local-only", "spectra", "gaia_rvs", "Kepler-93.csv"))[0]
    folder = shared_file("data", "local-only", "testonly_fixtures")
    stem = "TESTONLY_RVS-Gaia DR3 2052747119115620352"
    expected = {".ecsv": "gaia_ecsv", ".fits": "gaia_fits", ".xml": "gaia_votable", "_plain.xml": "gaia_votable"}
    for suffix, fmt in expected.items():
        f = folder / (stem + suffix)
        assert detect_format(f) == fmt
        (s,) = read(f)
        assert s.meta["source_id"] == 2052747119115620352
        np.testing.assert_allclose(s.wavelength, ref.wavelength, atol=1e-6)
        np.testing.assert_allclose(s.flux, ref.flux, rtol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(s.good, ref.good)
    bulk = folder / "TESTONLY_RvsMeanSpectrum_bulk-style.csv.gz"
    assert detect_format(bulk) == "gaia_rvs_bulk"
    spectra = read(bulk)
    assert [s.meta["row"] for s in spectra] == [0, 1, 2]
    np.testing.assert_allclose(spectra[0].flux, ref.flux, rtol=1e-6, equal_nan=True)


def test_gaia_xp_sampled_from_real_datalink_zips():
    fluxes = []
    for z in XP_ZIPS:
        assert detect_format(z) == "gaia_zip"
        (s,) = read(z)  # XP_CONTINUOUS and MCMC products are skipped
        assert s.meta["format"] == "gaia_xp_sampled" and s.instrument == "gaia_xp"
        assert s.meta["source_id"] == 5937083312263887616 and s.meta["normalized"] is False
        assert s.meta["member"].startswith("XP_SAMPLED")
        assert len(s) == 343 and s.wavelength[0] == pytest.approx(3360.0) and s.wavelength[-1] == pytest.approx(10200.0)
        fluxes.append(s.flux)
    assert len(fluxes) == 4
    for f in fluxes[1:]:  # CSV, ECSV, FITS, VOTable packagings hold the same numbers
        np.testing.assert_allclose(f, fluxes[0], rtol=1e-6)


# ====================================================================== SDSS
def _sdss_real():
    for p in (SHARED / "data" / "shippable" / "fixtures" / "sdss" / "spec-0266-51602-0031.fits",
              LOCAL / "spectra" / "sdss" / "spec-0266-51602-0031.fits", FIX / "sdss" / "spec-0266-51602-0031.fits"):
        if p.exists():
            return p
    pytest.skip("the real SDSS spec-0266-51602-0031.fits (PyPI rvspecfit 0.9.0 tests/data) is not staged")


def test_sdss_spec_real():
    f = _sdss_real()
    assert detect_format(f) == "sdss_spec"
    (s,) = read(f)
    assert s.meta["object_id"] == "0266-51602-0031" and s.meta["labels"]["ELODIE_TEFF"] == pytest.approx(9000.0)
    assert 3790 < s.wavelength[0] < 3810 and len(s) == 3842
    assert 0.5 < np.median(s.lsf_sigma) < 2.0


def test_sdss_layout(tmp_path):
    """Format test (synthetic numbers in the real SDSS COADD/SPECOBJ layout; no real file is committed)."""
    n = 500
    loglam = 3.58 + 1e-4 * np.arange(n)
    and_mask = np.zeros(n, np.int32)
    and_mask[10:20] = 1 << 23
    ivar = np.full(n, 4.0)
    ivar[30] = 0.0
    cols = [fits.Column("flux", "E", array=np.ones(n)), fits.Column("loglam", "E", array=loglam),
            fits.Column("ivar", "E", array=ivar), fits.Column("and_mask", "J", array=and_mask),
            fits.Column("or_mask", "J", array=and_mask), fits.Column("wdisp", "E", array=np.full(n, 1.0))]
    obj = [fits.Column("PLATE", "J", array=[3586]), fits.Column("MJD", "J", array=[55181]),
           fits.Column("FIBERID", "J", array=[500]), fits.Column("ELODIE_TEFF", "E", array=[6537.0])]
    f = tmp_path / "spec-3586-55181-0500.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD"),
                  fits.BinTableHDU.from_columns(obj, name="SPECOBJ")]).writeto(f)
    assert detect_format(f) == "sdss_spec"
    (s,) = read(f)
    np.testing.assert_allclose(s.wavelength, 10 ** loglam.astype(np.float32).astype(np.float64), rtol=1e-12)
    assert s.n_good == n - 11 and s.meta["object_id"] == "3586-55181-0500"
    assert s.meta["labels"]["ELODIE_TEFF"] == pytest.approx(6537.0)
    np.testing.assert_allclose(s.lsf_sigma, 1e-4 * np.log(10) * s.wavelength, rtol=1e-5)


# ====================================================================== generic
def test_generic_round_trips_of_a_real_spectrum(tmp_path):
    from astropy import units as u
    from astropy.table import Table

    s = read(APVISITS[0])[0]
    err = np.where(s.ivar > 0, s.flux_err, np.nan)
    # ECSV with the wavelength in nm and a unit: converted exactly
    t = Table({"wavelength": s.wavelength / 10 * u.nm, "flux": s.flux, "flux_err": err, "mask": s.mask})
    ecsv = tmp_path / "spec.ecsv"
    t.write(ecsv)
    # FITS table with TUNIT = Angstrom, and a plain CSV in Angstrom
    fits_table = tmp_path / "spec_table.fits"
    Table({"WAVE": s.wavelength * u.AA, "FLUX": s.flux, "IVAR": s.ivar}).write(fits_table)
    csv = tmp_path / "spec.csv"
    Table({"wavelength": s.wavelength, "flux": s.flux, "ivar": s.ivar}).write(csv)
    npz = tmp_path / "spec.npz"
    np.savez(npz, wavelength=s.wavelength, flux=s.flux, ivar=s.ivar, mask=s.mask, object_id=s.meta["object_id"])
    for path, fmt in ((ecsv, "generic_table"), (fits_table, "generic_fits"), (csv, "generic_table"), (npz, "npz")):
        assert detect_format(path) == fmt, path
        (g,) = read(path)
        assert_common_meta(g, path)
        np.testing.assert_allclose(g.wavelength, s.wavelength, rtol=1e-12)
        np.testing.assert_allclose(g.flux, s.flux, rtol=1e-12, equal_nan=True)
        assert g.meta["normalized"] is False
    assert read(npz)[0].meta["object_id"] == s.meta["object_id"]
    np.testing.assert_array_equal(read(ecsv)[0].good, s.good)


def test_generic_fits_image_with_air_wcs(tmp_path):
    air = 6000.0 + 0.05 * np.arange(2000)
    hdu = fits.PrimaryHDU(np.ones(2000, np.float32))
    hdu.header.update(CRVAL1=6000.0, CDELT1=0.05, CRPIX1=1.0, CTYPE1="AWAV", CUNIT1="Angstrom", OBJECT="star-1")
    f = tmp_path / "image.fits"
    hdu.writeto(f)
    assert detect_format(f) == "generic_fits"
    (s,) = read(f)
    np.testing.assert_allclose(s.wavelength, air_to_vacuum(air), rtol=1e-12)
    assert 1.6 < (s.wavelength - air).mean() < 1.8 and s.meta["object_id"] == "star-1"


# ====================================================================== bad input
def test_truncated_fits_names_the_file(tmp_path):
    data = APSTAR.read_bytes()
    for n in (600_000, 2_000):
        bad = tmp_path / f"apStar-truncated-{n}.fits"
        bad.write_bytes(data[:n])
        for call in (read, detect_format):
            with pytest.raises(ReaderError) as e:
                call(bad)
            assert str(bad) in str(e.value) and ("truncated" in str(e.value) or "corrupt" in str(e.value))
    gz = tmp_path / "spec-truncated.fits.gz"
    import gzip

    gz.write_bytes(gzip.compress(data)[:5000])
    with pytest.raises(ReaderError, match="truncated|corrupt"):
        read(gz)


def test_unknown_formats_name_the_file(tmp_path):
    binary = tmp_path / "random.bin"
    binary.write_bytes(np.random.default_rng(0).bytes(5000))
    text = tmp_path / "notes.txt"
    text.write_text("this is not a spectrum\njust words\n")
    table = tmp_path / "catalogue.fits"
    fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0]), fits.Column("b", "E", array=[2.0])]).writeto(table)
    for f in (binary, text, table):
        with pytest.raises(UnknownFormatError) as e:
            read(f)
        assert str(f) in str(e.value)
        assert isinstance(e.value, SpectrumError) and isinstance(e.value, ValueError)
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    for f in (empty, tmp_path / "missing.fits", tmp_path):
        with pytest.raises(ReaderError, match=str(f)):
            read(f)
    with pytest.raises(UnknownFormatError, match="known formats"):
        read(APSTAR, format="no_such_format")
    with pytest.raises(ReaderError, match=str(APSTAR).replace("+", r"\+")):
        read(APSTAR, format="lamost_lrs")  # forcing the wrong reader is a clear error, not a garbage spectrum
    with pytest.raises(TypeError, match="options are"):
        read(APSTAR, colour="blue")


@pytest.mark.parametrize("scale,unit", [(0.1, "nanometres"), (1e-4, "microns")])
def test_wavelength_units_mistakes_propagate_with_the_file_name(tmp_path, scale, unit):
    wl = np.linspace(15200.0, 15300.0, 50) * scale
    f = tmp_path / f"spec_{unit}.csv"
    f.write_text("wavelength,flux\n" + "".join(f"{float(w)!r},1.0\n" for w in wl))
    with pytest.raises(SpectrumError, match=unit) as e:
        read(f)
    assert str(f) in str(e.value)
    # the same numbers with an explicit unit are fine
    (s,) = read(f, wavelength_unit="nm" if unit == "nanometres" else "micron")
    np.testing.assert_allclose(s.wavelength, np.linspace(15200.0, 15300.0, 50), rtol=1e-12)


def test_descending_and_duplicated_wavelengths(tmp_path):
    wl = np.linspace(15300.0, 15200.0, 50)  # descending
    flux = np.linspace(0.5, 1.0, 50)
    f = tmp_path / "descending.npz"
    np.savez(f, wavelength=wl, flux=flux)
    (s,) = read(f)
    np.testing.assert_array_equal(s.wavelength, wl[::-1])
    np.testing.assert_array_equal(s.flux, flux[::-1])
    wl_dup = wl.copy()
    wl_dup[10] = wl_dup[11]
    dup = tmp_path / "duplicated.npz"
    np.savez(dup, wavelength=wl_dup, flux=flux)
    with pytest.raises(ReaderError, match="duplicated") as e:
        read(dup)
    assert str(dup) in str(e.value)


def test_all_nan_flux_warns_or_raises_in_strict_mode(tmp_path):
    f = tmp_path / "allnan.npz"
    np.savez(f, wavelength=np.linspace(15200.0, 15300.0, 50), flux=np.full(50, np.nan))
    with pytest.warns(EmptySpectrumWarning, match="no usable pixel"):
        (s,) = read(f)
    assert s.n_good == 0
    with pytest.raises(ReaderError, match="no usable pixel") as e:
        read(f, strict=True)
    assert str(f) in str(e.value)
    with pytest.raises(SpectrumError, match="no usable pixel"):
        normalize_continuum(s)


def test_negative_ivar_names_the_file(tmp_path):
    f = tmp_path / "negivar.csv"
    f.write_text("wavelength,flux,ivar\n15200.0,1.0,4.0\n15200.2,1.0,-4.0\n15200.4,1.0,4.0\n")
    with pytest.raises(ReaderError, match="negative") as e:
        read(f)
    assert str(f) in str(e.value)


def test_bad_apstar_copy_with_negative_errors_is_not_silently_used(tmp_path):
    """Negative APOGEE errors are treated as missing pixels (ivar 0), never as valid data."""
    bad = tmp_path / "apStar-negerr.fits"
    shutil.copy(APSTAR, bad)
    with fits.open(bad, mode="update") as h:
        h[2].data[0, 1000:1010] = -1.0
    (s,) = read(bad)
    assert not s.good[1000:1010].any() and s.good[990:1000].any()
