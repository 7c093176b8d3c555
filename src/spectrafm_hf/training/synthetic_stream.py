"""Model batches made on the accelerator: synthetic spectra from the emulator, or a stored set, with pixel sampling.

A dataset of stored spectra cannot feed a GPU at tens of thousands of spectra per second through a Python collator;
the package's emulator (a small MLP + PCA basis, :mod:`spectrafm_hf.synth.emulator`) can make them on the device
itself. :class:`SyntheticStream` draws labels from a pool sampled with :func:`spectrafm_hf.synth.sample_labels`,
emulates the spectra on the device, adds noise at the training S/N with the instrument's real relative-error
shape, divides by the pseudo-continuum (the same fit as :func:`spectrafm_hf.synth.realism.pseudo_continuum`, a fixed
linear operator here), optionally applies :class:`spectrafm_hf.synth.augment.RealismAugment`, and samples pixel
subsets (:func:`spectrafm_hf.training.pixel_subsets.sample_pixel_subsets`, scattered pixels mixed with contiguous
windows). :class:`ArrayStream` does the pixel sampling for a stored set (e.g. observed-domain spectra made by
:func:`spectrafm_hf.synth.generate`) held as tensors on the device. Both return the keyword arguments of
:meth:`SpectraFMModel.forward` (``flux``, ``wavelength``, ``observed_mask``, ``query_ids``, ``labels``,
``label_err``), normalised by the model's :class:`SpectraFMProcessor` exactly as the training collator does
(global flux normalisation; pixels beyond ``clip_sigma`` are masked).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..processing_spectrafm import SpectraFMProcessor
from .pixel_subsets import check_window_options, sample_pixel_subsets

__all__ = ["pseudo_continuum_operator", "pixel_batch", "SyntheticStream", "ArrayStream", "cosine_progress_lr",
           "observed_chunk"]


def pseudo_continuum_operator(instrument="apogee") -> tuple[np.ndarray, np.ndarray]:
    """(continuum pixel indices (m,), operator (m, n_pixels)): ``flux[:, idx] @ operator`` is the noiseless
    pseudo-continuum of :func:`spectrafm_hf.synth.realism.pseudo_continuum` before its clip to [0.5, 1.5] (an
    equal-weight least-squares polynomial per chip is linear in the flux)."""
    from .. import synth
    from ..synth import realism

    spec = synth.get_instrument(instrument)
    cmask = realism.load_templates(spec).continuum_mask
    deg = spec.realism.continuum_degree
    idx = np.flatnonzero(cmask)
    op = np.zeros((idx.size, spec.n_pixels))
    for a, b in spec.chips:
        X = np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, b - a), deg)
        rows = (idx >= a) & (idx < b)
        Xc = X[idx[rows] - a]
        op[np.ix_(rows, np.arange(a, b))] = Xc @ np.linalg.solve(Xc.T @ Xc, X.T)
    return idx, op


def pixel_batch(flux: torch.Tensor, good: torch.Tensor, wavelength: torch.Tensor, processor: SpectraFMProcessor,
                context_length: int, window_prob: float = 0.0, window_width=None,
                generator: torch.Generator | None = None) -> dict:
    """Pixel subsets of full-grid spectra (B, N) on the device, normalised: ``flux`` (0 where unused),
    ``wavelength`` (float32), ``observed_mask`` (int). ``good`` marks usable pixels; ``wavelength`` is (N,)."""
    if processor.flux_normalization != "global" or processor.divide_by_median:
        raise ValueError("pixel_batch supports the processor's global flux normalisation without divide_by_median")
    good = good & torch.isfinite(flux)
    idx, valid = sample_pixel_subsets(good, context_length, window_prob, window_width, generator)
    x = (torch.gather(flux, 1, idx).float() - processor.flux_center) / processor.flux_scale
    if processor.flux_softening:
        x = processor.flux_softening * torch.asinh(x / processor.flux_softening)
    valid = valid & torch.isfinite(x) & (x.abs() <= processor.clip_sigma)
    return {"flux": torch.where(valid, x, torch.zeros_like(x)), "wavelength": wavelength.float()[idx],
            "observed_mask": valid.long()}


def _label_tensors(processor, label_names, query_ids, device):
    if len(query_ids) != len(label_names):
        raise ValueError("query_ids needs one index per label name")
    k = [processor.label_names.index(n) for n in label_names]
    center = torch.tensor([processor.label_centers[i] for i in k], dtype=torch.float32, device=device)
    scale = torch.tensor([processor.label_scales[i] for i in k], dtype=torch.float32, device=device)
    return center, scale, torch.as_tensor(list(query_ids), dtype=torch.long, device=device)


class SyntheticStream:
    """Endless batches of synthetic spectra made on ``device`` (see the module docstring).

    Args:
        processor: the model's processor (label scaling, global flux normalisation, ``context_length``).
        label_names: labels to train (a subset of TEFF, LOGG, O_FE, MG_FE, FE_H); query_ids: their indices in
            ``model.config.label_names``.
        labels: (m, 5) label pool in :data:`spectrafm_hf.synth.LABEL_NAMES` order (e.g. ``synth.sample_labels``);
            each batch draws rows of it with replacement (spectra differ by noise and pixels even when a row
            repeats).
        instrument: the emulator's instrument.
        snr: continuum S/N of the noise: a number, a (lo, hi) range drawn log-uniformly per spectrum, or None
            (noiseless).
        continuum: ``"pseudo"`` (divide by the pseudo-continuum, as ``generate(continuum="pseudo")``) or ``"true"``.
        pixel_range: optional [start, stop) of the grid to read (e.g. the paper's stage-2 half).
        window_prob, window_width: contiguous-window mixing of the pixel subsets (``pixel_subsets``).
        augment: optional :class:`~spectrafm_hf.synth.augment.RealismAugment`, applied after normalisation.
        seed: seeds the stream's own ``torch.Generator`` (batches are reproducible on one device type).
    """

    def __init__(self, processor: SpectraFMProcessor, label_names: Sequence[str], query_ids: Sequence[int],
                 labels: np.ndarray, instrument: str = "apogee", device="cpu", snr=200.0, continuum: str = "pseudo",
                 context_length: int | None = None, pixel_range: Sequence[int] | None = None,
                 window_prob: float = 0.0, window_width=None, augment=None, seed: int = 0):
        from .. import synth

        self.device = torch.device(device)
        self.spec = synth.get_instrument(instrument)
        self.processor = processor
        self.label_names = list(label_names)
        unknown = [n for n in self.label_names if n not in synth.LABEL_NAMES]
        if unknown:
            raise ValueError(f"SyntheticStream: the emulator has no label {unknown}; it makes {synth.LABEL_NAMES}")
        self.label_cols = torch.as_tensor([synth.LABEL_NAMES.index(n) for n in self.label_names], device=self.device)
        self.center, self.scale, self.query_ids = _label_tensors(processor, self.label_names, query_ids, self.device)
        pool = np.asarray(labels, np.float32)
        if pool.ndim != 2 or pool.shape[1] != 5 or not len(pool):
            raise ValueError(f"labels must be a non-empty (m, 5) pool in the order {synth.LABEL_NAMES}")
        lo, hi = self.spec.label_lo.astype(np.float32), self.spec.label_hi.astype(np.float32)
        self.pool = torch.as_tensor(np.clip(pool, lo, hi), device=self.device)
        emu = synth.get_emulator(self.spec)
        self.net = type(emu.net)(emu.net.n_pixels, emu.net.n_components, emu.net.hidden, emu.net.n_hidden)
        self.net.load_state_dict(emu.net.state_dict())
        self.net.to(self.device).eval().requires_grad_(False)
        self.wavelength = torch.tensor(self.spec.wavelength, dtype=torch.float32, device=self.device)
        if snr is not None:
            snr = (float(snr), float(snr)) if np.ndim(snr) == 0 else (float(snr[0]), float(snr[1]))
            if not 0 < snr[0] <= snr[1]:
                raise ValueError(f"snr must be > 0 (a number or a (lo, hi) range), got {snr}")
        self.snr = snr
        if continuum not in ("true", "pseudo"):
            raise ValueError("continuum must be 'true' or 'pseudo'")
        self.continuum = continuum
        if continuum == "pseudo":
            idx, op = pseudo_continuum_operator(self.spec)
            self.cont_idx = torch.as_tensor(idx, device=self.device)
            self.cont_op = torch.as_tensor(op, dtype=torch.float32, device=self.device)
        from ..synth import realism

        tpl = realism.load_templates(self.spec)
        self.noise_shape = torch.as_tensor(tpl.noise_shape, dtype=torch.float32, device=self.device)
        self.noise_floor = float(self.spec.realism.noise_floor)
        self.read = torch.ones(self.spec.n_pixels, dtype=torch.bool, device=self.device)
        if pixel_range is not None:
            a, b = (int(v) for v in pixel_range)
            if not 0 <= a < b <= self.spec.n_pixels:
                raise ValueError(f"pixel_range {pixel_range} is not inside [0, {self.spec.n_pixels}]")
            self.read[:] = False
            self.read[a:b] = True
        self.context_length = int(context_length or processor.context_length)
        self.window_prob, self.window_width = check_window_options(window_prob, window_width)
        self.augment = augment
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    @torch.no_grad()
    def spectra(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-grid (flux, good) of (B, 5) labels on the device: emulated, noisy, normalised, augmented."""
        g = dict(generator=self.generator, device=self.device)
        clean = self.net(labels.float())
        flux = clean
        B = clean.shape[0]
        if self.snr is not None:
            lo, hi = math.log(self.snr[0]), math.log(self.snr[1])
            snr = torch.exp(lo + (hi - lo) * torch.rand(B, 1, **g))
            shape = self.noise_shape[torch.randint(0, self.noise_shape.shape[0], (B,), **g)]
            sigma = (shape * clean.clamp_min(0.01).sqrt() / snr).clamp_min(self.noise_floor)
            flux = clean + sigma * torch.randn(clean.shape, **g)
        if self.continuum == "pseudo":
            flux = flux / (clean[:, self.cont_idx] @ self.cont_op).clamp(0.5, 1.5)
        good = self.read.expand(B, -1)
        if self.augment is not None:
            flux, good = self.augment.torch_batch(flux, good, self.generator)
        return flux, good

    @torch.no_grad()
    def batch(self, batch_size: int) -> dict:
        """One training batch: the keyword arguments of ``SpectraFMModel.forward`` (with ``labels``)."""
        rows = torch.randint(0, self.pool.shape[0], (int(batch_size),), generator=self.generator, device=self.device)
        labels = self.pool[rows]
        flux, good = self.spectra(labels)
        out = pixel_batch(flux, good, self.wavelength, self.processor, self.context_length, self.window_prob,
                          self.window_width, self.generator)
        out["query_ids"] = self.query_ids.expand(len(rows), -1)
        out["labels"] = (labels[:, self.label_cols] - self.center) / self.scale
        out["label_err"] = torch.zeros_like(out["labels"])
        return out


class ArrayStream:
    """Batches from a stored set of full-grid spectra held on the device (e.g. an observed-domain training set).

    Args:
        flux: (n, N) normalised flux (NaN = unusable); good: (n, N) usable-pixel mask (None = finite flux).
        wavelength: (N,) grid. labels / label_err: (n, len(label_names)) physical units (NaN err = 0).
        pixel_range: optional [start, stop) of the grid to read. Other arguments as :class:`SyntheticStream`.
    """

    def __init__(self, processor: SpectraFMProcessor, label_names: Sequence[str], query_ids: Sequence[int], flux,
                 wavelength, labels, label_err=None, good=None, device="cpu", context_length: int | None = None,
                 pixel_range: Sequence[int] | None = None, window_prob: float = 0.0, window_width=None,
                 seed: int = 0, flux_dtype=torch.float32):
        self.device = torch.device(device)
        self.processor = processor
        self.label_names = list(label_names)
        self.center, self.scale, self.query_ids = _label_tensors(processor, self.label_names, query_ids, self.device)
        self.flux = torch.as_tensor(np.asarray(flux), dtype=flux_dtype, device=self.device)
        n, N = self.flux.shape
        self.good = torch.isfinite(self.flux)
        if good is not None:
            self.good &= torch.as_tensor(np.asarray(good), dtype=torch.bool, device=self.device)
        if pixel_range is not None:
            a, b = (int(v) for v in pixel_range)
            if not 0 <= a < b <= N:
                raise ValueError(f"pixel_range {pixel_range} is not inside [0, {N}]")
            self.good[:, :a] = False
            self.good[:, b:] = False
        self.wavelength = torch.tensor(np.asarray(wavelength, np.float64), dtype=torch.float32, device=self.device)
        lab = np.asarray(labels, np.float64).reshape(n, len(self.label_names))
        err = np.zeros_like(lab) if label_err is None else np.nan_to_num(np.asarray(label_err, np.float64), nan=0.0)
        self.labels = (torch.as_tensor(lab, dtype=torch.float32, device=self.device) - self.center) / self.scale
        self.label_err = torch.as_tensor(err.reshape(n, -1), dtype=torch.float32, device=self.device) / self.scale
        self.context_length = int(context_length or processor.context_length)
        self.window_prob, self.window_width = check_window_options(window_prob, window_width)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def __len__(self):
        return int(self.flux.shape[0])

    @torch.no_grad()
    def batch(self, batch_size: int | None = None, rows=None, generator: torch.Generator | None = None) -> dict:
        """A batch of random rows (``batch_size``) or of the given ``rows``; ``generator`` overrides the stream's
        (pass a freshly seeded one for the same pixels at every evaluation)."""
        g = generator or self.generator
        if rows is None:
            rows = torch.randint(0, len(self), (int(batch_size),), generator=g, device=self.device)
        rows = torch.as_tensor(rows, device=self.device)
        out = pixel_batch(self.flux[rows].float(), self.good[rows], self.wavelength, self.processor,
                          self.context_length, self.window_prob, self.window_width, g)
        out["query_ids"] = self.query_ids.expand(len(rows), -1)
        out["labels"] = self.labels[rows]
        out["label_err"] = self.label_err[rows]
        return out


def cosine_progress_lr(progress: float, step: int, peak: float, warmup_steps: int = 0, floor: float = 0.0) -> float:
    """Learning rate of a time-boxed run: linear warm-up over ``warmup_steps``, then a cosine from ``peak`` to
    ``floor`` over ``progress`` in [0, 1] (e.g. max(step / max_steps, elapsed / budget), so the schedule ends
    when the time does, whichever limit comes first)."""
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    p = min(max(float(progress), 0.0), 1.0)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * p))


def observed_chunk(task: dict) -> dict:
    """One chunk of observed-domain spectra as plain arrays, for a worker process (pickles cheaply).

    ``task``: ``name`` (returned as is), ``n``, ``seed`` and optional ``instrument``, ``continuum``,
    ``metal_poor_fraction`` for :func:`spectrafm_hf.synth.generate` with ``observed=True``. Returns ``name``,
    ``flux`` (n, N) float32 with NaN at masked pixels, ``labels`` / ``label_err`` (catalogue, (n, 5)),
    ``true_labels``. Torch is limited to one thread: workers run side by side.
    """
    from .. import synth

    torch.set_num_threads(1)
    s = synth.generate(int(task["n"]), instrument=task.get("instrument", "apogee"), seed=int(task["seed"]),
                       observed=True, continuum=task.get("continuum", "pseudo"),
                       metal_poor_fraction=task.get("metal_poor_fraction"))
    flux = np.where(s.mask, s.flux, np.nan).astype(np.float32)
    return {"name": task["name"], "flux": flux, "labels": s.labels, "label_err": s.label_err,
            "true_labels": s.true_labels}
