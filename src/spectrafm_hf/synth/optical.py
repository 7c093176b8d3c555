"""Optical synthetic spectra from the bossbrain emulators, degraded to a MILES-like instrument.

Source: the PyPI wheel ``bossbrain==1.0.12`` (D. Nidever, MIT) ships three Payne-style emulators
``bossbrain/data/ann_22pars_{3500-4200,4000-5000,4900-6000}.pkl`` (theborg ``Emulator``: an MLP 22 -> 300 -> 300 ->
14001 with LeakyReLU(0.01) after the two hidden layers). Facts taken from the bossbrain / theborg source:

- output: continuum-normalised flux at 14001 wavelengths ``3500 + 0.5 * i`` A **in air** ("synspec wavelengths are in
  air units", ``bossbrain/ann.py``), before any instrumental broadening (bossbrain convolves it to the BOSS line
  spread function in a separate step);
- input: 22 labels ``teff, logg, mh`` and 19 ``[X/M]`` (C N O Na Mg Al Si Ca Ti V Cr Mn Co Ni Sc Ba Ce Nd Zr),
  scaled as ``s = (labels - xmin) / (xmax - xmin) - 0.5`` (``theborg.model.Model.scaled_labels``);
- which of the three networks to use: Teff < 4100 K the 3500-4200 one, 4100-4950 K the 4000-5000 one, above
  4950 K the 4900-6000 one (``BOSSANNModel.__init__``); the other labels' valid range is the intersection of the
  three training ranges: logg 0-3.5 (giants only), [M/H] -2.5..0.5, [X/M] -0.6..0.6.

Loading the pickles needs ``theborg``, ``dill`` and ``dlnpyutils``, which are not dependencies of this package:
`convert_bossbrain` (``scripts/convert_bossbrain.py``) installs them into a temporary ``--target`` folder, unpickles
the three files once in a subprocess and writes the weights and label scaling to a plain ``.npz`` (no pickle) in
``default_cache_dir()``. Everything else here (`OpticalEmulator`, `load_optical_emulator`) is our own numpy/torch
code reading that file.

`degrade` takes the emulator output to a MILES-like spectrum: Gaussian broadening to FWHM 2.5 A (the emulator's own
resolution is not documented; ``model_fwhm`` = 1.2 A is assumed: the narrowest lines of a 5500 K / logg 3 / [M/H] -2 model have FWHM 1.24 A), air -> vacuum, linear
resampling onto the target vacuum grid, Gaussian noise at a given S/N. `pseudo_continuum_normalize` is the one
normalisation applied to BOTH the synthetic and the (flux-calibrated) MILES spectra: a running 90th percentile over
151 pixels (~136 A on the MILES grid), smoothed by a running mean of the same width (the ``percentile`` method of
`spectrafm_hf.instruments.continuum.normalize_continuum`, vectorised). `synthetic_miles_dataset` puts it together
as a `datasets.Dataset` in the package schema.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "BOSSBRAIN_FILES",
    "LABEL_NAMES",
    "EMULATOR_FILENAME",
    "OpticalEmulator",
    "default_emulator_path",
    "load_optical_emulator",
    "save_optical_emulator",
    "random_optical_emulator",
    "convert_bossbrain",
    "sample_optical_labels",
    "degrade",
    "pseudo_continuum_normalize",
    "synthetic_miles_arrays",
    "synthetic_miles_dataset",
]

BOSSBRAIN_VERSION = "1.0.12"
BOSSBRAIN_FILES = ("ann_22pars_3500-4200.pkl", "ann_22pars_4000-5000.pkl", "ann_22pars_4900-6000.pkl")
BOSSBRAIN_MEMBER = "bossbrain/data/"
TEFF_EDGES = (4100.0, 4950.0)  # bossbrain's switch points between the three networks
LABEL_NAMES = ("teff", "logg", "mh", "cm", "nm", "om", "nam", "mgm", "alm", "sim", "cam", "tim", "vm", "crm", "mnm",
               "com", "nim", "scm", "bam", "cem", "ndm", "zrm")
ALPHA_LABELS = ("om", "mgm", "sim", "cam", "tim")
EMULATOR_FILENAME = "bossbrain_ann22_optical.npz"
FORMAT = "spectrafm_hf.optical_emulator.v1"
_KEYS = {"format", "wave_air", "x_min", "x_max", "teff_edges", "label_names", "W0", "b0", "W1", "b1", "W2", "b2"}
LOADER_PACKAGES = ("theborg==1.0.7", "dill==0.4.1", "dlnpyutils==1.0.88")


# ---------------------------------------------------------------------------------------------------- the emulator
class OpticalEmulator:
    """The three bossbrain networks as stacked arrays: ``W0`` (3, 300, 22), ``W1`` (3, 300, 300), ``W2`` (3, p, 300)
    and biases; ``x_min``/``x_max`` (3, 22); ``wave_air`` (p,) Angstrom; ``teff_edges`` (2,)."""

    def __init__(self, arrays: dict, source: str = ""):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.source = source
        a = self.arrays
        self.wave_air = np.asarray(a["wave_air"], np.float64)
        self.label_names = tuple(str(s) for s in a["label_names"])
        self.teff_edges = np.asarray(a["teff_edges"], np.float64)
        self.n_models = a["W0"].shape[0]
        self._torch = None
        xmin, xmax = np.asarray(a["x_min"], np.float64), np.asarray(a["x_max"], np.float64)
        lo, hi = xmin.max(axis=0), xmax.min(axis=0)  # intersection for every label but Teff
        lo[0], hi[0] = xmin[:, 0].min(), xmax[:, 0].max()
        self.label_lo, self.label_hi = lo, hi

    @property
    def wave_vacuum(self) -> np.ndarray:
        from ..spectrum import air_to_vacuum

        return air_to_vacuum(self.wave_air)

    @property
    def n_pixels(self) -> int:
        return self.wave_air.size

    def model_index(self, teff) -> np.ndarray:
        return np.searchsorted(self.teff_edges, np.asarray(teff, np.float64), side="right")

    def _weights(self):
        if self._torch is None:
            import torch

            self._torch = {k: torch.from_numpy(np.ascontiguousarray(self.arrays[k], np.float32))
                           for k in ("W0", "b0", "W1", "b1", "W2", "b2")}
        return self._torch

    def __call__(self, labels, clip: bool = True, batch_size: int = 512) -> np.ndarray:
        """Normalised flux (n, p) for labels (n, 22) in the order of ``label_names`` (physical units)."""
        import torch

        x = np.atleast_2d(np.asarray(labels, np.float64))
        if x.shape[1] != len(self.label_names):
            raise ValueError(f"labels must have {len(self.label_names)} columns {self.label_names}, got {x.shape}")
        if clip:
            x = np.clip(x, self.label_lo, self.label_hi)
        w = self._weights()
        xmin, xmax = self.arrays["x_min"], self.arrays["x_max"]
        which = self.model_index(x[:, 0])
        out = np.empty((len(x), self.n_pixels), np.float32)
        act = torch.nn.functional.leaky_relu
        with torch.no_grad():
            for m in np.unique(which):
                rows = np.flatnonzero(which == m)
                s = (x[rows] - xmin[m]) / (xmax[m] - xmin[m]) - 0.5
                for i in range(0, rows.size, batch_size):
                    t = torch.from_numpy(s[i:i + batch_size].astype(np.float32))
                    h = act(t @ w["W0"][m].T + w["b0"][m], 0.01)
                    h = act(h @ w["W1"][m].T + w["b1"][m], 0.01)
                    out[rows[i:i + batch_size]] = (h @ w["W2"][m].T + w["b2"][m]).numpy()
        return out


def default_emulator_path() -> Path:
    """``$SPECTRAFM_OPTICAL_EMULATOR`` if set, else ``default_cache_dir() / bossbrain_ann22_optical.npz``."""
    env = os.environ.get("SPECTRAFM_OPTICAL_EMULATOR")
    if env:
        return Path(env)
    from ..data.real import default_cache_dir

    return default_cache_dir() / EMULATOR_FILENAME


def _check_arrays(a: dict, where: str) -> None:
    missing = sorted(_KEYS - set(a))
    if missing:
        raise ValueError(f"{where} is not a converted optical emulator (missing {missing}); make one with "
                         "`python scripts/convert_bossbrain.py`")
    if str(a["format"]) != FORMAT:
        raise ValueError(f"{where}: unknown format {str(a['format'])!r} (expected {FORMAT!r})")
    k, p = a["W0"].shape[0], np.asarray(a["wave_air"]).size
    n_lab = len(a["label_names"])
    shapes = {"W0": (k, None, n_lab), "W1": (k, None, None), "W2": (k, p, None), "b2": (k, p),
              "x_min": (k, n_lab), "x_max": (k, n_lab), "teff_edges": (k - 1,)}
    for name, want in shapes.items():
        got = np.shape(a[name])
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            raise ValueError(f"{where}: {name} has shape {got}, expected {want} (None = any)")


def load_optical_emulator(path=None) -> OpticalEmulator:
    """Read a file written by `convert_bossbrain` / `save_optical_emulator` (FileNotFoundError if absent)."""
    path = Path(path) if path is not None else default_emulator_path()
    if not path.is_file():
        raise FileNotFoundError(f"no converted optical emulator at {path}; make it with "
                                "`python scripts/convert_bossbrain.py` (downloads bossbrain from PyPI)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a converted optical emulator (not a readable .npz: {e})") from e
    _check_arrays(arrays, str(path))
    return OpticalEmulator(arrays, source=str(path))


def save_optical_emulator(path, arrays: dict, note: str = "") -> Path:
    a = dict(arrays)
    a.setdefault("format", np.array(FORMAT))
    a["note"] = np.array(note)
    _check_arrays(a, "the arrays to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **a)
    tmp.replace(path)
    return path


def random_optical_emulator(wmin: float = 3500.0, wmax: float = 7600.0, step: float = 0.5, hidden: int = 16,
                            seed: int = 0) -> OpticalEmulator:
    """An emulator of the right form with random weights (tests, toy presets): flux = 1 - small absorption."""
    rng = np.random.default_rng(seed)
    wave = np.arange(wmin, wmax + step / 2, step)
    k, n_lab, p = 3, len(LABEL_NAMES), wave.size
    lo = np.array([3500.0, 0.0, -2.5] + [-0.6] * 19)
    hi = np.array([6000.0, 3.5, 0.5] + [0.6] * 19)
    b2 = np.ones((k, p)) - 0.3 * rng.random((1, p)) ** 8
    arrays = {"format": np.array(FORMAT), "wave_air": wave, "x_min": np.tile(lo, (k, 1)),
              "x_max": np.tile(hi, (k, 1)), "teff_edges": np.array(TEFF_EDGES),
              "label_names": np.array(LABEL_NAMES),
              "W0": rng.normal(0, 1, (k, hidden, n_lab)), "b0": np.zeros((k, hidden)),
              "W1": rng.normal(0, 0.3, (k, hidden, hidden)), "b1": np.zeros((k, hidden)),
              "W2": rng.normal(0, 0.01, (k, p, hidden)), "b2": b2}
    return OpticalEmulator({n: np.asarray(v, np.float32) if n[0] in "Wb" else v for n, v in arrays.items()},
                           source="random")


# ---------------------------------------------------------------------------------------------------- conversion
_UNPICKLE = r"""
import sys, numpy as np
from theborg.emulator import Emulator
out = {}
for i, path in enumerate(sys.argv[2:]):
    em = Emulator.read(path)
    sd = {k: v.detach().cpu().numpy() for k, v in em.model.state_dict().items()}
    lin = sorted({int(k.split('.')[1]) for k in sd}, key=int)
    if len(lin) != 3:
        raise SystemExit(f"{path}: expected 3 linear layers, found {len(lin)}")
    for j, layer in enumerate(lin):
        out[f"W{j}_{i}"] = sd[f"features.{layer}.weight"]
        out[f"b{j}_{i}"] = sd[f"features.{layer}.bias"]
    out[f"x_min_{i}"] = np.asarray(em.xmin, np.float64)
    out[f"x_max_{i}"] = np.asarray(em.xmax, np.float64)
    out[f"label_names_{i}"] = np.array([str(s) for s in em.label_names])
    tl = np.asarray(em.training_labels, np.float64)
    out[f"training_labels_min_{i}"] = tl.min(axis=0)
    out[f"training_labels_max_{i}"] = tl.max(axis=0)
    neg = [m for m in em.model.modules() if m.__class__.__name__ == 'LeakyReLU']
    out[f"negative_slope_{i}"] = np.array([m.negative_slope for m in neg])
np.savez(sys.argv[1], **out)
"""


def _bossbrain_pickles(source: Path, workdir: Path) -> list[Path]:
    """The three pickle files from a bossbrain wheel or a folder holding them; ValueError for anything else."""
    source = Path(source)
    if source.is_dir():
        for d in (source, source / "bossbrain" / "data", source / "data"):
            files = [d / f for f in BOSSBRAIN_FILES]
            if all(f.is_file() for f in files):
                break
        else:
            raise ValueError(f"{source} holds no bossbrain emulators (need {', '.join(BOSSBRAIN_FILES)})")
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            names = set(z.namelist())
            missing = [f for f in BOSSBRAIN_FILES if BOSSBRAIN_MEMBER + f not in names]
            if missing:
                raise ValueError(f"{source} is not a bossbrain wheel: it lacks {BOSSBRAIN_MEMBER}{missing[0]}")
            files = []
            for f in BOSSBRAIN_FILES:
                dest = workdir / f
                with z.open(BOSSBRAIN_MEMBER + f) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                files.append(dest)
    elif source.is_file():
        raise ValueError(f"{source} is neither a bossbrain wheel (.whl zip) nor a folder with "
                         f"{', '.join(BOSSBRAIN_FILES)}")
    else:
        raise FileNotFoundError(source)
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(2)
        if head[:1] != b"\x80":
            raise ValueError(f"{f} is not a pickle file (first bytes {head!r})")
    return files


def _find_or_download_wheel(cache: Path, runner=subprocess.run) -> Path:
    found = sorted(cache.glob(f"bossbrain-{BOSSBRAIN_VERSION}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    runner([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            f"bossbrain=={BOSSBRAIN_VERSION}", "-d", str(cache)], check=True)
    found = sorted(cache.glob(f"bossbrain-{BOSSBRAIN_VERSION}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download left no bossbrain wheel in {cache}")
    return found[0]


def convert_bossbrain(source=None, output=None, wmin: float = 3500.0, wmax: float = 7600.0, loader_dir=None,
                      runner=subprocess.run, log=print) -> Path:
    """Convert the bossbrain pickles to our plain npz (cropped to [wmin, wmax] air Angstrom) and return its path.

    ``source``: a bossbrain wheel or a folder with the three pickles; None = the wheel in ``default_cache_dir()``,
    downloaded with ``pip download`` if absent. ``loader_dir``: a folder where ``theborg``, ``dill`` and
    ``dlnpyutils`` are importable (else they are ``pip install --no-deps --target``-ed into a temporary folder;
    never into the current environment). The unpickling runs in a subprocess."""
    from ..data.real import default_cache_dir

    output = Path(output) if output is not None else default_emulator_path()
    with tempfile.TemporaryDirectory(prefix="bossbrain_") as tmp:
        tmp = Path(tmp)
        src = Path(source) if source is not None else _find_or_download_wheel(default_cache_dir(), runner)
        pickles = _bossbrain_pickles(src, tmp)  # validates before anything is installed
        if loader_dir is None:
            loader_dir = tmp / "loader"
            log(f"installing {' '.join(LOADER_PACKAGES)} into {loader_dir} (temporary)")
            runner([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(loader_dir),
                    *LOADER_PACKAGES], check=True)
        raw = tmp / "raw.npz"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(loader_dir), os.environ.get("PYTHONPATH", "")]))
        log(f"unpickling {len(pickles)} emulators from {src}")
        subprocess.run([sys.executable, "-c", _UNPICKLE, str(raw), *map(str, pickles)], check=True, env=env)
        with np.load(raw, allow_pickle=False) as z:
            r = {k: z[k] for k in z.files}
    k = len(BOSSBRAIN_FILES)
    names = [tuple(r[f"label_names_{i}"]) for i in range(k)]
    if any(n != LABEL_NAMES for n in names):
        raise ValueError(f"unexpected bossbrain labels {names[0]}")
    slopes = np.concatenate([r[f"negative_slope_{i}"] for i in range(k)])
    if not np.allclose(slopes, 0.01):
        raise ValueError(f"unexpected LeakyReLU slopes {slopes}")
    p_full = r["W2_0"].shape[0]
    wave = 3500.0 + 0.5 * np.arange(p_full)
    keep = (wave >= wmin) & (wave <= wmax)
    arrays = {"format": np.array(FORMAT), "wave_air": wave[keep], "teff_edges": np.array(TEFF_EDGES),
              "label_names": np.array(LABEL_NAMES),
              "x_min": np.stack([r[f"x_min_{i}"] for i in range(k)]),
              "x_max": np.stack([r[f"x_max_{i}"] for i in range(k)]),
              "training_labels_min": np.stack([r[f"training_labels_min_{i}"] for i in range(k)]),
              "training_labels_max": np.stack([r[f"training_labels_max_{i}"] for i in range(k)])}
    for j in range(3):
        arrays[f"W{j}"] = np.stack([r[f"W{j}_{i}"] for i in range(k)]).astype(np.float32)
        arrays[f"b{j}"] = np.stack([r[f"b{j}_{i}"] for i in range(k)]).astype(np.float32)
    arrays["W2"], arrays["b2"] = arrays["W2"][:, keep], arrays["b2"][:, keep]
    note = (f"bossbrain {BOSSBRAIN_VERSION} data/{{{','.join(BOSSBRAIN_FILES)}}} (theborg MultiEmulatorModel "
            f"22->300->300->{p_full}, LeakyReLU 0.01), cropped to {wmin:g}-{wmax:g} A air at 0.5 A. "
            "y = W2 @ lrelu(W1 @ lrelu(W0 @ s + b0) + b1) + b2, s = (labels - x_min) / (x_max - x_min) - 0.5. "
            "Network m for Teff: m = searchsorted(teff_edges, teff, 'right'). Continuum-normalised flux.")
    out = save_optical_emulator(output, arrays, note)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {int(keep.sum())} px)")
    return out


# ---------------------------------------------------------------------------------------------------- labels
def sample_optical_labels(n: int, seed: int = 0, teff=(3500.0, 6000.0), logg=(0.0, 3.5), mh=(-2.5, 0.5),
                          alpha_poor: float = 0.3, abundance_sigma: float = 0.1,
                          abundance_offsets: dict | None = None, giant_branch: dict | None = None) -> np.ndarray:
    """(n, 22) labels: Teff, logg, [M/H] uniform in their boxes; [X/M] of O Mg Si Ca Ti on a Galactic-like
    alpha trend (``alpha_poor`` below [M/H] = -1, 0 above 0, linear between) plus N(0, ``abundance_sigma``); every
    other [X/M] N(0, ``abundance_sigma``); all clipped to +-0.6. ``abundance_offsets`` ({label name: dex}, names
    as in ``LABEL_NAMES``, e.g. ``{"nm": 0.5}``) shifts an [X/M] mean: giants' nitrogen is raised by the first
    dredge-up (benchmarks/miles_emulator_fit.py measures it on MILES giants).

    ``giant_branch`` (``{"teff_sigma": K, "box_fraction": f}``) puts Teff on the red giant branch instead: all but
    a fraction f of the rows get Teff = the APOGEE DR17 RGB relation at their logg and [M/H]
    (`spectrafm_hf.synth.priors.LabelPrior.rgb_teff`) + N(0, teff_sigma), their Teff and logg redrawn together
    until inside the box ([M/H] and the abundances unchanged). Where a spectrum cannot tell Teff, logg and [M/H]
    apart well, the label prior decides where along that direction a trained network answers; uniform boxes put
    weight on giants no isochrone has."""
    offsets = dict(abundance_offsets or {})
    unknown = sorted(set(offsets) - set(LABEL_NAMES[3:]))
    if unknown:
        raise ValueError(f"abundance_offsets: unknown [X/M] label(s) {unknown}; known: {list(LABEL_NAMES[3:])}")
    branch = dict(giant_branch or {})
    if giant_branch is not None:
        unknown = sorted(set(branch) - {"teff_sigma", "box_fraction"})
        sigma, fraction = float(branch.get("teff_sigma", 0.0)), float(branch.get("box_fraction", 0.0))
        if unknown or not sigma > 0 or not 0 <= fraction < 1:
            raise ValueError(f"giant_branch needs teff_sigma > 0 (K) and 0 <= box_fraction < 1, got {giant_branch}")
    rng = np.random.default_rng(seed)
    out = np.zeros((n, len(LABEL_NAMES)))
    out[:, 0] = rng.uniform(*teff, n)
    out[:, 1] = rng.uniform(*logg, n)
    out[:, 2] = rng.uniform(*mh, n)
    alpha = alpha_poor * np.clip(-out[:, 2], 0.0, 1.0)
    for j, name in enumerate(LABEL_NAMES[3:], start=3):
        base = (alpha if name in ALPHA_LABELS else 0.0) + float(offsets.get(name, 0.0))
        out[:, j] = np.clip(base + rng.normal(0.0, abundance_sigma, n), -0.6, 0.6)
    if branch:  # drawn after everything else, so the box's draws stay the same for every other row and label
        out[:, :2] = _giant_branch_teff_logg(np.random.default_rng([seed, 1]), out, teff, logg,
                                             float(branch["teff_sigma"]), float(branch.get("box_fraction", 0.0)))
    return out


def _giant_branch_teff_logg(rng, labels, teff, logg, teff_sigma: float, box_fraction: float) -> np.ndarray:
    """(n, 2) Teff, logg: ``labels``'s own for a fraction ``box_fraction`` of the rows, the rest on the RGB
    relation at their [M/H] (see `sample_optical_labels`)."""
    from .priors import DEFAULT_PRIOR

    out = labels[:, :2].copy()
    todo = np.flatnonzero(rng.random(len(labels)) >= box_fraction)
    for _ in range(1000):
        g = rng.uniform(*logg, todo.size)
        t = DEFAULT_PRIOR.rgb_teff_at(g, labels[todo, 2]) + rng.normal(0, teff_sigma, todo.size)
        ok = (t >= teff[0]) & (t <= teff[1])
        out[todo[ok], 0], out[todo[ok], 1] = t[ok], g[ok]
        todo = todo[~ok]
        if not todo.size:
            return out
    raise ValueError(f"giant_branch: no Teff in {teff} K for {todo.size} rows after 1000 draws")


# ---------------------------------------------------------------------------------------------------- degrading
def degrade(flux, wave_air, target_wave_vacuum, fwhm: float = 2.5, model_fwhm: float = 1.2, snr: float | None = 100.0,
            seed: int = 0) -> np.ndarray:
    """Broaden (n, p) model flux on an even air grid to a Gaussian of total FWHM ``fwhm`` (kernel
    sqrt(fwhm**2 - model_fwhm**2)), move it to vacuum, resample linearly onto ``target_wave_vacuum`` and add
    Gaussian noise of sigma flux / snr (none if ``snr`` is None)."""
    from scipy.ndimage import gaussian_filter1d

    from ..spectrum import air_to_vacuum

    flux = np.atleast_2d(np.asarray(flux, np.float32))
    wave_air = np.asarray(wave_air, np.float64)
    step = float(np.median(np.diff(wave_air)))
    if not np.allclose(np.diff(wave_air), step, rtol=1e-6, atol=1e-9):
        raise ValueError("degrade needs an evenly spaced model grid")
    kernel = np.sqrt(max(fwhm ** 2 - model_fwhm ** 2, 0.0)) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    if kernel > 0:
        flux = gaussian_filter1d(flux, kernel / step, axis=1, mode="nearest")
    wv = air_to_vacuum(wave_air)
    t = np.asarray(target_wave_vacuum, np.float64)
    if t.min() < wv[0] or t.max() > wv[-1]:
        raise ValueError(f"target grid {t.min():.1f}-{t.max():.1f} A lies outside the model's {wv[0]:.1f}-"
                         f"{wv[-1]:.1f} A (vacuum)")
    j = np.clip(np.searchsorted(wv, t) - 1, 0, wv.size - 2)
    f = ((t - wv[j]) / (wv[j + 1] - wv[j])).astype(np.float32)
    out = flux[:, j] * (1 - f) + flux[:, j + 1] * f
    if snr:
        rng = np.random.default_rng(seed)
        out = out + rng.standard_normal(out.shape).astype(np.float32) * np.abs(out) / float(snr)
    return out.astype(np.float32)


def pseudo_continuum_normalize(flux, good=None, window: int = 151, percentile: float = 90.0):
    """Divide each row of ``flux`` (n, p) by a running ``percentile`` over ``window`` pixels, smoothed by a running
    mean of the same width (only ``good`` pixels enter; the continuum is interpolated across the others). Returns
    (normalised flux, continuum); rows with no good pixel are NaN."""
    from scipy.ndimage import percentile_filter, uniform_filter1d

    flux = np.atleast_2d(np.asarray(flux, np.float64))
    n, p = flux.shape
    good = np.isfinite(flux) if good is None else (np.asarray(good, bool) & np.isfinite(flux))
    good = np.broadcast_to(good, flux.shape)
    w = max(int(window) | 1, 1)
    cont = np.full(flux.shape, np.nan)
    full = good.all(axis=1)
    if full.any():
        c = percentile_filter(flux[full], percentile, size=(1, w), mode="nearest")
        cont[full] = uniform_filter1d(c, size=w, axis=1, mode="nearest")
    for i in np.flatnonzero(~full):
        idx = np.flatnonzero(good[i])
        if idx.size == 0:
            continue
        wi = max(int(min(w, idx.size)) | 1, 1)
        c = percentile_filter(flux[i, idx], percentile, size=wi, mode="nearest")
        c = uniform_filter1d(c, size=wi, mode="nearest")
        cont[i] = np.interp(np.arange(p), idx, c)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(cont > 0, flux / cont, np.nan)
    return out.astype(np.float32), cont


# ---------------------------------------------------------------------------------------------------- datasets
def synthetic_miles_arrays(n: int, target_wave_vacuum, emulator: OpticalEmulator | None = None, seed: int = 0,
                           snr: float | None = 100.0, fwhm: float = 2.5, model_fwhm: float = 1.2,
                           batch: int = 1000, normalize: dict | None = None, **label_kw):
    """(labels (n, 22), normalised flux (n, len(target))): sampled labels -> emulator -> `degrade` ->
    `pseudo_continuum_normalize` (``normalize``: its keyword arguments)."""
    em = emulator if emulator is not None else load_optical_emulator()
    labels = sample_optical_labels(n, seed=seed, **label_kw)
    out = np.empty((n, len(target_wave_vacuum)), np.float32)
    for i in range(0, n, batch):
        raw = em(labels[i:i + batch])
        deg = degrade(raw, em.wave_air, target_wave_vacuum, fwhm=fwhm, model_fwhm=model_fwhm, snr=snr,
                      seed=seed * 100003 + i)
        out[i:i + batch] = pseudo_continuum_normalize(deg, **(normalize or {}))[0]
    return labels, out


def synthetic_miles_dataset(n: int, target_wave_vacuum, emulator: OpticalEmulator | None = None, seed: int = 0,
                            label_names=("TEFF", "LOGG", "FE_H"), instrument: str = "miles_synthetic",
                            lsf_sigma: float | None = 2.5 / 2.3548, **kwargs):
    """A `datasets.Dataset` in the package schema (``label_names`` columns; FE_H is the emulator's [M/H],
    O_FE / MG_FE its mean alpha [X/M] - none is Fe-relative in bossbrain, so [X/M] is used as [X/Fe]); ids
    ``syn{seed}-{i}``. Extra keyword arguments go to `synthetic_miles_arrays`."""
    import datasets

    from ..data.schema import arrays_to_table, features

    labels, flux = synthetic_miles_arrays(n, target_wave_vacuum, emulator, seed=seed, **kwargs)
    src = {"TEFF": labels[:, 0], "LOGG": labels[:, 1], "FE_H": labels[:, 2],
           "O_FE": labels[:, LABEL_NAMES.index("om")], "MG_FE": labels[:, LABEL_NAMES.index("mgm")]}
    names = list(label_names)
    values = np.stack([src.get(nm, np.full(n, np.nan)) for nm in names], axis=1)
    table = arrays_to_table(object_id=[f"syn{seed}-{i}" for i in range(n)], instrument=instrument,
                            wavelength=np.asarray(target_wave_vacuum, np.float64), flux=flux, labels=values,
                            label_names=names, lsf_sigma=lsf_sigma)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features(names)))
