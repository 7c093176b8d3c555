"""`SpectraFMPipeline`: spectra in, a table of stellar labels with uncertainties out.

    >>> pipe = SpectraFMPipeline.from_pretrained("spectrafm-base")            # doctest: +SKIP
    >>> table = pipe.predict(spectra)                                          # doctest: +SKIP

Spectra of any length and grid can share one call. A spectrum with more usable pixels than the model's context is
covered by several disjoint pixel subsets (a seeded permutation split into near-equal parts; ``n_repeats`` adds
independent permutations). Each subset gives a mean and a sigma; the reported label is their inverse-variance
weighted mean. The reported ``_err`` is the typical single-subset sigma (``(mean of 1/sigma^2)^-1/2``), NOT
shrunk by the number of subsets, because all subsets see the same star and share the model's systematic error;
``_scatter`` is the weighted standard deviation between subsets (0 for a single subset).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .linear_probe import PROBE_FEATURES, apply_probe, probe_features
from .modeling_spectrafm import SpectraFMModel
from .processing_spectrafm import SpectraFMProcessor, check_probe, line_autocorrelation, spectrum_snr
from .spectrum import Spectrum

__all__ = ["SpectraFMPipeline", "label_unit", "to_astropy", "FLAGS", "row_flags"]

# The prediction table's ``flag`` column: the names below joined by ";" ("" = no warning). Every threshold lives in
# the processor (preprocessor_config.json), so one checkpoint flags the same way everywhere (API and CLI).
FLAGS = {
    "too_few_pixels": "fewer usable pixels than the processor's min_pixels",
    "flat": "the usable flux is constant: no spectral information",
    "noise_only": "flux deviations have no pixel-to-pixel correlation (lag-1 autocorrelation below "
                  "noise_test_sigma / sqrt(pairs)): white noise, no resolved lines",
    "low_snr": "median S/N below the training S/N range (snr_range); _err is inflated for the noise (see predict)",
    "out_of_distribution": "encoder embedding farther from the in-domain embeddings than embedding_threshold "
                           "(Mahalanobis; ~1 % of in-domain spectra exceed it)",
    "outside_wavelength_coverage": "under half of the usable pixels inside the training wavelength coverage",
    "<LABEL>_outside_training_range": "the predicted label is outside the 0.5-99.5 percentile training range",
}


def row_flags(row: Mapping, processor: SpectraFMProcessor) -> str:
    """The ``flag`` string of one prediction-table row (a mapping of its columns), from the processor's thresholds."""
    flags = []
    n_pixels = row.get("n_pixels")
    if n_pixels is not None and n_pixels < getattr(processor, "min_pixels", 1):
        flags.append("too_few_pixels")
    autocorr, pairs = row.get("line_autocorr"), row.get("line_pairs")
    if autocorr is not None and pairs is not None and pairs >= 2:
        if not np.isfinite(autocorr):
            flags.append("flat")
        elif autocorr < getattr(processor, "noise_test_sigma", 3.0) / math.sqrt(pairs):
            flags.append("noise_only")
    snr_range = getattr(processor, "snr_range", None)
    snr = row.get("snr")
    if snr_range and snr is not None and np.isfinite(snr) and snr < snr_range[0]:
        flags.append("low_snr")
    threshold = getattr(processor, "embedding_threshold", None)
    distance = row.get("ood_distance")
    if threshold is not None and distance is not None and not distance <= threshold:
        flags.append("out_of_distribution")
    if row.get("coverage_fraction", 1.0) < 0.5:
        flags.append("outside_wavelength_coverage")
    for name, (lo, hi) in (getattr(processor, "label_ranges", None) or {}).items():
        v = row.get(name)
        if v is not None and np.isfinite(v) and not lo <= v <= hi:
            flags.append(f"{name}_outside_training_range")
    return ";".join(flags)

_UNITS = {"TEFF": "K", "LOGG": "dex", "VMIC": "km / s", "VSINI": "km / s"}


def label_unit(column: str) -> str | None:
    """The physical unit of a prediction-table column (``TEFF``, ``FE_H_err``...), or None."""
    base = column
    for suffix in ("_err", "_scatter", "_true"):
        base = base.removesuffix(suffix)
    if base in _UNITS:
        return _UNITS[base]
    return "dex" if base.endswith(("_FE", "_H", "_M")) else None


def to_astropy(table: pd.DataFrame):
    """A prediction table as an astropy ``QTable`` with units (K, dex, ...) on the label columns."""
    import astropy.units as u
    from astropy.table import QTable

    out = QTable()
    for col in table.columns:
        values = table[col].to_numpy()
        unit = label_unit(col)
        out[col] = values * (u.dex(u.one) if unit == "dex" else u.Unit(unit)) if unit else values
    return out


def _positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}")
    return int(value)


def _as_list(spectra) -> list[Spectrum]:
    """Spectra as a list: one `Spectrum`, a sequence of them, or a `datasets.Dataset` in the package's schema."""
    if isinstance(spectra, Spectrum):
        return [spectra]
    if hasattr(spectra, "column_names") and hasattr(spectra, "with_format"):  # a datasets.Dataset
        from .data.schema import dataset_spectra, require_columns

        require_columns(spectra.column_names, ["wavelength", "flux"], what="the dataset",
                        hint="rows need the package's schema (spectrafm_hf.data)")
        spectra = dataset_spectra(spectra)
    spectra = list(spectra)
    for i, s in enumerate(spectra):
        if not isinstance(s, Spectrum):
            raise TypeError(f"spectra[{i}] is a {type(s).__name__}, not a Spectrum"
                            + (" (a dataset row: spectrafm_hf.data.row_to_spectrum reads one)"
                               if isinstance(s, Mapping) else ""))
    if not spectra:
        raise ValueError("no spectra given")
    return spectra


# On a CPU, small forward passes are fastest (their activations stay in cache): 8 subsets of 512 pixels ran the
# paper's network 1.3x faster per star than 256 (benchmarks/bench_model.py), and 16 of 256 pixels ran spectrafm-base
# 1.26x faster than 128 (benchmarks/bench_cpu_choices.py). A GPU wants large batches.
CPU_TOKENS_PER_FORWARD = 4096
GPU_SUBSETS_PER_FORWARD = 512


def default_batch_size(config, device) -> int:
    """Pixel subsets per forward pass when none is given: about 4096 pixels on a CPU, 512 subsets on a GPU."""
    if torch.device(device).type != "cpu":
        return GPU_SUBSETS_PER_FORWARD
    return max(1, CPU_TOKENS_PER_FORWARD // config.context_length)


class SpectraFMPipeline:
    """A model and its processor, with ``predict``, ``embed``, ``attention`` and ``fit``.

    Args:
        model: a [`SpectraFMModel`].
        processor: the [`SpectraFMProcessor`] saved with it.
        device: torch device (default: CUDA when available, else CPU).
        batch_size: pixel subsets per forward pass (default: `default_batch_size`; the results do not depend on it).
        bf16: run the network under bfloat16 autocast: for GPUs, and CPUs with bf16 units (AVX-512 BF16, AMX), where
            it ran 1.33x faster than fp32 and moved [Fe/H] by < 0.001 dex (benchmarks/bench_bf16.py); CPUs
            without them run it far slower.
        compile: run the forward pass through `torch.compile` (inductor): 1.09x faster inference on this project's
            CPU (benchmarks/bench_cpu_choices.py), after a first call that compiles for tens of seconds; needs a C++
            compiler on a CPU.
    """

    def __init__(self, model: SpectraFMModel, processor: SpectraFMProcessor, device=None, batch_size: int | None = None,
                 bf16: bool = False, compile: bool = False):
        missing = [n for n in model.config.label_names if n not in processor.label_names]
        if missing:
            raise ValueError(f"the processor has no label scaling for {missing}; it knows {processor.label_names}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.batch_size = (default_batch_size(model.config, self.device) if batch_size is None
                           else _positive_int("batch_size", batch_size))
        self.bf16 = bool(bf16)
        self.compile = bool(compile)
        # the module itself stays uncompiled, so saving and fine-tuning see the same parameters
        self._forward = torch.compile(self.model) if self.compile else self.model
        self.chunk_size = 512  # spectra prepared at once by predict(): bounds memory for any number of spectra

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device=None, batch_size: int | None = None,
                        bf16: bool = False, compile: bool = False, **kwargs):
        """Load a saved pipeline folder (config.json, model.safetensors, preprocessor_config.json), a Hub id in the
        local cache, or the name of a checkpoint embedded in the package (see `spectrafm_hf.hub.resolve_model`)."""
        from .hub import resolve_model

        path = resolve_model(name_or_path, cache_dir=kwargs.get("cache_dir"), revision=kwargs.get("revision"),
                             local_files_only=kwargs.get("local_files_only", False))
        model = SpectraFMModel.from_pretrained(path, **kwargs)
        processor = SpectraFMProcessor.from_pretrained(
            path, **{k: v for k, v in kwargs.items() if k in ("cache_dir", "revision", "local_files_only", "token")})
        pipe = cls(model, processor, device=device, batch_size=batch_size, bf16=bf16, compile=compile)
        pipe.name_or_path = str(name_or_path)  # names the model on predict_distributed's rows
        return pipe

    def save_pretrained(self, path: str | os.PathLike, overwrite: bool = False, **kwargs):
        """Write the model and the processor into ``path``, never destroying anything there
        (`spectrafm_hf.safe_write.atomic_directory`): a new or empty folder, or an earlier SpectraFM save, gets the
        checkpoint files (a crash leaves no half-written checkpoint); a folder holding other files is refused with
        a `FileExistsError` naming them, unless ``overwrite=True``, which replaces only the checkpoint's own files
        (config.json, weights, preprocessor_config.json, code files) and leaves every other file alone."""
        from .checkpoint_folder import ensure_remote_code
        from .safe_write import atomic_directory

        with atomic_directory(path, overwrite=overwrite) as tmp:
            self.model.save_pretrained(tmp, **kwargs)
            self.processor.save_pretrained(tmp)
            ensure_remote_code(tmp)  # config.json's auto_map names the processor too
        return path

    @property
    def label_names(self) -> list[str]:
        """The labels `predict` returns: the model's, then those only a linear probe reads (`fit_linear_probe`)."""
        model = list(self.model.config.label_names)
        return model + [n for n in self.processor.linear_probes if n not in model]

    # ------------------------------------------------------------------ inference
    def _known_inputs(self, known, owner, n_spectra):
        """Non-spectra inputs for each subset row: (values, ids) tensors, or (None, None)."""
        if not known:
            return None, None
        names = self.model.config.label_names + self.model.config.scalar_input_names
        values, ids = [], []
        for name, vals in known.items():
            if name not in names:
                raise KeyError(f"{name!r} cannot be an input of this model; it accepts {names}")
            vals = np.broadcast_to(np.asarray(vals, dtype=np.float64), (n_spectra,))
            values.append(self.processor.scale_inputs(name, vals)[owner])
            ids.append(np.full(len(owner), names.index(name)))
        return (torch.as_tensor(np.stack(values, 1), dtype=torch.float32),
                torch.as_tensor(np.stack(ids, 1), dtype=torch.long))

    @torch.inference_mode()
    def _run(self, batch, query_ids, input_values=None, input_ids=None, output_attentions=False, hidden=False):
        """Forward all rows of a padded batch in chunks; returns concatenated outputs (numpy)."""
        n = batch["flux"].shape[0]
        means, logvars, attn, pooled, states = [], [], [], [], []
        for start in range(0, n, self.batch_size):
            sl = slice(start, start + self.batch_size)
            rows = batch["flux"][sl].shape[0]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                out = self._forward(
                    flux=batch["flux"][sl].to(self.device),
                    wavelength=batch["wavelength"][sl].to(self.device),
                    observed_mask=batch["observed_mask"][sl].to(self.device),
                    query_ids=torch.as_tensor(query_ids, device=self.device).expand(rows, -1),
                    input_values=None if input_values is None else input_values[sl].to(self.device),
                    input_ids=None if input_ids is None else input_ids[sl].to(self.device),
                    output_attentions=output_attentions,
                    output_hidden_states=hidden,
                )
            means.append(out.mean.float().cpu())
            logvars.append(out.log_variance.float().cpu())
            if output_attentions:
                attn.append(out.attentions[-1].float().mean(1).cpu())  # head average, last decoder block
            if hidden:
                m = out.observed_mask[:, : batch["flux"].shape[1]].unsqueeze(-1).float()
                h = out.encoder_last_hidden_state[:, : batch["flux"].shape[1]].float()
                pooled.append(((h * m).sum(1) / m.sum(1).clamp_min(1)).cpu())
                states.append(out.decoder_last_hidden_state.float().cpu())
        result = {"mean": torch.cat(means).numpy(), "log_variance": torch.cat(logvars).numpy()}
        if output_attentions:
            result["attention"] = torch.cat(attn).numpy()
        if hidden:
            result["embedding"] = torch.cat(pooled).numpy()
            result["query_states"] = torch.cat(states).numpy()  # (rows, queries, hidden_size)
        return result

    def _names(self, labels, default) -> list[str]:
        """``labels`` (None: ``default``; a string: one label) as a non-empty list."""
        names = list(default) if labels is None else [labels] if isinstance(labels, str) else list(labels)
        if not names:
            raise ValueError(f"labels={labels!r} selects no label; give None (all) or some of {self.label_names}")
        return names

    def _query_ids(self, labels):
        """(names, decoder query ids) of labels the network itself predicts (None: all of them)."""
        model = list(self.model.config.label_names)
        names = self._names(labels, model)
        unknown = [n for n in names if n not in model]
        if unknown:
            probe_only = [n for n in unknown if n in self.label_names]
            if probe_only:
                raise KeyError(f"{probe_only} are read by a linear probe, not by a decoder query of the network; "
                               f"the network predicts {model}")
            raise KeyError(f"this model does not predict {unknown}; it predicts {self.label_names}")
        return names, [model.index(n) for n in names]

    def _plan(self, labels):
        """(names asked for, the model labels to run, their query ids): a label with a linear probe is computed
        from the embedding and the predictions of the probe's ``inputs``, which are run instead of it."""
        probes = self.processor.linear_probes
        names = self._names(labels, self.label_names)
        unknown = [n for n in names if n not in self.label_names]
        if unknown:
            raise KeyError(f"this model does not predict {unknown}; it predicts {self.label_names}")
        run = [n for n in names if n not in probes]
        run += [i for n in names if n in probes for i in probes[n]["inputs"]]
        run, ids = self._query_ids(list(dict.fromkeys(run))) if run else ([], [])
        return names, run, ids

    def _with_probes(self, names, run, mean, err, scatter, embedding, query_states):
        """(mean, err, scatter) for ``names`` from the run labels' (n, len(run)) answers, the embedding and the
        run labels' decoder states (n, len(run), hidden_size)."""
        probes = self.processor.linear_probes
        cols = {n: k for k, n in enumerate(run)}
        out = [np.empty((len(mean), len(names))) for _ in range(3)]
        for k, name in enumerate(names):
            if name in probes:
                probe = probes[name]
                features = probe_features(probe["features"], probe["inputs"], embedding, query_states, mean, cols)
                out[0][:, k] = apply_probe(probe, features)
                out[1][:, k], out[2][:, k] = probe["sigma"], 0.0
            else:
                for o, a in zip(out, (mean, err, scatter)):
                    o[:, k] = a[:, cols[name]]
        return tuple(out)

    def predict(
        self,
        spectra: Spectrum | Sequence[Spectrum],
        labels: str | Sequence[str] | None = None,
        known: Mapping[str, Sequence[float]] | None = None,
        seed: int = 0,
        n_repeats: int = 1,
        noise_draws: int | None = None,
    ) -> pd.DataFrame:
        """Labels and uncertainties in physical units, one row per spectrum.

        Args:
            spectra: a `Spectrum` or a list of them (any grids and lengths). Raw flux is continuum-normalised by the
                processor (`SpectraFMProcessor.prepare`). Or a `datasets.Dataset` in the package's schema, whose flux
                is read as the training collator reads it (`spectrafm_hf.data.dataset_spectra`).
            labels: label names to predict (default: all the model's labels).
            known: non-spectra inputs, e.g. ``{"LOGG": [2.5, 4.4]}`` (one value per spectrum, physical units).
            seed: seed of the pixel subsets and of the noise draws (predictions are reproducible for a given seed).
            n_repeats: independent pixel permutations per spectrum (more subsets, smoother average).
            noise_draws: Monte-Carlo noise draws for spectra with ivar below the training S/N range (default: the
                processor's ``noise_draws``, 0); each draw costs one more prediction of those spectra. 0 keeps only
                the S/N scaling of sigma below.

        Returns:
            `pandas.DataFrame` with columns ``<LABEL>``, ``<LABEL>_err`` (1-sigma), ``<LABEL>_scatter`` (between
            subsets) for every label, then ``n_pixels``, ``n_subsets``, ``coverage_fraction``, ``snr``,
            ``normalization`` (how the flux was normalised and what decided it, see `SpectraFMProcessor.prepare`),
            ``ood_distance`` (when the processor has embedding statistics), ``line_autocorr`` and ``line_pairs``
            (`line_autocorrelation`, for the flat / noise_only flags), ``flag`` (see `FLAGS`) and, when the spectra
            carry them, ``object_id`` and ``source``.

        Below the training S/N range (``snr`` < ``processor.snr_range[0]``, flag ``low_snr``) the model's own sigma,
        learned at the training noise, is too small, and ``_err`` becomes
        ``hypot(sigma * snr_range[0] / snr, noise_change)``: the photon-noise part of a label error scales as 1/(S/N)
        for a given spectrum (the Cramer-Rao bound), so sigma is scaled from the training S/N to the spectrum's (this
        also scales the model's systematic part: conservative); ``noise_change`` is the root-mean-square change of
        the label over ``noise_draws`` copies with flux + N(0, 1/sqrt(ivar)) (noise doubled), the variance AND the
        shift that more noise causes. On the real dwarf the network's labels drift with noise (S/N 10: 3730 K instead
        of 5000 K) while its own sigma shrinks; benchmarks/dwarf_snr.py measures the result.
        """
        n_repeats = _positive_int("n_repeats", n_repeats)
        spectra = _as_list(spectra)
        names, run, query_ids = self._plan(labels)
        draws = self.processor.noise_draws if noise_draws is None else int(noise_draws)
        if draws < 0:
            raise ValueError(f"noise_draws must be >= 0, got {noise_draws}")
        if len(spectra) > self.chunk_size:  # bounded memory: the subsets of a chunk of spectra at a time
            known = {k: np.broadcast_to(np.asarray(v, np.float64), (len(spectra),)) for k, v in (known or {}).items()}
            parts = []
            for start in range(0, len(spectra), self.chunk_size):
                sl = slice(start, start + self.chunk_size)
                parts.append(self.predict(spectra[sl], names, {k: v[sl] for k, v in known.items()}, seed, n_repeats,
                                          draws))
            return pd.concat(parts, ignore_index=True)
        prepared = [self.processor.prepare(s) for s in spectra]
        mean, err, scatter, n_pixels, n_subsets, embedding, _ = self._predict_prepared(
            prepared, names, run, query_ids, known, seed, n_repeats, embed=self.processor.embedding_mean is not None)
        err = err * self.processor.sigma_scales(names, n_subsets)  # post-hoc recalibration (1 unless fitted)
        snr = np.array([spectrum_snr(s) for s in prepared])
        low = self.processor.snr_range is not None
        noisy = np.flatnonzero(np.isfinite(snr) & (snr < self.processor.snr_range[0])) if low else np.zeros(0, int)
        if noisy.size:  # below the training S/N: see the docstring
            scale = self.processor.snr_range[0] / snr[noisy]
            change = 0.0
            if draws > 0:
                change = self._noise_change(prepared, mean, noisy, names, run, query_ids, known, seed, n_repeats,
                                            draws)
            err[noisy] = np.hypot(err[noisy] * scale[:, None], change)
        mean, err, scatter = self.processor.apply_label_affine(names, mean, err, scatter)  # none unless fitted
        table = {}
        for k, name in enumerate(names):
            table[name], table[f"{name}_err"], table[f"{name}_scatter"] = mean[:, k], err[:, k], scatter[:, k]
        table["n_pixels"] = n_pixels
        table["n_subsets"] = n_subsets
        table["coverage_fraction"] = [self.coverage_fraction(s) for s in spectra]
        table["snr"] = snr
        table["normalization"] = [s.meta["normalization"] for s in prepared]
        if embedding is not None:
            table["ood_distance"] = self.processor.embedding_distance(embedding)
        table["line_autocorr"], table["line_pairs"] = zip(*(line_autocorrelation(s) for s in prepared))
        for key in ("object_id", "source"):
            if any(key in s.meta for s in spectra):
                table[key] = [s.meta.get(key) for s in spectra]
        table = pd.DataFrame(table)
        table["flag"] = [row_flags(r, self.processor) for r in table.to_dict("records")]
        return table

    def _predict_prepared(self, spectra, names, run, query_ids, known, seed, n_repeats, embed=False, states=False):
        """Per-spectrum (mean, err, scatter, n_pixels, n_subsets, embedding or None, query states or None) of
        prepared spectra: ``names`` from the model labels ``run`` (`_plan`); the query states are the run labels'
        last decoder states (n, len(run), hidden_size), averaged only when ``states`` or a probe of ``names`` reads
        them (predict's out-of-distribution distance needs the embedding alone)."""
        probes = self.processor.linear_probes
        probed = any(n in probes for n in names)
        embed = embed or probed
        states = states or any(probes[n]["features"] == "embedding+queries" for n in names if n in probes)
        batch, owner, n_pixels = self.processor.subset_batch(spectra, seed=seed, n_repeats=n_repeats)
        in_values, in_ids = self._known_inputs(known, owner, len(spectra))
        out = self._run(batch, query_ids if run else [0], in_values, in_ids, hidden=embed)
        if run:
            value, sigma = self.processor.unscale_labels(out["mean"], out["log_variance"], run)
        else:  # only the embedding was needed (a probe without label inputs)
            value, sigma = np.zeros((len(owner), 0)), np.ones((len(owner), 0))
        weights = 1.0 / sigma**2
        wsum = np.zeros((len(spectra), len(run)))
        np.add.at(wsum, owner, weights)
        mean = np.zeros_like(wsum)
        np.add.at(mean, owner, weights * value)
        mean /= wsum
        var_between = np.zeros_like(wsum)
        np.add.at(var_between, owner, weights * (value - mean[owner]) ** 2)
        n_subsets = np.bincount(owner, minlength=len(spectra))
        err = np.sqrt(n_subsets[:, None] / wsum)
        scatter = np.sqrt(var_between / wsum)
        embedding = query_states = None
        if embed:  # each spectrum's mean over its subsets
            embedding = np.zeros((len(spectra), out["embedding"].shape[1]))
            np.add.at(embedding, owner, out["embedding"])
            embedding /= n_subsets[:, None]
        if embed and states:
            query_states = np.zeros((len(spectra), *out["query_states"].shape[1:]))
            np.add.at(query_states, owner, out["query_states"])
            query_states /= n_subsets[:, None, None]
            if not run:
                query_states = query_states[:, :0]  # the dummy query that ran for the embedding alone
        if probed or run != list(names):
            mean, err, scatter = self._with_probes(names, run, mean, err, scatter, embedding, query_states)
        return mean, err, scatter, n_pixels, n_subsets, embedding, query_states

    def _noise_change(self, prepared, mean, rows, names, run, query_ids, known, seed, n_repeats, draws):
        """Root-mean-square change (len(rows), n_labels) of the labels of ``draws`` noisy copies of each spectrum
        (flux + N(0, 1/sqrt(ivar)) on its usable pixels, the same pixel subsets) from the labels ``mean[rows]``."""
        rng = np.random.default_rng([seed, 7919])
        copies, owner = [], []
        for r in rows:
            s = prepared[r]
            g = s.good
            sd = np.where(g, 1.0 / np.sqrt(np.where(g, s.ivar, 1.0)), 0.0)
            for _ in range(draws):
                c = copy.copy(s)
                c.flux = s.flux + sd * rng.standard_normal(s.flux.size)
                copies.append(c)
                owner.append(r)
        sub_known = None
        if known:
            idx = np.asarray(owner)
            sub_known = {k: np.broadcast_to(np.asarray(v, np.float64), (len(prepared),))[idx] for k, v in known.items()}
        noisy = self._predict_prepared(copies, names, run, query_ids, sub_known, seed, n_repeats)[0]
        noisy = noisy.reshape(len(rows), draws, len(names))
        return np.sqrt(np.mean((noisy - mean[rows][:, None, :]) ** 2, axis=1))

    def predict_stream(self, spectra, labels=None, seed: int = 0, n_repeats: int = 1, chunk_size: int | None = None):
        """`predict` over any iterable (e.g. a generator reading files lazily), yielding one table per chunk of
        ``chunk_size`` spectra: memory stays bounded however many spectra flow through."""
        chunk_size = self.chunk_size if chunk_size is None else _positive_int("chunk_size", chunk_size)
        self._plan(labels)  # bad arguments fail here, not after the first chunk was read
        _positive_int("n_repeats", n_repeats)
        chunk = []
        for s in spectra:
            chunk.append(s)
            if len(chunk) == chunk_size:
                yield self.predict(chunk, labels=labels, seed=seed, n_repeats=n_repeats)
                chunk = []
        if chunk:
            yield self.predict(chunk, labels=labels, seed=seed, n_repeats=n_repeats)

    def predict_distributed(self, inputs, output, *, dataset: bool = False, labels=None, seed: int = 0,
                            n_repeats: int = 1, chunk_size: int | None = None, resume: bool = False, **kwargs):
        """`predict` for a survey, on every process of an ``accelerate launch`` / ``torchrun`` (or in one process):
        ``inputs`` are files/folders/globs, or with ``dataset=True`` one `datasets` dataset read in streaming mode
        (Parquet files, a builder config such as ``"synthetic_apogee"``, or a Hub id; ``split=``,
        ``dataset_config=``). Each process predicts its share of the chunks into Parquet parts beside ``output``;
        rank 0 merges them into ``output``, the same table a single process writes. ``resume=True`` continues an
        interrupted run. Call it on every rank with the same arguments; returns a `spectrafm_hf.survey.SurveyResult`
        (``exit_code`` 0 = all written). See `spectrafm_hf.survey.predict_survey` for the other keyword arguments."""
        from .survey import CHUNK_SIZE, predict_survey

        inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        return predict_survey(self, [str(i) for i in inputs], output, dataset=dataset, labels=labels, seed=seed,
                              n_repeats=n_repeats, chunk_size=chunk_size or CHUNK_SIZE, resume=resume, **kwargs)

    def coverage_fraction(self, spectrum: Spectrum) -> float:
        """Fraction of the usable pixels inside the wavelength ranges the model was trained on (1.0 when the
        processor records no coverage). Predictions for spectra with low coverage are extrapolations."""
        ranges = getattr(self.processor, "wavelength_coverage", None)
        if not ranges:
            return 1.0
        wl = spectrum.wavelength[spectrum.good]
        inside = np.zeros(wl.size, bool)
        for lo, hi in ranges:
            inside |= (wl >= lo) & (wl <= hi)
        return float(inside.mean()) if wl.size else 0.0

    def embed(self, spectra, seed: int = 0, n_repeats: int = 1) -> np.ndarray:
        """Mean encoder output over each spectrum's observed pixels, averaged over its subsets: (n, hidden_size)."""
        n_repeats = _positive_int("n_repeats", n_repeats)
        spectra = _as_list(spectra)
        batch, owner, _ = self.processor.subset_batch(spectra, seed=seed, n_repeats=n_repeats)
        out = self._run(batch, [0], hidden=True)
        emb = np.zeros((len(spectra), out["embedding"].shape[1]))
        np.add.at(emb, owner, out["embedding"])
        return emb / np.bincount(owner, minlength=len(spectra))[:, None]

    def attention(self, spectrum: Spectrum, label: str, seed: int = 0) -> pd.DataFrame:
        """Attention of the label query (last decoder block, head-averaged) on each pixel of one spectrum.

        The learned bias key/value slot is dropped and each subset's weights are renormalised to sum to 1 over its
        pixels, then placed back at their wavelengths (the paper's attention maps). Unused pixels get NaN.
        The ``line`` column names the nearest strong known line within 0.5 A of each pixel (``"Fe I 15207.53"``,
        ``""`` for none; `spectrafm_hf.lines`), so the most attended lines can be read off the table.
        """
        from .lines import nearest_line_names

        result = self._attention_maps(spectrum, [label], seed)[:, 0]
        return pd.DataFrame({"wavelength": spectrum.wavelength, "flux": spectrum.flux, "attention": result,
                             "line": nearest_line_names(spectrum.wavelength)})

    def _attention_maps(self, spectrum: Spectrum, labels, seed: int = 0) -> np.ndarray:
        """`attention` of several label queries in one pass (decoder queries only cross-attend, so they do not
        affect each other): (n_pixels, n_labels), NaN at unused pixels."""
        names, query_ids = self._query_ids(labels)
        wl, x, good = self.processor.normalize(spectrum)
        idx = np.flatnonzero(good)
        batch, owner, _ = self.processor.subset_batch([spectrum], seed=seed)
        att = self._run(batch, query_ids, output_attentions=True)["attention"]  # (subsets, labels, L + 1)
        result = np.full((len(spectrum), len(names)), np.nan)
        for row, part in enumerate(self.processor.pixel_subsets(idx.size, seed=seed)):
            w = att[row, :, : part.size].T
            result[idx[part]] = w / w.sum(0)
        return result

    # ------------------------------------------------------------------ few-shot fine-tuning
    def _label_arrays(self, labels, label_names, label_err, n_spectra):
        """``fit``'s labels (array or table) -> (names, values (n, q), errors (n, q) or None), checked."""
        from .data.schema import require_columns

        def is_table(x):
            return isinstance(x, (pd.DataFrame, Mapping))

        if is_table(labels):
            table = labels if isinstance(labels, pd.DataFrame) else pd.DataFrame(dict(labels))
            columns = [str(c) for c in table.columns]
            if not label_names:
                names = [n for n in self.label_names if n in columns]
                if not names:
                    require_columns(columns, self.label_names, what="labels table has none of the model's labels",
                                    hint="name the ones to fit with label_names=[...]")
            else:
                names = [label_names] if isinstance(label_names, str) else list(label_names)
                require_columns(columns, names, what="labels table")
            if len(table) != n_spectra:
                raise ValueError(f"labels table has {len(table)} rows for {n_spectra} spectra")
            values = table[names].to_numpy(dtype=np.float64)
            if label_err is None and all(f"{n}_err" in columns for n in names):
                label_err = table[[f"{n}_err" for n in names]]
        else:
            names = list(self.label_names if not label_names else
                         [label_names] if isinstance(label_names, str) else label_names)
            values = np.asarray(labels, dtype=np.float64)
            if values.ndim <= 1 and values.size == n_spectra * len(names):
                values = values.reshape(n_spectra, len(names))
            if values.shape != (n_spectra, len(names)):
                raise ValueError(f"labels has shape {values.shape}; {n_spectra} spectra and the labels {names} need "
                                 f"({n_spectra}, {len(names)}) (pass label_names=[...] or a table with named columns)")
        if label_err is not None:
            if is_table(label_err):
                err_table = label_err if isinstance(label_err, pd.DataFrame) else pd.DataFrame(dict(label_err))
                err_cols = [str(c) for c in err_table.columns]
                wanted = [n if n in err_cols and f"{n}_err" not in err_cols else f"{n}_err" for n in names]
                require_columns(err_cols, wanted, what="label_err table")
                label_err = err_table[wanted].to_numpy(dtype=np.float64)
            label_err = np.asarray(label_err, dtype=np.float64)
            if label_err.ndim == 1 and label_err.size == values.size:
                label_err = label_err.reshape(values.shape)
            try:
                label_err = np.broadcast_to(label_err, values.shape)
            except ValueError:
                raise ValueError(f"label_err has shape {label_err.shape}; the labels have {values.shape}") from None
        return names, values, label_err

    def _helper_values(self, helper_labels, names, table, spectra, seed) -> dict:
        """{helper: (values, errors)} for `fit` (see its ``helper_labels``)."""
        if helper_labels is None or helper_labels is False:
            return {}
        if isinstance(helper_labels, str) and helper_labels == "auto":
            wanted = [n for n in self.model.config.label_names if n not in names]
        else:
            wanted = [helper_labels] if isinstance(helper_labels, str) else list(helper_labels)
            self._query_ids(wanted)  # KeyError naming any label this model does not predict
            wanted = [n for n in wanted if n not in names]
        if table is not None and not isinstance(table, pd.DataFrame):
            table = pd.DataFrame(dict(table))
        out, missing = {}, []
        for n in wanted:
            if table is not None and n in table.columns:
                err = table[f"{n}_err"] if f"{n}_err" in table.columns else np.zeros(len(table))
                out[n] = (table[n].to_numpy(np.float64), np.nan_to_num(np.asarray(err, np.float64), nan=0.0))
            else:
                missing.append(n)
        if missing:  # what this model predicts now: fine-tuning is asked to keep it
            pred = self.predict(spectra, labels=missing, seed=seed)
            for n in missing:
                out[n] = (pred[n].to_numpy(np.float64), pred[f"{n}_err"].to_numpy(np.float64))
        return {n: out[n] for n in wanted}

    def _synthetic_rehearsal(self, kind, spectra, rows, seed):
        """(spectra, labels table) for ``fit(rehearsal="synthetic")``: the emulator's clean spectra of the model's
        instrument, as pretraining saw them, cut to the wavelength span the fit's own spectra cover. ``"auto"``:
        the same, or None where the package cannot emulate them."""
        from . import synth

        if kind not in ("synthetic", "auto"):
            raise ValueError(f"fit: rehearsal must be 'auto', 'synthetic', None or a (spectra, labels) pair, "
                             f"got {kind!r}")
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
            raise ValueError(f"fit: rehearsal_rows must be an integer >= 1, got {rows!r}")
        instrument = (self.processor.continuum or {}).get("instrument")
        if instrument is None or instrument not in synth.INSTRUMENTS:
            if kind == "auto":
                return None
            raise ValueError(f"fit: rehearsal='synthetic' needs a model of an instrument the package emulates "
                             f"({sorted(synth.INSTRUMENTS)}); this one reads {instrument or 'no named instrument'}: "
                             "pass rehearsal=(spectra, labels) instead")
        grid = synth.get_instrument(instrument).wavelength
        spans = np.array([[s.wavelength[s.good].min(), s.wavelength[s.good].max()] for s in spectra if s.n_good])
        keep = (grid >= spans[:, 0].min()) & (grid <= spans[:, 1].max())
        if not keep.any():
            if kind == "auto":
                return None
            raise ValueError(f"fit: the spectra ({spans[:, 0].min():.0f}-{spans[:, 1].max():.0f} A) do not overlap "
                             f"the {instrument} grid; rehearsal='synthetic' has nothing to draw")
        made = synth.generate(int(rows), instrument, seed=seed, snr=200.0, continuum="pseudo")
        return [s.select(keep) for s in made.to_spectra()], pd.DataFrame(made.labels, columns=synth.LABEL_NAMES)

    def calibrate_uncertainties(self, spectra: Sequence[Spectrum], labels, label_names: Sequence[str] | None = None,
                                label_err=None, seed: int = 0, n_repeats: int = 1,
                                coverage: float = 0.6827) -> dict[str, float]:
        """Recalibrate ``_err`` on labelled validation spectra (never the test set): per label, the factor that makes
        ``coverage`` of them fall within the predicted 1-sigma interval, stored in the processor
        (``uncertainty_scale``, saved by `save_pretrained`) and applied by every later `predict`. ``labels`` and
        ``label_err`` are read as in `fit`. Returns the factors (> 1: the model was overconfident)."""
        spectra = _as_list(spectra)
        names, values, label_err = self._label_arrays(labels, label_names, label_err, len(spectra))
        saved, snr_range = dict(self.processor.uncertainty_scale), self.processor.snr_range
        for n in names:  # predict with the model's own sigma, without the low-S/N inflation
            self.processor.uncertainty_scale.pop(n, None)
        self.processor.snr_range = None
        try:
            table = self.predict(spectra, labels=names, seed=seed, n_repeats=n_repeats, noise_draws=0)
            return self.processor.fit_uncertainty_scale(
                names, table[names].to_numpy(), table[[f"{n}_err" for n in names]].to_numpy(), values, label_err,
                coverage=coverage, n_subsets=table["n_subsets"].to_numpy())
        except BaseException:
            self.processor.uncertainty_scale = saved
            raise
        finally:
            self.processor.snr_range = snr_range

    def calibrate_labels(self, spectra: Sequence[Spectrum], labels, label_names: Sequence[str] | None = None,
                         seed: int = 0, n_repeats: int = 1, method: str = "direct") -> dict[str, list]:
        """The cheapest few-shot transfer: a per-label affine correction ``slope * prediction + intercept`` fitted by
        least squares on labelled spectra of the new domain (never the test set), stored in the processor
        (``label_affine``, saved by `save_pretrained`) and applied by every later `predict`; the network is unchanged.
        ``labels`` are read as in `fit`. Returns ``{label: [slope, intercept]}``. ``method`` is
        `SpectraFMProcessor.fit_label_affine`'s: ``"direct"`` regresses the labels on the predictions, ``"inverse"``
        the predictions on the labels and inverts the line. Outside the labels' range in ``spectra`` the straight line
        is extrapolated: the direct fit on metal-rich stars helped metal-poor ones in the paper's experiment and hurt
        them on MILES (docs/real_spectra.md: the few-shot experiments)."""
        spectra = _as_list(spectra)
        names, values, _ = self._label_arrays(labels, label_names, None, len(spectra))
        saved = dict(self.processor.label_affine)
        for n in names:  # fit on the network's own predictions
            self.processor.label_affine.pop(n, None)
        try:
            table = self.predict(spectra, labels=names, seed=seed, n_repeats=n_repeats, noise_draws=0)
            return self.processor.fit_label_affine(names, table[names].to_numpy(), values, method=method)
        except BaseException:
            self.processor.label_affine = saved
            raise

    def fit_linear_probe(self, spectra: Sequence[Spectrum], labels, label_names: Sequence[str] | None = None,
                         inputs="auto", alphas=None, seed: int = 0, n_repeats: int = 1, method: str = "ridge",
                         shrink: float = 0.2, covariates: Sequence[str] = ("TEFF", "LOGG"),
                         features: str = "embedding") -> "SpectraFMPipeline":
        """Read labels as a straight line from the frozen model (`spectrafm_hf.linear_probe`): per label, a ridge
        regression on each spectrum's embedding and the network's predictions of ``inputs`` (``"auto"``: every label
        the network predicts), fitted on labelled spectra (never the test set). The ridge penalty (one of ``alphas``,
        default `linear_probe.DEFAULT_ALPHAS`) is chosen by leave-one-out error on these spectra, and ``_err`` is their
        root-mean-square leave-one-out residual (`calibrate_uncertainties` can rescale it on validation spectra).

        ``method="generative"`` fits the same features the other way round (`linear_probe.fit_generative_probe`):
        each feature linear in the label and in the network's answers for ``covariates`` (those among ``inputs``),
        inverted by generalised least squares with the residual covariance shrunk towards its diagonal by ``shrink``.
        It is not pulled towards the fitting stars' mean, so it reads stars beyond their range (metal-poor stars from
        metal-rich ones) with less bias, at the price of more scatter within it.

        ``features="embedding+queries"`` also reads, for each of ``inputs``, the last decoder state of its query:
        what the network knows about the star as it answers that label (on Gaia XP this extrapolated better on
        validation; docs/real_spectra.md, recipe v10).

        Returns a new pipeline sharing the network (this one is unchanged) whose `predict` returns the probed labels;
        a label the network predicts is replaced by its probe, one it does not predict is added (``label_names``).
        ``labels`` are read as in `fit`. The network is never trained, so nothing the pretraining learned is lost, and
        the line extrapolates where a fine-tuned decoder saturates (docs/real_spectra.md: the few-shot experiments)."""
        from .linear_probe import fit_generative_probe, fit_ridge_loo

        if method not in ("ridge", "generative"):
            raise ValueError(f"fit_linear_probe: method must be 'ridge' or 'generative', got {method!r}")
        spectra = _as_list(spectra)
        names, values, _ = self._label_arrays(labels, label_names, None, len(spectra))
        x, run = self.probe_features(spectra, inputs, features, seed, n_repeats)
        new = SpectraFMPipeline(self.model, copy.deepcopy(self.processor), self.device, self.batch_size, self.bf16,
                                self.compile)
        hidden_size = self.model.config.hidden_size
        covariate_columns = [x.shape[1] - len(run) + run.index(c) for c in covariates if c in run]
        for k, name in enumerate(names):
            if method == "generative":
                probe = fit_generative_probe(x, values[:, k], covariate_columns, shrink)
            else:
                probe = fit_ridge_loo(x, values[:, k], **({} if alphas is None else {"alphas": alphas}))
            new.processor.linear_probes[name] = check_probe(name, {**probe, "inputs": run, "features": features},
                                                            hidden_size)
            new.processor.label_affine.pop(name, None)  # corrections of the network's answer do not apply
            new.processor.uncertainty_scale.pop(name, None)
        if hasattr(self, "name_or_path"):
            new.name_or_path = self.name_or_path
        return new

    def probe_features(self, spectra: Sequence[Spectrum], inputs="auto", features: str = "embedding", seed: int = 0,
                       n_repeats: int = 1) -> tuple[np.ndarray, list[str]]:
        """What a linear probe reads (`fit_linear_probe`): ((n, p) features, the network labels among them).
        The features are the embedding, with ``features="embedding+queries"`` the last decoder state of each of
        ``inputs``' queries, then the network's own answers for ``inputs`` (``"auto"``: every label it predicts;
        never a probe's answer). For studies of read-outs (`spectrafm_hf.linear_probe`) without refitting features."""
        if features not in PROBE_FEATURES:
            raise ValueError(f"a linear probe's features must be one of {PROBE_FEATURES}, got {features!r}")
        spectra = _as_list(spectra)
        if isinstance(inputs, str):
            if inputs != "auto":
                raise ValueError(f"a linear probe's inputs must be 'auto' or a list of the network's labels, got "
                                 f"{inputs!r}")
            inputs = list(self.model.config.label_names)
        run, ids = self._query_ids(list(dict.fromkeys(inputs))) if len(inputs) else ([], [])
        kept, self.processor.linear_probes = self.processor.linear_probes, {}  # the network's answers, not probes'
        try:
            parts, columns = [], {n: k for k, n in enumerate(run)}
            for start in range(0, len(spectra), self.chunk_size):  # bounded memory, the chunks `predict` reads
                prepared = [self.processor.prepare(s) for s in spectra[start:start + self.chunk_size]]
                answers, _, _, _, _, embedding, states = self._predict_prepared(
                    prepared, run, run, ids, None, seed, n_repeats, embed=True, states=features != "embedding")
                parts.append(probe_features(features, run, embedding, states, answers, columns))
        finally:
            self.processor.linear_probes = kept
        return np.concatenate(parts), run

    def fit(
        self,
        spectra: Sequence[Spectrum],
        labels,
        label_names: Sequence[str] | None = None,
        label_err=None,
        steps: int = 200,
        batch_size: int = 32,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.01,
        freeze: Sequence[str] = (),
        seed: int = 0,
        callback=None,
        helper_labels="auto",
        l2sp_alpha: float = 0.0,
        rehearsal="auto",
        rehearsal_fraction: float = 0.5,
        rehearsal_rows: int = 2000,
        ema_decay: float = 0.0,
    ) -> "SpectraFMPipeline":
        """Fine-tune a copy of the model on labelled spectra and return a new pipeline (this one is unchanged).

        Every step draws a batch of stars and a fresh random pixel subset of each; all given labels are decoder
        queries (NaN labels are ignored by the loss; ``label_err`` enters the variance). ``freeze`` takes the
        paper's options (``"decoder"``, ``"encoder"``, ``"encoder_block_2"``, ``"embeddings"``).
        For full Trainer/Accelerate runs (checkpoints, evaluation, Hub) use ``scripts/finetune.py``.

        ``labels`` is an array ``(n_spectra, n_labels)`` in the order of ``label_names``, or a table (pandas
        DataFrame or a mapping of columns) with one row per spectrum: its columns named in ``label_names`` (default:
        those of its columns the model predicts) are used, other columns are ignored, and when ``label_err`` is not
        given its ``<LABEL>_err`` columns are the uncertainties. A missing label column raises a ValueError naming it
        and the columns found. ``label_err`` may be an array or a table too; NaN errors count as 0.
        ``l2sp_alpha`` > 0 adds the L2-SP penalty ``alpha * sum |w - w_start|^2`` (stay near the pretrained weights).
        ``rehearsal=(spectra, labels_table)``: earlier training spectra with their labels (columns named like the
        labels; missing ones count as unknown), drawn as ``rehearsal_fraction`` of every batch.
        ``rehearsal="synthetic"``: ``rehearsal_rows`` spectra from the package's emulator of the model's instrument
        (`spectrafm_hf.synth`, the pretraining data: S/N 200, pseudo-continuum), cut to the wavelength span of
        ``spectra``, with their five labels. ``"auto"`` (default): ``"synthetic"`` where the package emulates the
        model's instrument and ``spectra`` overlap its grid, else no rehearsal; ``None``: no rehearsal.
        ``ema_decay`` > 0 returns the running average of the weights over the steps instead of the last weights
        (`spectrafm_hf.training.weight_average`; the Trainer's ``ema_decay``).
        The defaults (lr 3e-4, helper labels, synthetic rehearsal) are the measured best of
        ``benchmarks/pipe_fit_recipe.py``: fitted on 100 metal-rich stars, they keep the default model's metal-poor
        [Fe/H] (RMSE 0.26) where lr 1e-4 without rehearsal forgets it (0.42).
        """
        from .training.freezing import freeze as freeze_parts
        from .training.weight_average import WeightAverage

        if not (isinstance(l2sp_alpha, (int, float)) and math.isfinite(l2sp_alpha) and l2sp_alpha >= 0):
            raise ValueError(f"fit: l2sp_alpha must be a number >= 0, got {l2sp_alpha!r}")

        for arg, value in (("steps", steps), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"fit: {arg} must be an integer >= 1, got {value!r}")
        if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"fit: learning_rate must be a positive number, got {learning_rate!r}")
        if label_names is not None and not isinstance(label_names, str) and len(label_names) == 0:
            raise ValueError("fit: label_names=[] names no label to fit; leave it out to fit the model's labels")
        spectra = _as_list(spectra)
        table = labels if isinstance(labels, (pd.DataFrame, Mapping)) else None
        names, labels, label_err = self._label_arrays(labels, label_names, label_err, len(spectra))
        if not np.isfinite(labels).any():
            raise ValueError(f"fit: every target value of {names} is NaN or infinite; there is nothing to fit")
        helpers = self._helper_values(helper_labels, names, table, spectra, seed)
        if helpers:
            if label_err is None:
                label_err = np.zeros_like(labels)
            names = names + list(helpers)
            labels = np.column_stack([labels, *(v for v, _ in helpers.values())])
            label_err = np.column_stack([label_err, *(e for _, e in helpers.values())])
        _, query_ids = self._query_ids(names)
        own = len(spectra)
        if rehearsal is not None:  # appended after the fit's own rows; drawn separately below
            if not 0 < rehearsal_fraction < 1:
                raise ValueError(f"fit: rehearsal_fraction must be in (0, 1), got {rehearsal_fraction!r}")
            if isinstance(rehearsal, str):
                rehearsal = self._synthetic_rehearsal(rehearsal, spectra, rehearsal_rows, seed)
        if rehearsal is not None:
            r_spectra, r_table = _as_list(rehearsal[0]), pd.DataFrame(dict(rehearsal[1]))
            if len(r_table) != len(r_spectra):
                raise ValueError(f"fit: rehearsal has {len(r_spectra)} spectra and {len(r_table)} label rows")
            r_labels = np.column_stack([r_table[n].to_numpy(np.float64) if n in r_table.columns
                                        else np.full(len(r_table), np.nan) for n in names])
            spectra = list(spectra) + r_spectra
            labels = np.concatenate([labels, r_labels])
            if label_err is not None:
                label_err = np.concatenate([label_err, np.zeros_like(r_labels)])
        target, target_err = self.processor.scale_labels(
            labels, names, np.zeros_like(labels) if label_err is None else np.nan_to_num(label_err, nan=0.0)
        )
        prepared = []
        for s in spectra:
            wl, x, good = self.processor.normalize(s)
            prepared.append((wl[good], x[good]))
        model = copy.deepcopy(self.model).train()
        freeze_parts(model, freeze)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("every parameter is frozen; nothing to fine-tune")
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
        start = [p.detach().clone() for p in params] if l2sp_alpha > 0 else None  # L2-SP anchor
        average = WeightAverage(model, ema_decay) if ema_decay else None
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        ctx = self.processor.context_length
        q = torch.as_tensor(query_ids, device=self.device)
        for step in range(steps):
            if len(spectra) > own:  # rehearsal: a fixed share of every batch
                n_old = min(len(spectra) - own, max(1, round(batch_size * rehearsal_fraction)))
                n_new = min(own, max(1, batch_size - n_old))
                rows = np.concatenate([rng.choice(own, n_new, replace=False),
                                       own + rng.choice(len(spectra) - own, n_old, replace=False)])
            else:
                rows = rng.choice(len(spectra), size=min(batch_size, len(spectra)), replace=False)
            picked = []
            for r in rows:
                wl, x = prepared[r]
                keep = rng.choice(wl.size, size=min(ctx, wl.size), replace=False)
                picked.append((wl[keep], x[keep]))
            batch = SpectraFMProcessor._pad(picked, "pt")
            out = model(
                flux=batch["flux"].to(self.device),
                wavelength=batch["wavelength"].to(self.device),
                observed_mask=batch["observed_mask"].to(self.device),
                query_ids=q.expand(len(rows), -1),
                labels=torch.as_tensor(target[rows], dtype=torch.float32, device=self.device),
                label_err=torch.as_tensor(target_err[rows], dtype=torch.float32, device=self.device),
            )
            total = out.loss
            if start is not None:
                total = total + l2sp_alpha * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if average is not None:
                average.update()
            loss = float(out.loss.detach())
            if callback is not None:
                callback(step, loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {step}")
        if average is not None:
            average.copy_to_model()
        for p in model.parameters():
            p.requires_grad_(True)
        processor = copy.deepcopy(self.processor)
        processor.label_affine = {}  # fitted to the old network's predictions
        processor.linear_probes = {}  # read from the old network's features
        return SpectraFMPipeline(model.eval(), processor, self.device, self.batch_size, self.bf16, self.compile)
