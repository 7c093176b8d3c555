"""The ``"stellar-labels"`` task of ``transformers.pipeline`` (registered by ``import spectrafm_hf``):

    >>> import spectrafm_hf                                                   # doctest: +SKIP
    >>> from transformers import pipeline                                     # doctest: +SKIP
    >>> labeller = pipeline("stellar-labels", model="spectrafm-base")         # doctest: +SKIP
    >>> table = labeller(spectra)        # the DataFrame of SpectraFMPipeline.predict, row for row

Inputs are a `Spectrum`, a list of them, or paths of files `spectrafm_hf.read` understands. A list is labelled in
one `SpectraFMPipeline.predict` call (spectra share forward passes), so the table is the same as the package's.
"""

from __future__ import annotations

import os

from transformers import Pipeline

from .pipeline import SpectraFMPipeline
from .spectrum import Spectrum

__all__ = ["StellarLabelsPipeline"]


def _spectra(inputs) -> list[Spectrum]:
    from .instruments import read

    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    spectra = []
    for item in items:
        if isinstance(item, Spectrum):
            spectra.append(item)
        elif isinstance(item, (str, os.PathLike)):
            spectra.extend(read(item))
        else:
            raise TypeError(f"stellar-labels takes Spectrum objects or file paths, got a {type(item).__name__}")
    return spectra


class StellarLabelsPipeline(Pipeline):
    """`transformers.Pipeline` for stellar labels: a `SpectraFMModel` and its `SpectraFMProcessor` (loaded as the
    feature extractor). Call arguments: ``labels``, ``seed``, ``n_repeats``, ``known`` (as
    `SpectraFMPipeline.predict`)."""

    _load_feature_extractor = True
    _load_tokenizer = False
    _load_processor = False
    _load_image_processor = False
    _pipeline_calls_generate = False

    def __init__(self, model, feature_extractor=None, **kwargs):
        if feature_extractor is None:
            raise ValueError("stellar-labels needs the model's SpectraFMProcessor: pass feature_extractor=...")
        super().__init__(model=model, feature_extractor=feature_extractor, **kwargs)
        self.labeller = SpectraFMPipeline(self.model, self.feature_extractor, device=self.device)

    def _sanitize_parameters(self, labels=None, seed=None, n_repeats=None, known=None, **unused):
        if unused:
            raise TypeError(f"stellar-labels got unexpected arguments {sorted(unused)}; it takes labels, seed, "
                            f"n_repeats, known")
        forward = dict(labels=labels, seed=seed, n_repeats=n_repeats, known=known)
        return {}, {k: v for k, v in forward.items() if v is not None}, {}

    def __call__(self, inputs, **kwargs):
        """Label ``inputs`` (a `Spectrum`, a list, or file paths) and return a `pandas.DataFrame`."""
        _, forward, _ = self._sanitize_parameters(**kwargs)
        return self.labeller.predict(_spectra(inputs), **forward)

    # Pipeline's per-item protocol, for callers that drive it directly (one spectrum at a time).
    def preprocess(self, inputs):
        return {"spectra": _spectra(inputs)}

    def _forward(self, model_inputs, **forward_params):
        return self.labeller.predict(model_inputs["spectra"], **forward_params)

    def postprocess(self, model_outputs):
        return model_outputs
