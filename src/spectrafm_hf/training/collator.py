"""`SpectraCollator`: dataset rows -> model batches for the `Trainer`.

Rows follow the package's dataset schema (`spectrafm_hf.data.FEATURES`): ``wavelength``, ``flux``, ``ivar``
(empty = unknown), ``mask`` (empty = all good), one column per label and ``<LABEL>_err`` (NaN = unknown).

Training draws a fresh random pixel subset of ``context_length`` every time an example is used, inside the collator
(the paper copied and re-cropped the whole dataset every epoch); evaluation (``deterministic=True``) draws the same
subset for the same star every time, so validation losses are comparable between evaluations.

Under the Trainer, `EpochCallback` tells the collator the epoch, and each example's subset is seeded by (seed, its
``object_id``, epoch): independent of batch order, dataloader prefetching and workers, so a run killed and resumed
from a checkpoint draws exactly the pixels an uninterrupted run draws. Outside the Trainer (no epoch set) subsets
come from a generator seeded from torch's global RNG.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers import TrainerCallback

from ..processing_spectrafm import SpectraFMProcessor
from ..spectrum import SpectrumError
from .pixel_subsets import check_window_options, choose_pixels

__all__ = ["SpectraCollator", "EpochCallback"]


class EpochCallback(TrainerCallback):
    """Tells the training collator which epoch it is drawing for (see the module docstring)."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int((state.epoch or 0.0) + 1e-6)


class SpectraCollator:
    """
    Args:
        processor: the model's [`SpectraFMProcessor`] (flux and label normalisation).
        label_names: labels to predict, all queried for every example (NaN targets are ignored by the loss).
        query_ids: their indices in ``model.config.label_names``.
        context_length: pixels per example (default: the processor's).
        wavelength_window: optional ``[lo, hi]`` vacuum Angstrom; only pixels inside are read (e.g. the paper's
            stage-2 first half or the stage-3 Fe window).
        deterministic: seed each example's subset from its ``object_id`` (evaluation) instead of a running RNG.
        input_label_names: labels that may also be given as non-spectra input tokens...
        input_label_prob: ...each with this probability per example (0 = never; 1 = always when known).
        input_ids: indices of ``input_label_names`` in ``config.label_names + config.scalar_input_names``.
        input_label_noise: ``{name: sigma}`` in the label's own units (e.g. ``{"TEFF": 250.0}``): Gaussian noise
            added to that given input every time a TRAINING row is used, so that the model learns how far to trust
            an input measured that well (a photometric Teff, say) instead of taking it as exact. Evaluation rows
            (``deterministic=True``) get the value as it is.
        seed: base seed.
        window_prob: probability that a TRAINING row reads one contiguous window of random position and width
            instead of pixels scattered over the whole spectrum (see `spectrafm_hf.training.pixel_subsets`);
            0 (default) = the historic rule. Evaluation rows (``deterministic=True``) never use windows.
        window_width: (min, max) window width in pixels of the row (default: (context_length // 4, all)).
        augment: optional callable ``augment(flux, good, rng) -> (flux, good)`` applied to training rows before
            normalisation, e.g. a `spectrafm_hf.synth.augment.RealismAugment` (noise, masks, continuum errors,
            tellurics); not applied when ``deterministic=True``.
        masked_flux_fraction: masked-flux pretraining (0 = off): this fraction of a TRAINING row's pixel subset,
            one contiguous run in wavelength at a random place, is held out of the input, and the model predicts
            its flux from the rest (``flux_query_wavelength`` / ``flux_targets``). A contiguous run, not scattered
            pixels, so the model cannot just interpolate between neighbours: it has to infer the missing part of
            the spectrum from the whole star. Evaluation rows are never masked.
    """

    def __init__(
        self,
        processor: SpectraFMProcessor,
        label_names: Sequence[str],
        query_ids: Sequence[int],
        context_length: int | None = None,
        wavelength_window: Sequence[float] | None = None,
        deterministic: bool = False,
        input_label_names: Sequence[str] = (),
        input_label_prob: float = 0.0,
        input_ids: Sequence[int] = (),
        input_label_noise: Mapping[str, float] | None = None,
        seed: int = 0,
        window_prob: float = 0.0,
        window_width: Sequence[int] | None = None,
        augment=None,
        masked_flux_fraction: float = 0.0,
    ):
        self.processor = processor
        self.label_names = list(label_names)
        self.query_ids = torch.as_tensor(list(query_ids), dtype=torch.long)
        if len(self.query_ids) != len(self.label_names):
            raise ValueError("query_ids needs one index per label name")
        self.context_length = int(context_length or processor.context_length)
        self.window = None if wavelength_window is None else (float(wavelength_window[0]), float(wavelength_window[1]))
        self.deterministic = deterministic
        self.input_label_names = list(input_label_names)
        self.input_ids = torch.as_tensor(list(input_ids), dtype=torch.long)
        if len(self.input_ids) != len(self.input_label_names):
            raise ValueError("input_ids needs one index per input label name")
        self.input_label_prob = float(input_label_prob)
        self.input_label_noise = {str(k): float(v) for k, v in (input_label_noise or {}).items()}
        for name, sigma in self.input_label_noise.items():
            if name not in self.input_label_names:
                raise ValueError(f"input_label_noise names {name!r}, which is not one of the input labels "
                                 f"{self.input_label_names}")
            if not (np.isfinite(sigma) and sigma >= 0):
                raise ValueError(f"input_label_noise[{name!r}] must be a finite sigma >= 0, got {sigma}")
        self.seed = int(seed)
        self.epoch = None  # set by EpochCallback during Trainer runs
        self.window_prob, self.window_width = check_window_options(window_prob, window_width)
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable (flux, good, rng) -> (flux, good), got {type(augment).__name__}")
        self.augment = augment
        self.masked_flux_fraction = float(masked_flux_fraction)
        if not 0.0 <= self.masked_flux_fraction < 1.0:
            raise ValueError(f"masked_flux_fraction must be in [0, 1), got {masked_flux_fraction}")

    def _running_rng(self):
        # Each batch's generator is seeded from torch's global RNG: the Trainer seeds it per rank and saves /
        # restores it in checkpoints, so a resumed run draws the same pixels as an uninterrupted one, and dataloader
        # workers (seeded differently by torch) draw different ones.
        return np.random.default_rng([self.seed, int(torch.randint(0, 2**31 - 1, ()).item())])

    def _example_rng(self, feature, i, epoch=0):
        key = str(feature.get("object_id", i)).encode()
        return np.random.default_rng([self.seed, zlib.crc32(key), epoch])

    def pixels(self, feature, rng):
        """The (wavelength, normalised flux) of one example's pixel subset."""
        wl = np.asarray(feature["wavelength"], dtype=np.float64)
        flux = np.asarray(feature["flux"], dtype=np.float64)
        good = np.isfinite(flux)
        ivar = feature.get("ivar")
        if ivar is not None and len(ivar):
            good &= np.asarray(ivar) > 0
        mask = feature.get("mask")
        if mask is not None and len(mask):
            good &= np.asarray(mask, dtype=bool)
        if self.augment is not None and not self.deterministic:
            flux, good = self.augment(flux, good, rng)
            good = good & np.isfinite(flux)
        if self.window is not None:
            good &= (wl >= self.window[0]) & (wl <= self.window[1])
        source = feature.get("object_id", "example")
        try:
            x, good = self.processor.normalize_arrays(wl, flux, good, source=source)
        except SpectrumError:
            return wl[:0], flux[:0].astype(np.float32)  # nothing usable: an all-masked row (loss stays finite)
        idx = np.flatnonzero(good)
        if self.window_prob > 0 and not self.deterministic:
            inside = np.flatnonzero((wl >= self.window[0]) & (wl <= self.window[1])) if self.window else None
            if inside is not None and inside.size:  # windows inside the read range only
                pos = choose_pixels(np.searchsorted(inside, idx), inside.size, self.context_length, rng,
                                    self.window_prob, self.window_width)
                idx = inside[pos]
            else:
                idx = choose_pixels(idx, wl.size, self.context_length, rng, self.window_prob, self.window_width)
        else:
            idx = self.processor.choose_subset(idx, rng, self.context_length)
        return wl[idx], x[idx]

    def _held_out(self, n, rng):
        """Boolean (n,): one contiguous run of round(fraction * n) of the row's pixels (in wavelength order),
        at least one pixel kept in the input."""
        k = min(int(round(self.masked_flux_fraction * n)), n - 1)
        held = np.zeros(n, dtype=bool)
        if k > 0:
            start = int(rng.integers(0, n - k + 1))
            held[start:start + k] = True
        return held

    def __call__(self, features):
        rows, labels, errors, masked = [], [], [], []
        batch_rng = None if self.deterministic or self.epoch is not None else self._running_rng()
        for i, f in enumerate(features):
            if self.deterministic:
                rng = self._example_rng(f, i)
            elif self.epoch is not None:
                rng = self._example_rng(f, i, self.epoch + 1)
            else:
                rng = batch_rng
            wl, x = self.pixels(f, rng)
            if self.masked_flux_fraction > 0 and not self.deterministic:
                held = self._held_out(len(wl), rng)
                masked.append((wl[held], x[held]))
                wl, x = wl[~held], x[~held]
            rows.append((wl, x))
            labels.append([f.get(n, np.nan) for n in self.label_names])
            errors.append([f.get(f"{n}_err", np.nan) for n in self.label_names])
        batch = dict(SpectraFMProcessor._pad(rows, "pt"))
        values = np.asarray(labels, dtype=np.float64)
        errs = np.nan_to_num(np.asarray(errors, dtype=np.float64), nan=0.0)
        scaled, scaled_err = self.processor.scale_labels(values, self.label_names, errs)
        # repeat, not expand: a DataLoader pinning memory for a GPU (the Trainer's default) refuses tensors whose
        # elements share memory
        batch["query_ids"] = self.query_ids.repeat(len(features), 1)
        batch["labels"] = torch.as_tensor(scaled, dtype=torch.float32)
        batch["label_err"] = torch.as_tensor(scaled_err, dtype=torch.float32)
        if masked:
            held = SpectraFMProcessor._pad(masked, "pt")  # NaN-padded, as the pixel tokens are
            batch["flux_query_wavelength"] = held["wavelength"]
            batch["flux_targets"] = held["flux"]
        if self.input_label_names and self.input_label_prob > 0:
            rng = np.random.default_rng([self.seed, 7, int(self.deterministic), self.epoch or 0,
                                         zlib.crc32("".join(str(f.get("object_id", "")) for f in features).encode())])
            known = np.asarray([[f.get(n, np.nan) for n in self.input_label_names] for f in features], np.float64)
            if not self.deterministic:
                for k, name in enumerate(self.input_label_names):
                    sigma = self.input_label_noise.get(name, 0.0)
                    if sigma:   # nothing drawn without noise, so earlier runs draw as before
                        known[:, k] += rng.normal(0.0, sigma, len(features))
            known = np.stack([self.processor.scale_inputs(n, known[:, k]) for k, n in
                              enumerate(self.input_label_names)], 1)  # labels and scalar inputs (magnitudes)
            given = np.isfinite(known) & (rng.random(known.shape) < self.input_label_prob)
            batch["input_values"] = torch.as_tensor(np.where(given, known, 0.0), dtype=torch.float32)
            batch["input_ids"] = self.input_ids.repeat(len(features), 1)
            batch["input_mask"] = torch.as_tensor(given, dtype=torch.long)
        return batch
