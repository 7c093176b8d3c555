"""`SpectraFMProcessor`: `Spectrum` objects -> model tensors, and normalised model outputs -> physical labels.

Saved as ``preprocessor_config.json`` beside the weights. It owns everything between a file and the network:

- deciding whether a spectrum's flux is already continuum-normalised (`prepare`): first the metadata (the reader's
  ``meta["normalized"]``, then the flux unit ``meta["flux_unit"]`` / ``BUNIT``: a physical flux unit means raw), and
  only when neither says, a guess (median near 1 AND a continuum fit near 1); raw flux is divided by a continuum with
  the method of the training data (``continuum``: per-chip polynomial on the instrument's continuum pixels), or the
  generic Chebyshev fit of `spectrafm_hf.instruments.normalize_continuum` for spectra off that grid. The decision
  is recorded as ``meta["normalization"] = "<action>:<source>"`` (the prediction table's ``normalization`` column);
- flux normalisation, either
  * ``"global"`` (grid-free, any instrument): ``x = (flux / m - flux_center) / flux_scale`` with ``m`` = the
    spectrum's median when ``divide_by_median`` (flux-calibrated spectra) and 1 otherwise (continuum-normalised), or
  * ``"per_pixel"`` (the paper's; needed by converted checkpoints): each pixel of a reference grid has its own
    median/MAD-std; pixels not on that grid cannot be normalised and are masked;
- optionally ``flux_softening`` s: normalised flux compressed as ``s * asinh(x / s)`` (linear within ~s, logarithmic
  beyond, so far-out pixels such as the red end of cool stars' Gaia XP spectra stay readable instead of clipped);
- the +-``clip_sigma`` clip (clipped pixels are missing, as in the paper);
- the missing-pixel mask (one rule: mask & finite flux & ivar > 0, see `Spectrum.good`);
- pixel subsets of ``context_length`` (random for training, seeded for reproducible inference, and covering
  sets of subsets for spectra longer than the context), by one of two rules (``pixel_subset_rule``): ``"random"``
  pixels anywhere, or ``"interleaved"``: every k-th usable pixel from one of its k phases (k = the fewest subsets
  that cover the spectrum), for grids that oversample their information, so each subset spans the spectrum evenly
  and inference reads all k phases (training rows that read a random window keep the random rule);
- label scaling: ``(label - center) / scale`` and back, with ``sigma = exp(log_variance / 2) * scale``.

Remote code: saved folders carry this file and ``spectrum.py`` beside the weights (``auto_map`` in
preprocessor_config.json), so ``AutoFeatureExtractor.from_pretrained(folder_or_hub_id, trust_remote_code=True)``
works where ``spectrafm_hf`` is not installed. Both files import only numpy/torch/transformers and each other; the
continuum fits of raw flux need the package's instrument grids and templates (`_package_module`), so without the
package they raise an ImportError saying to install it, while flux marked continuum-normalised
(``meta["normalized"] = True`` or a normalised BUNIT) works as with the package.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from typing import Sequence

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin

from .spectrum import Spectrum, SpectrumError

__all__ = ["SpectraFMProcessor", "spectrum_snr", "line_autocorrelation"]

# Flux units (BUNIT, lower case) that mean the flux is NOT continuum-normalised, and words that mean it is.
_RAW_UNIT_WORDS = ("erg", "jy", "jansky", "w/m", "w m", "watt", "count", "adu", "electron", "e-/", "photon", "cgs",
                   "flam", "fnu")
_NORMALIZED_UNIT_WORDS = ("normali", "relative", "continuum")


def unit_says_normalized(unit) -> bool | None:
    """True / False when a flux unit string (FITS BUNIT) says normalised / physical flux, else None (unknown,
    empty or dimensionless: the product decides)."""
    if unit is None:
        return None
    u = str(unit).strip().lower()
    if any(w in u for w in _NORMALIZED_UNIT_WORDS):
        return True
    if any(w in u for w in _RAW_UNIT_WORDS):
        return False
    return None


def _normalized_from_metadata(meta):
    """(normalized, source) from a spectrum's metadata, or (None, None) when only a guess could tell."""
    flag = meta.get("normalized")
    if flag is not None and meta.get("normalized_from") != "guess":
        return bool(flag), "metadata"
    by_unit = unit_says_normalized(meta.get("flux_unit") or meta.get("BUNIT"))
    if by_unit is not None:
        return by_unit, "flux_unit"
    return None, None


def _package_module(name: str):
    """``spectrafm_hf.<name>``: the package's instrument grids, continuum templates and fits. Imported by name, not
    relatively, so that the remote-code copy of this file stays self-contained (transformers fetches every
    relatively imported file from the repo) and says what to do when the package is missing."""
    try:
        return importlib.import_module(f"spectrafm_hf.{name}")
    except ImportError as e:
        if (e.name or "").split(".")[0] != "spectrafm_hf":
            raise
        raise ImportError(
            "fitting a continuum (raw flux, or flux whose metadata does not say it is continuum-normalised) needs the "
            "spectrafm_hf package: pip install spectrafm_hf. Without it, give continuum-normalised flux and say so "
            "(Spectrum(..., meta={'normalized': True}))") from None


def _as_spectrum(obj):
    """A `Spectrum`: this module's, one with the same fields from another copy of this module (the package's, when
    this is the remote-code copy, or the reverse), or built from a mapping of its arguments
    (``{"wavelength": ..., "flux": ..., "meta": {"normalized": True}}``)."""
    if isinstance(obj, Spectrum) or all(hasattr(obj, a) for a in ("wavelength", "flux", "ivar", "good", "meta")):
        return obj
    if isinstance(obj, Mapping):
        return Spectrum(**obj)
    raise TypeError(f"expected a Spectrum (or a dict of its arguments), got {type(obj).__name__}")


def _is_one_spectrum(obj) -> bool:
    return isinstance(obj, (Spectrum, Mapping)) or hasattr(obj, "good")


def _with_meta(spectrum, **values):
    """A shallow copy of the spectrum with extra meta (the caller's object is never changed)."""
    import copy

    out = copy.copy(spectrum)
    out.meta = dict(spectrum.meta, **values)
    return out


def _continuum_pixel_fit(spectrum, cfg):
    """The training data's continuum (`synth.realism.renormalize_continuum`) for a spectrum on (a superset of) the
    instrument grid: per chip, an ivar-weighted Legendre polynomial of ``degree`` in grid-pixel coordinate fitted
    to the usable continuum pixels; NaN outside the chips. None when under half the usable pixels lie on the grid."""
    spec = _package_module("synth").get_instrument(cfg.get("instrument", "apogee"))
    grid, cmask = spec.wavelength, _package_module("synth.realism").load_templates(spec).continuum_mask
    degree = int(cfg.get("degree", spec.realism.continuum_degree))
    wl, good = spectrum.wavelength, spectrum.good
    j = np.clip(np.searchsorted(grid, wl), 1, len(grid) - 1)
    nearest = np.where(np.abs(wl - grid[j - 1]) <= np.abs(grid[j] - wl), j - 1, j)
    spacing = np.diff(grid)[np.clip(nearest, 0, len(grid) - 2)]
    on_grid = np.abs(wl - grid[nearest]) <= 0.01 * spacing  # the same pixels (apStar holds the grid exactly)
    if not good.any() or on_grid[good].mean() < 0.5:
        return None
    pos = np.interp(wl, grid, np.arange(len(grid), dtype=np.float64))  # fractional grid pixel
    w_all = np.ones(wl.size) if spectrum.ivar is None else spectrum.ivar
    cont = np.full(wl.size, np.nan)
    for a, b in spec.chips:
        inside = (wl >= grid[a]) & (wl <= grid[b - 1])
        fit = inside & good & on_grid & cmask[nearest] & (w_all > 0)
        if fit.sum() <= 4 * (degree + 1):  # as the training fit: too few continuum pixels, no continuum
            continue
        x = -1.0 + 2.0 * (pos - a) / max(b - 1 - a, 1)
        X = np.polynomial.legendre.legvander(x, degree)
        w = w_all[fit] / w_all[fit].max()
        coef = np.linalg.lstsq(X[fit] * np.sqrt(w)[:, None], spectrum.flux[fit] * np.sqrt(w), rcond=None)[0]
        cont[inside] = X[inside] @ coef
    return cont


def spectrum_snr(spectrum) -> float:
    """Median S/N per pixel, ``flux * sqrt(ivar)`` over the usable pixels (NaN without ivar)."""
    if spectrum.ivar is None or not spectrum.good.any():
        return float("nan")
    g = spectrum.good
    return float(np.median(np.abs(spectrum.flux[g]) * np.sqrt(spectrum.ivar[g])))


def line_autocorrelation(spectrum) -> tuple[float, int]:
    """(lag-1 autocorrelation of the flux deviations from their median over neighbouring usable pixels, number of
    pairs). Absorption lines span several pixels (> 0); white noise gives 0 +- 1/sqrt(n_pairs); a flat spectrum NaN."""
    g = spectrum.good
    pair = g[:-1] & g[1:]
    n = int(pair.sum())
    if n < 2:
        return float("nan"), n
    d = spectrum.flux - np.median(spectrum.flux[g])
    a, b = d[:-1][pair], d[1:][pair]
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return (float(np.sum(a * b) / denom) if denom > 0 else float("nan")), n


def _mad_std(x, axis=None):
    """Robust standard deviation: 1.4826 * median(|x - median(x)|), ignoring NaN (astropy's mad_std)."""
    med = np.nanmedian(x, axis=axis, keepdims=True)
    dev = x - med
    np.abs(dev, out=dev)  # in place: one temporary the size of x, not two
    return 1.482602218505602 * np.nanmedian(dev, axis=axis)


def check_probe(name: str, probe: dict, hidden_size: int | None = None) -> dict:
    """A stored linear probe (`spectrafm_hf.linear_probe`), checked: every field present and finite, the lengths
    consistent (``inputs``: the model labels whose predictions follow the ``hidden_size`` embedding values among the
    features, after their queries' decoder states when ``features`` is ``"embedding+queries"``), ``method``
    ``"ridge"`` (the default, for probes saved before it was recorded) or ``"generative"``, ``features``
    ``"embedding"`` (the default, likewise) or ``"embedding+queries"``."""
    keys = ("inputs", "weights", "bias", "feature_mean", "feature_scale", "alpha", "sigma", "n_fit")
    missing = [k for k in keys if k not in probe]
    if missing:
        raise ValueError(f"linear_probes[{name!r}] lacks {missing}")
    out = {"inputs": [str(v) for v in probe["inputs"]]}
    for key in ("weights", "feature_mean", "feature_scale"):
        out[key] = [float(v) for v in probe[key]]
    for key in ("bias", "alpha", "sigma"):
        out[key] = float(probe[key])
    out["n_fit"] = int(probe["n_fit"])
    out["method"] = str(probe.get("method", "ridge"))  # how the line was fitted; both are applied alike
    if out["method"] not in ("ridge", "generative"):
        raise ValueError(f"linear_probes[{name!r}]: method must be 'ridge' or 'generative', got {out['method']!r}")
    out["features"] = str(probe.get("features", "embedding"))  # "embedding" for probes saved before it was recorded
    if out["features"] not in ("embedding", "embedding+queries"):
        raise ValueError(f"linear_probes[{name!r}]: features must be 'embedding' or 'embedding+queries', got "
                         f"{out['features']!r}")
    p = len(out["weights"])
    numbers = np.array(out["weights"] + out["feature_mean"] + out["feature_scale"] + [out["bias"], out["sigma"]])
    if len(out["feature_mean"]) != p or len(out["feature_scale"]) != p or not np.isfinite(numbers).all():
        raise ValueError(f"linear_probes[{name!r}]: weights, feature_mean and feature_scale need one finite value per "
                         f"feature ({p}, {len(out['feature_mean'])}, {len(out['feature_scale'])})")
    states = len(out["inputs"]) if out["features"] == "embedding+queries" else 0
    if hidden_size is not None and p != hidden_size * (1 + states) + len(out["inputs"]):
        raise ValueError(f"linear_probes[{name!r}] reads {p} features; this model gives {hidden_size} embedding "
                         f"values{f' + {states} x {hidden_size} query states' if states else ''} + "
                         f"{len(out['inputs'])} label predictions")
    if not (out["sigma"] > 0 and min(out["feature_scale"], default=1.0) > 0):
        raise ValueError(f"linear_probes[{name!r}]: sigma and feature_scale must be positive")
    return out


class SpectraFMProcessor(FeatureExtractionMixin):
    r"""
    Prepares spectra for [`SpectraFMModel`] and turns its outputs into physical labels.

    Args:
        label_names (`list[str]`): labels the scalers below refer to (usually ``config.label_names``).
        label_centers (`list[float]`): per-label centre (median of the training labels).
        label_scales (`list[float]`): per-label scale (MAD-std of the training labels).
        flux_normalization (`str`, defaults to `"global"`): ``"global"`` or ``"per_pixel"`` (see module doc).
        flux_center (`float`, defaults to 1.0), flux_scale (`float`, defaults to 0.1): the global normalisation.
        divide_by_median (`bool`, defaults to `False`): divide each spectrum by its median first (for spectra that
            are not continuum-normalised, e.g. flux-calibrated Gaia XP).
        reference_wavelength, pixel_centers, pixel_scales (`list[float]`, *optional*): the per-pixel normalisation
            (vacuum Angstrom grid and its per-pixel median / MAD-std).
        reference_tolerance (`float`, defaults to 0.25): a pixel matches a reference pixel when within this
            fraction of the local reference spacing.
        flux_softening (`float`, *optional*): compress normalised flux as ``s * asinh(x / s)`` before the clip
            (None = off, the paper's linear flux).
        clip_sigma (`float`, defaults to 10.0): normalised values beyond +-clip_sigma are treated as missing.
        context_length (`int`, defaults to 512): pixels per model call.
        pixel_subset_rule (`str`, defaults to `"random"`): how a spectrum longer than ``context_length`` is cut into
            subsets (see module doc): ``"random"`` or ``"interleaved"``.
        scalar_centers, scalar_scales (`dict[str, float]`, *optional*): scalers of non-spectra inputs that are
            not labels (photometry...).
        wavelength_coverage (`list[[float, float]]`, *optional*): vacuum Angstrom ranges the model was trained on;
            the pipeline reports the fraction of each spectrum's pixels inside them.
        label_ranges (`dict[str, [float, float]]`, *optional*): the 0.5-99.5 percentile range of each training
            label; predictions outside are flagged as extrapolations.
        continuum (`dict`, *optional*): how the training data were continuum-normalised, applied to raw flux:
            ``{"method": "continuum_pixels", "instrument": "apogee", "degree": 2}`` (ivar-weighted Legendre polynomial
            per chip on the instrument's continuum pixels, as `spectrafm_hf.synth.realism.renormalize_continuum`).
            None: the generic Chebyshev pseudo-continuum.
        renormalize_coverage (`float`, *optional*): flux that arrives already continuum-normalised (by another
            pipeline, or against the true continuum) is divided again by the ``continuum`` fit when the spectrum
            covers at least this fraction of the instrument grid, so the model reads every full spectrum in its
            training data's normalisation (the fit is ~1 for such data); windows are taken as given. None: never.
        snr_range (`[float, float]`, *optional*): the S/N range of the training spectra (`spectrum_snr`: median of
            ``flux * sqrt(ivar)`` over usable pixels of the normalised flux); spectra below it get the ``low_snr`` flag
            and an uncertainty inflated for their noise (`SpectraFMPipeline.predict`).
        min_pixels (`int`, defaults to 32): fewer usable pixels than this gets the ``too_few_pixels`` flag.
        noise_test_sigma (`float`, defaults to 3.0): a spectrum whose lag-1 autocorrelation of flux deviations is
            below ``noise_test_sigma / sqrt(n_pairs)`` (consistent with white noise) gets the ``noise_only`` flag.
        noise_draws (`int`, defaults to 0): Monte-Carlo noise draws for spectra below ``snr_range`` (each costs one
            more prediction of that spectrum; on the real dwarf they add ~1 % to ``_err`` beyond the S/N scaling,
            benchmarks/dwarf_snr.py, so they are opt-in).
        embedding_mean, embedding_whitening, embedding_threshold (*optional*): out-of-distribution test of the
            encoder embedding (`SpectraFMPipeline.embed`): Mahalanobis distance ``|W (e - mean)|`` with ``W`` the
            whitening matrix of in-domain embeddings; above ``embedding_threshold`` (calibrated so ~1 % of in-domain
            test spectra exceed it) the ``out_of_distribution`` flag is set. See benchmarks/embedding_stats.py.
        uncertainty_scale (`dict[str, float]`, *optional*): post-hoc recalibration of the model's sigma per label,
            fitted on validation spectra (`fit_uncertainty_scale`) so that 68 % of ``|prediction - truth|`` fall
            within ``scale * sigma``; `SpectraFMPipeline.predict` multiplies ``_err`` by it. Labels not listed: 1.
        uncertainty_scale_subsets (`float`, defaults to 1): the median number of pixel subsets per spectrum of the
            spectra ``uncertainty_scale`` was fitted on. The model's own sigma is calibrated for ONE subset (its
            training); a spectrum read as ``k`` subsets gets ``scale ** min(1, log k / log k_fit)``: the full factor
            for spectra as long as the fitted ones, none for a single window, log-interpolated between.
        label_affine (`dict[str, [float, float]]`, *optional*): post-hoc per-label affine correction of the predicted
            mean, ``slope * mean + intercept`` in physical units (``_err`` times ``|slope|``), fitted on labelled
            spectra of a new domain (`fit_label_affine`, `SpectraFMPipeline.calibrate_labels`): a few-shot transfer
            that moves only the label scale and zero point. Labels not listed: unchanged.
        linear_probes (`dict[str, dict]`, *optional*): labels read as a straight line from the frozen model's
            features, the embedding and its predictions of the labels named in ``inputs`` (`spectrafm_hf.linear_probe`,
            `SpectraFMPipeline.fit_linear_probe`); `SpectraFMPipeline.predict` returns them as labels, with ``_err``
            the probe's leave-one-out scatter. A probe of a label the model predicts replaces the model's answer.
            ``method`` says how the line was fitted (``"ridge"``, or ``"generative"``: the features modelled as
            linear in the label and inverted); both are applied alike.

    Example:
        >>> import numpy as np
        >>> from spectrafm_hf import SpectraFMProcessor, Spectrum
        >>> proc = SpectraFMProcessor(label_names=["FE_H"], label_centers=[-0.16], label_scales=[0.29])
        >>> s = Spectrum(wavelength=np.linspace(15200, 16900, 2000), flux=np.full(2000, 0.95))
        >>> batch = proc([s], seed=0)
        >>> tuple(batch["flux"].shape), bool(batch["observed_mask"].all())
        ((1, 512), True)
    """

    model_input_names = ["flux", "wavelength", "observed_mask"]

    def __init__(
        self,
        label_names: Sequence[str] = ("TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"),
        label_centers: Sequence[float] | None = None,
        label_scales: Sequence[float] | None = None,
        flux_normalization: str = "global",
        flux_center: float = 1.0,
        flux_scale: float = 0.1,
        divide_by_median: bool = False,
        reference_wavelength: Sequence[float] | None = None,
        pixel_centers: Sequence[float] | None = None,
        pixel_scales: Sequence[float] | None = None,
        reference_tolerance: float = 0.25,
        flux_softening: float | None = None,
        clip_sigma: float = 10.0,
        context_length: int = 512,
        pixel_subset_rule: str = "random",
        scalar_centers: dict | None = None,
        scalar_scales: dict | None = None,
        wavelength_coverage: Sequence[Sequence[float]] | None = None,
        label_ranges: dict | None = None,
        continuum: dict | None = None,
        snr_range: Sequence[float] | None = None,
        renormalize_coverage: float | None = None,
        min_pixels: int = 32,
        noise_test_sigma: float = 3.0,
        noise_draws: int = 0,
        embedding_mean: Sequence[float] | None = None,
        embedding_whitening: Sequence[Sequence[float]] | None = None,
        embedding_threshold: float | None = None,
        uncertainty_scale: dict | None = None,
        uncertainty_scale_subsets: float = 1.0,
        label_affine: dict | None = None,
        linear_probes: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.label_names = list(label_names)
        n = len(self.label_names)
        self.label_centers = [0.0] * n if label_centers is None else [float(v) for v in label_centers]
        self.label_scales = [1.0] * n if label_scales is None else [float(v) for v in label_scales]
        if len(self.label_centers) != n or len(self.label_scales) != n:
            raise ValueError(f"label_centers/label_scales need one value per label ({n}: {self.label_names})")
        if any(not s > 0 for s in self.label_scales):
            raise ValueError(f"label_scales must be positive, got {self.label_scales}")
        if flux_normalization not in ("global", "per_pixel"):
            raise ValueError(f"flux_normalization must be 'global' or 'per_pixel', got {flux_normalization!r}")
        self.flux_normalization = flux_normalization
        self.flux_center, self.flux_scale = float(flux_center), float(flux_scale)
        if not self.flux_scale > 0:
            raise ValueError(f"flux_scale must be positive, got {flux_scale}")
        self.divide_by_median = bool(divide_by_median)
        self.reference_wavelength = None if reference_wavelength is None else [float(v) for v in reference_wavelength]
        self.pixel_centers = None if pixel_centers is None else [float(v) for v in pixel_centers]
        self.pixel_scales = None if pixel_scales is None else [float(v) for v in pixel_scales]
        if flux_normalization == "per_pixel":
            if self.reference_wavelength is None or self.pixel_centers is None or self.pixel_scales is None:
                raise ValueError("per_pixel normalisation needs reference_wavelength, pixel_centers and pixel_scales")
            if not len(self.reference_wavelength) == len(self.pixel_centers) == len(self.pixel_scales):
                raise ValueError("reference_wavelength, pixel_centers and pixel_scales must have the same length")
            if np.any(np.diff(self.reference_wavelength) <= 0):
                raise ValueError("reference_wavelength must be strictly increasing")
        self.reference_tolerance = float(reference_tolerance)
        if flux_softening is not None and not float(flux_softening) > 0:
            raise ValueError(f"flux_softening must be positive (or None for off), got {flux_softening}")
        self.flux_softening = None if flux_softening is None else float(flux_softening)
        self.clip_sigma = float(clip_sigma)
        self.context_length = int(context_length)
        if pixel_subset_rule not in ("random", "interleaved"):
            raise ValueError(f"pixel_subset_rule must be 'random' or 'interleaved', got {pixel_subset_rule!r}")
        self.pixel_subset_rule = pixel_subset_rule
        self.scalar_centers = dict(scalar_centers or {})
        self.scalar_scales = dict(scalar_scales or {})
        self.wavelength_coverage = [[float(lo), float(hi)] for lo, hi in (wavelength_coverage or [])]
        self.label_ranges = {k: [float(v[0]), float(v[1])] for k, v in (label_ranges or {}).items()}
        self.continuum = None if continuum is None else dict(continuum)
        self.renormalize_coverage = None if renormalize_coverage is None else float(renormalize_coverage)
        if self.continuum is not None and self.continuum.get("method") != "continuum_pixels":
            raise ValueError(f"continuum method must be 'continuum_pixels', got {self.continuum.get('method')!r}")
        self.snr_range = None if snr_range is None else [float(snr_range[0]), float(snr_range[1])]
        self.min_pixels = int(min_pixels)
        self.noise_test_sigma = float(noise_test_sigma)
        self.noise_draws = int(noise_draws)
        if self.min_pixels < 1 or self.noise_draws < 0:
            raise ValueError(f"min_pixels must be >= 1 and noise_draws >= 0, got {min_pixels}, {noise_draws}")
        self.embedding_mean = None if embedding_mean is None else [float(v) for v in embedding_mean]
        self.embedding_whitening = None if embedding_whitening is None else [[float(v) for v in row]
                                                                              for row in embedding_whitening]
        self.embedding_threshold = None if embedding_threshold is None else float(embedding_threshold)
        self.uncertainty_scale = {str(k): float(v) for k, v in (uncertainty_scale or {}).items()}
        if any(not v > 0 for v in self.uncertainty_scale.values()):
            raise ValueError(f"uncertainty_scale values must be positive, got {self.uncertainty_scale}")
        self.uncertainty_scale_subsets = float(uncertainty_scale_subsets)
        if not self.uncertainty_scale_subsets >= 1:
            raise ValueError(f"uncertainty_scale_subsets must be >= 1, got {uncertainty_scale_subsets}")
        self.label_affine = {}
        for name, pair in (label_affine or {}).items():
            slope, intercept = (float(v) for v in pair)
            if not (np.isfinite(slope) and np.isfinite(intercept) and slope != 0):
                raise ValueError(f"label_affine[{name!r}] needs a finite non-zero slope and intercept, got {pair}")
            self.label_affine[str(name)] = [slope, intercept]
        self.linear_probes = {str(k): check_probe(str(k), v) for k, v in (linear_probes or {}).items()}
        self._ref_cache = None
        self._emb_cache = None

    def to_dict(self):
        out = super().to_dict()
        out.pop("_ref_cache", None)
        out.pop("_emb_cache", None)
        return out

    # ------------------------------------------------------------------ normalised or not
    def prepare(self, spectrum: Spectrum) -> Spectrum:
        """The spectrum with continuum-normalised flux when this model needs it (module doc), with
        ``meta["normalization"] = "<action>:<source>"``: action ``as_given`` / ``continuum_pixels`` / ``chebyshev``
        (raw flux divided by that continuum) / ``renormalized`` (normalised flux divided again by the training
        continuum, ``renormalize_coverage``) / ``median`` (models that divide by the median), source ``metadata``
        (the reader or the user set ``meta["normalized"]``), ``flux_unit`` (BUNIT) or ``guess``. A spectrum already
        prepared is returned unchanged."""
        spectrum = _as_spectrum(spectrum)
        if "normalization" in spectrum.meta or not spectrum.good.any():  # (normalize_arrays refuses the latter)
            return spectrum
        if self.divide_by_median:
            return _with_meta(spectrum, normalization="median:model")
        normalized, source = _normalized_from_metadata(spectrum.meta)
        if normalized is None:
            normalized, source = self._looks_normalized(spectrum), "guess"
        if normalized:
            if self._renormalizes(spectrum):
                out, method = self._divide_by_continuum(spectrum)
                if method == "continuum_pixels":
                    out.meta["normalization"] = f"renormalized:{source}"
                    return out
            return _with_meta(spectrum, normalization=f"as_given:{source}")
        out, method = self._divide_by_continuum(spectrum)
        out.meta["normalization"] = f"{method}:{source}"
        return out

    def _renormalizes(self, spectrum: Spectrum) -> bool:
        """Whether normalised flux is divided again by the training continuum (see ``renormalize_coverage``)."""
        if self.renormalize_coverage is None or self.continuum is None:
            return False
        spec = _package_module("synth").get_instrument(self.continuum.get("instrument", "apogee"))
        grid = spec.wavelength
        wl = spectrum.wavelength[spectrum.good]
        inside = (wl >= grid[0]) & (wl <= grid[-1])
        return bool(inside.sum() >= self.renormalize_coverage * grid.size)

    def _looks_normalized(self, spectrum: Spectrum) -> bool:
        """The guess, used only when no metadata says: median of the usable flux within 0.5-1.5, 90 % of it within
        0-2, and (with enough pixels to fit one) a continuum within 10 % of 1 over the chips (a spectrum divided by its
        median keeps the instrument's slopes, which a continuum-normalised one has not)."""
        f = spectrum.flux[spectrum.good]
        if f.size == 0 or not (0.5 < np.median(f) < 1.5 and np.mean((f > 0) & (f < 2)) > 0.9):
            return False
        try:
            _, cont = self._continuum(spectrum)
        except SpectrumError:
            return True  # too few pixels to tell: the median says normalised
        c = cont[np.isfinite(cont) & spectrum.good]
        return bool(c.size == 0 or np.percentile(np.abs(c - 1.0), 95) < 0.1)

    def _continuum(self, spectrum: Spectrum):
        """(method, continuum array): the training data's continuum-pixel fit on its grid, else Chebyshev."""
        if self.continuum is not None:
            cont = _continuum_pixel_fit(spectrum, self.continuum)
            if cont is not None:
                return "continuum_pixels", cont
        fit = _package_module("instruments.continuum").normalize_continuum
        return "chebyshev", fit(spectrum, force=True, return_continuum=True)[1]

    def _divide_by_continuum(self, spectrum: Spectrum):
        src = spectrum.meta.get("source") or spectrum.meta.get("object_id") or "spectrum"
        try:
            method, cont = self._continuum(spectrum)
        except SpectrumError as e:
            raise SpectrumError(f"{src}: the flux is not continuum-normalised and no continuum could be fitted "
                                f"({e})") from None
        ok = np.isfinite(cont) & (cont > 0)
        if not (ok & spectrum.good).any():
            raise SpectrumError(f"{src}: the flux is not continuum-normalised and its {spectrum.n_good} usable pixels "
                                "are too few to fit a continuum")
        safe = np.where(ok, cont, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            flux = np.where(ok, spectrum.flux / safe, np.nan)
            ivar = None if spectrum.ivar is None else np.where(ok, spectrum.ivar * safe**2, 0.0)
        meta = dict(spectrum.meta, normalized=True)
        return Spectrum(wavelength=spectrum.wavelength, flux=flux, ivar=ivar, mask=spectrum.mask & ok,
                        lsf_sigma=spectrum.lsf_sigma, instrument=spectrum.instrument, meta=meta), method

    # ------------------------------------------------------------------ reliability statistics
    def embedding_distance(self, embedding) -> np.ndarray | None:
        """Mahalanobis distance of encoder embeddings (n, hidden) to the in-domain ones, or None without stats."""
        if self.embedding_mean is None or self.embedding_whitening is None:
            return None
        if self._emb_cache is None:
            self._emb_cache = (np.asarray(self.embedding_mean), np.asarray(self.embedding_whitening))
        mean, w = self._emb_cache
        return np.linalg.norm((np.asarray(embedding, np.float64) - mean) @ w.T, axis=1)

    def sigma_scales(self, names: Sequence[str], n_subsets=None) -> np.ndarray:
        """The recalibration factor of each label in ``names`` (1 where none was fitted), (len(names),); with
        ``n_subsets`` (n,), per spectrum (n, len(names)) as described under ``uncertainty_scale_subsets``."""
        scale = np.array([self.uncertainty_scale.get(n, 1.0) for n in names], np.float64)
        if n_subsets is None:
            return scale
        k = np.maximum(np.asarray(n_subsets, np.float64), 1.0)
        power = np.ones_like(k) if self.uncertainty_scale_subsets <= 1 else np.minimum(
            1.0, np.log(k) / np.log(self.uncertainty_scale_subsets))
        return scale[None, :] ** power[:, None]

    def fit_uncertainty_scale(self, names: Sequence[str], predicted, sigma, true, true_err=None,
                              coverage: float = 0.6827, n_subsets=None) -> dict[str, float]:
        """Fit and store ``uncertainty_scale`` from validation predictions: per label, the ``ceil((n + 1) * coverage)``-th
        smallest of the n values ``|predicted - true| / sqrt(sigma^2 + true_err^2)`` (the split-conformal order
        statistic: new stars are covered at least ``coverage`` of the time on average, where a plain quantile of a few
        dozen validation stars under-covers; the catalogue error, when given, is part of the observed residual, so it
        is not blamed on the model). ``sigma`` is the model's own, uncalibrated sigma; rows with a
        NaN anywhere are skipped; ``n_subsets`` (per row) sets ``uncertainty_scale_subsets`` to its median. Returns
        the new factors; a label with fewer than 20 usable rows raises."""
        def as_2d(a):
            a = np.asarray(a, np.float64)
            return a.reshape(-1, 1) if a.ndim == 1 and len(names) == 1 else a

        predicted, sigma, true = as_2d(predicted), as_2d(sigma), as_2d(true)
        true_err = np.zeros_like(true) if true_err is None else np.nan_to_num(as_2d(true_err))
        if predicted.shape[1:] != (len(names),) or predicted.shape != sigma.shape or predicted.shape != true.shape:
            raise ValueError(f"predicted, sigma and true need shape (n, {len(names)}), got "
                             f"{predicted.shape}, {sigma.shape}, {true.shape}")
        scales = {}
        for k, name in enumerate(names):
            z = np.abs(predicted[:, k] - true[:, k]) / np.hypot(sigma[:, k], true_err[:, k])
            z = z[np.isfinite(z)]
            if z.size < 20:
                raise ValueError(f"fit_uncertainty_scale: {name} has {z.size} usable validation rows, need >= 20")
            k = min(z.size, int(np.ceil((z.size + 1) * coverage)))
            scales[name] = float(f"{np.sort(z)[k - 1]:.5g}")
        self.uncertainty_scale.update(scales)
        if n_subsets is not None:
            self.uncertainty_scale_subsets = float(max(1.0, np.median(np.asarray(n_subsets, np.float64))))
        return scales

    def apply_label_affine(self, names: Sequence[str], mean, *spreads):
        """``label_affine`` applied to predictions (n, len(names)) in physical units: ``slope * mean + intercept``
        and every spread (sigma, scatter) times ``|slope|``; labels without a correction pass through."""
        slope, intercept = np.array([self.label_affine.get(n, [1.0, 0.0]) for n in names], np.float64).reshape(-1, 2).T
        return (np.asarray(mean, np.float64) * slope + intercept,
                *(np.asarray(s, np.float64) * np.abs(slope) for s in spreads))

    def fit_label_affine(self, names: Sequence[str], predicted, true, min_rows: int = 5,
                         method: str = "direct") -> dict[str, list]:
        """Fit and store ``label_affine`` from ``predicted`` and ``true`` (both (n, len(names)), the model's
        uncorrected predictions of labelled spectra; never the test set). ``method="direct"``: least squares of
        ``true`` on ``predicted``. ``method="inverse"``: least squares of ``predicted`` on ``true`` (a calibration
        curve, ``predicted = b * true + a``), stored inverted (slope 1/b, intercept -a/b); the prediction noise does not
        flatten its slope, so a model that compresses a label's scale is stretched back, and not compressed further.
        Rows with a NaN are skipped; a label with fewer than ``min_rows`` usable rows, predictions (direct) or labels
        (inverse) without spread, or an inverse slope b <= 0, raises. Returns the new entries."""
        if method not in ("direct", "inverse"):
            raise ValueError(f"fit_label_affine: method must be 'direct' or 'inverse', got {method!r}")
        predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
        if predicted.ndim == 1 and len(names) == 1:
            predicted, true = predicted[:, None], true[:, None]
        if predicted.shape != true.shape or predicted.shape[1:] != (len(names),):
            raise ValueError(f"predicted and true need shape (n, {len(names)}), got {predicted.shape}, {true.shape}")
        fitted = {}
        for k, name in enumerate(names):
            ok = np.isfinite(predicted[:, k]) & np.isfinite(true[:, k])
            x, y = predicted[ok, k], true[ok, k]
            if x.size < min_rows:
                raise ValueError(f"fit_label_affine: {name} has {x.size} usable rows, need >= {min_rows}")
            if not np.std(x) > 0:
                raise ValueError(f"fit_label_affine: the predictions of {name} are constant; no scale to fit")
            if method == "direct":
                slope, intercept = np.polyfit(x, y, 1)
            else:
                if not np.std(y) > 0:
                    raise ValueError(f"fit_label_affine: the labels of {name} are constant; no scale to fit")
                b, a = np.polyfit(y, x, 1)
                if not b > 0:
                    raise ValueError(f"fit_label_affine: the predictions of {name} do not grow with the label "
                                     f"(calibration slope {b:.3g}); the inverse is undefined")
                slope, intercept = 1.0 / b, -a / b
            fitted[name] = [float(f"{slope:.6g}"), float(f"{intercept:.6g}")]
        self.label_affine.update(fitted)
        return fitted

    def fit_embeddings(self, embeddings, test_embeddings, quantile: float = 0.99, shrinkage: float = 1e-3):
        """Set the out-of-distribution statistics from in-domain embeddings (n, hidden): their mean and whitening
        matrix, and the threshold = the ``quantile`` of the distances of held-out in-domain ``test_embeddings``."""
        e = np.asarray(embeddings, np.float64)
        if e.ndim != 2 or e.shape[0] <= e.shape[1]:
            raise ValueError(f"fit_embeddings needs more spectra than dimensions, got {e.shape}")
        mean = e.mean(0)
        cov = np.cov(e, rowvar=False)
        cov += shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])  # well conditioned
        vals, vecs = np.linalg.eigh(cov)
        self.embedding_mean = [float(f"{v:.7g}") for v in mean]
        self.embedding_whitening = [[float(f"{v:.7g}") for v in row] for row in (vecs / np.sqrt(vals)).T]
        self._emb_cache = None
        d = self.embedding_distance(test_embeddings)
        self.embedding_threshold = float(np.quantile(d, quantile))
        return d

    # ------------------------------------------------------------------ fitting the normalisation
    def fit_flux(self, flux, wavelength=None):
        """Set the flux normalisation from training flux.

        ``global``: ``flux`` is any array of continuum-normalised (or median-divided) fluxes; centre and scale are
        their median and MAD-std. ``per_pixel``: ``flux`` is (n_spectra, n_pixels) on the grid ``wavelength``.
        """
        flux = np.asarray(flux, dtype=np.float64)
        if self.divide_by_median and flux.ndim == 2:  # as normalize_arrays does per spectrum
            flux = flux / np.nanmedian(flux, axis=1, keepdims=True)
        if self.flux_normalization == "global":
            self.flux_center = float(np.nanmedian(flux))
            self.flux_scale = float(_mad_std(flux.ravel()))
        else:
            if wavelength is None or flux.ndim != 2 or flux.shape[1] != len(wavelength):
                raise ValueError("per_pixel fit needs flux (n_spectra, n_pixels) and its wavelength grid")
            self.reference_wavelength = [float(v) for v in wavelength]
            self.pixel_centers = np.nanmedian(flux, axis=0).tolist()
            self.pixel_scales = np.maximum(_mad_std(flux, axis=0), 1e-6).tolist()
            self._ref_cache = None
        return self

    def fit_labels(self, labels, label_names=None):
        """Set label centres/scales from a training label array (n, n_labels); NaN ignored."""
        labels = np.asarray(labels, dtype=np.float64)
        if label_names is not None:
            self.label_names = list(label_names)
        if labels.ndim != 2 or labels.shape[1] != len(self.label_names):
            raise ValueError(f"labels must be (n, {len(self.label_names)}) for {self.label_names}")
        self.label_centers = np.nanmedian(labels, axis=0).tolist()
        self.label_scales = np.maximum(_mad_std(labels, axis=0), 1e-6).tolist()
        lo, hi = np.nanpercentile(labels, [0.5, 99.5], axis=0)
        self.label_ranges = {n: [float(a), float(b)] for n, a, b in zip(self.label_names, lo, hi)}
        return self

    # ------------------------------------------------------------------ one spectrum
    def normalize(self, spectrum: Spectrum):
        """Normalised flux of every pixel (after `prepare`). Returns ``(wavelength, x, good)`` (float64, float32,
        bool arrays)."""
        spectrum = self.prepare(spectrum)
        src = spectrum.meta.get("source") or spectrum.meta.get("object_id") or "spectrum"
        x, good = self.normalize_arrays(spectrum.wavelength, spectrum.flux, spectrum.good, source=src)
        return spectrum.wavelength, x, good

    def normalize_arrays(self, wavelength, flux, good, source="spectrum"):
        """`normalize` on plain arrays (the collator's fast path): ``good`` is the usable-pixel mask before
        normalisation. Returns ``(x, good)`` with clipped / off-grid pixels removed from ``good``."""
        wavelength = np.asarray(wavelength, dtype=np.float64)
        flux = np.asarray(flux, dtype=np.float64)
        good = np.asarray(good, dtype=bool).copy()
        if not good.any():
            raise SpectrumError(f"{source}: no usable pixel (all flux NaN, masked or ivar == 0)")
        if self.divide_by_median:
            med = np.median(flux[good])
            if not med > 0:
                raise SpectrumError(f"{source}: median flux {med:.3g} is not positive; cannot divide by it")
            flux = flux / med
        if self.flux_normalization == "global":
            center, scale = self.flux_center, self.flux_scale
        else:
            idx, on_grid = self._match_reference(wavelength)
            if not on_grid[good].any():
                raise SpectrumError(
                    f"{source}: no pixel lies on this model's reference wavelength grid "
                    f"({self.reference_wavelength[0]:.1f}-{self.reference_wavelength[-1]:.1f} A); "
                    "resample the spectrum onto it or use a model with global flux normalisation"
                )
            good &= on_grid
            centers, scales = self._ref_arrays()[1:]
            center, scale = centers[idx], scales[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            x = (flux - center) / scale
        if self.flux_softening:
            x = self.flux_softening * np.arcsinh(x / self.flux_softening)
        n_before = int(good.sum())
        good &= np.isfinite(x) & (np.abs(x) <= self.clip_sigma)
        if not good.any():
            med = float(np.median(flux[np.isfinite(flux)])) if np.isfinite(flux).any() else float("nan")
            raise SpectrumError(
                f"{source}: all {n_before} usable pixels lie beyond +-{self.clip_sigma:g} sigma of this model's flux "
                f"normalisation (median flux {med:.4g}); is the flux continuum-normalised? "
                "(spectrafm_hf.instruments.normalize_continuum does it)"
            )
        return np.where(good, x, np.nan).astype(np.float32), good

    def _ref_arrays(self):
        if self._ref_cache is None:
            self._ref_cache = tuple(
                np.asarray(a, dtype=np.float64)
                for a in (self.reference_wavelength, self.pixel_centers, self.pixel_scales)
            )
        return self._ref_cache

    def _match_reference(self, wavelength):
        ref = self._ref_arrays()[0]
        j = np.clip(np.searchsorted(ref, wavelength), 1, len(ref) - 1)
        left, right = ref[j - 1], ref[j]
        nearest = np.where(np.abs(wavelength - left) <= np.abs(right - wavelength), j - 1, j)
        spacing = np.diff(ref)
        local = spacing[np.clip(nearest, 0, len(spacing) - 1)]
        return nearest, np.abs(wavelength - ref[nearest]) <= self.reference_tolerance * local

    def choose_subset(self, idx: np.ndarray, rng: np.random.Generator, context_length: int | None = None):
        """One subset of the sorted usable positions ``idx``, at most ``context_length`` of them, by
        ``pixel_subset_rule``: random positions, or every k-th at a random phase."""
        n = context_length or self.context_length
        if idx.size <= n:
            return idx
        if self.pixel_subset_rule == "interleaved":
            k = math.ceil(idx.size / n)
            return idx[int(rng.integers(k))::k]
        return np.sort(rng.choice(idx, n, replace=False))

    def pixel_subsets(self, n_pixels: int, seed: int | None = 0, n_repeats: int = 1):
        """Index arrays covering ``range(n_pixels)`` with subsets of at most ``context_length``.

        ``"random"`` rule: a seeded random permutation is split into ``ceil(n / context_length)`` subsets of
        near-equal size (no tiny remainder subset); ``n_repeats`` independent permutations give more subsets.
        ``seed=None`` draws fresh. ``"interleaved"``: the k phases of every k-th pixel, once (no seed, no repeats).
        """
        k = max(1, math.ceil(n_pixels / self.context_length))
        if self.pixel_subset_rule == "interleaved":
            return [np.arange(phase, n_pixels, k) for phase in range(k)]
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n_repeats):
            perm = rng.permutation(n_pixels)
            out.extend(np.sort(part) for part in np.array_split(perm, k))
        return out

    # ------------------------------------------------------------------ batches
    def __call__(self, spectra, seed: int | None = 0, return_tensors: str = "pt"):
        """One pixel subset (at most ``context_length`` usable pixels) per spectrum, padded into a batch.

        Returns a `BatchFeature` with ``flux``, ``wavelength`` and ``observed_mask`` of shape (n_spectra, L).
        ``seed=None`` draws a fresh random subset each call (training); an int gives reproducible subsets.
        """
        if _is_one_spectrum(spectra):
            spectra = [spectra]
        rng = np.random.default_rng(seed)
        rows = []
        for s in spectra:
            wl, x, good = self.normalize(s)
            idx = self.choose_subset(np.flatnonzero(good), rng)
            rows.append((wl[idx], x[idx]))
        return self._pad(rows, return_tensors)

    def subset_batch(self, spectra, seed: int | None = 0, n_repeats: int = 1):
        """All pixel subsets of all spectra in one padded batch, for inference on spectra of any length.

        Returns ``(batch, owner, n_pixels)``: ``owner[i]`` is the index of the spectrum that row ``i`` belongs to and
        ``n_pixels[j]`` the number of usable pixels of spectrum ``j``.
        """
        if _is_one_spectrum(spectra):
            spectra = [spectra]
        rows, owner, n_pixels = [], [], []
        for j, s in enumerate(spectra):
            wl, x, good = self.normalize(s)
            idx = np.flatnonzero(good)
            n_pixels.append(idx.size)
            for part in self.pixel_subsets(idx.size, seed=seed, n_repeats=n_repeats):
                rows.append((wl[idx[part]], x[idx[part]]))
                owner.append(j)
        return self._pad(rows, "pt"), np.asarray(owner), np.asarray(n_pixels)

    @staticmethod
    def _pad(rows, return_tensors):
        length = max(1, max(len(r[0]) for r in rows))
        flux = np.full((len(rows), length), np.nan, np.float32)
        wave = np.zeros((len(rows), length), np.float32)
        mask = np.zeros((len(rows), length), np.int64)
        for i, (wl, x) in enumerate(rows):
            flux[i, : len(x)], wave[i, : len(x)], mask[i, : len(x)] = x, wl, 1
        # float32 wavelengths keep ~1e-3 A at 17000 A, well below any pixel size the encoding resolves
        return BatchFeature({"flux": flux, "wavelength": wave, "observed_mask": mask}, tensor_type=return_tensors)

    # ------------------------------------------------------------------ labels
    def _label_index(self, names):
        try:
            return [self.label_names.index(n) for n in names]
        except ValueError as e:
            raise KeyError(f"unknown label {e}; this processor knows {self.label_names}") from None

    def scale_labels(self, values, names=None, errors=None):
        """Physical labels (n, q) -> normalised; errors are divided by the scale. NaN stays NaN."""
        names = self.label_names if names is None else list(names)
        idx = self._label_index(names)
        c = np.asarray(self.label_centers)[idx]
        s = np.asarray(self.label_scales)[idx]
        out = (np.asarray(values, dtype=np.float64) - c) / s
        return out if errors is None else (out, np.asarray(errors, dtype=np.float64) / s)

    def unscale_labels(self, mean, log_variance, names=None):
        """Normalised model outputs -> physical ``(value, sigma)`` arrays of shape (n, q)."""
        names = self.label_names if names is None else list(names)
        idx = self._label_index(names)
        c = np.asarray(self.label_centers)[idx]
        s = np.asarray(self.label_scales)[idx]
        mean = mean.detach().cpu().numpy() if isinstance(mean, torch.Tensor) else np.asarray(mean)
        log_variance = (
            log_variance.detach().cpu().numpy() if isinstance(log_variance, torch.Tensor) else np.asarray(log_variance)
        )
        return mean * s + c, np.exp(0.5 * log_variance) * s

    def scale_inputs(self, name, values):
        """Normalise a non-spectra input (a label or a scalar such as a magnitude)."""
        if name in self.label_names:
            return self.scale_labels(np.asarray(values, dtype=np.float64)[:, None], [name])[:, 0]
        if name in self.scalar_centers:
            return (np.asarray(values, dtype=np.float64) - self.scalar_centers[name]) / self.scalar_scales[name]
        raise KeyError(f"no scaler for input {name!r}; known: {self.label_names + list(self.scalar_centers)}")
