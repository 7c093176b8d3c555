"""Synthetic stellar spectra: label priors, the shipped 5-label emulator, and the instrument/realism layer.

Public contract (labels are always TEFF [K], LOGG, O_FE, MG_FE, FE_H, in that order):

- :func:`generate` ``(n, instrument="apogee", seed=0, snr=None, observed=False, labels=None, prior=None,
  as_spectra=False)`` -> :class:`SyntheticSet`, which unpacks as ``flux, wavelength, labels = generate(...)``.
  ``observed=False``: clean emulated spectra (plus Gaussian noise with the real error shape if ``snr`` is given).
  ``observed=True``: the "observed domain" of :mod:`spectrafm_hf.synth.realism` (physics gap, LSF, RV, tellurics,
  sky, noise, renormalisation, masks, clipping, label noise). ``as_spectra=True`` returns ``list[Spectrum]``.
- :func:`emulate` ``(labels, instrument="apogee")`` -> noiseless continuum-normalised flux (n, n_pixels).
- :func:`sample_labels` ``(n, seed=0, prior="default")``: the shipped label prior or sampling from a label table.
- :data:`INSTRUMENTS`: the registry of :class:`InstrumentSpec`. A second instrument is one more entry: an
  emulator weights file in ``resources/emulators/``, a wavelength grid, its R and chip layout, and a
  :class:`RealismSpec` (templates on any grid, resampled at load). See :func:`register_instrument`.

Valid label box (APOGEE): the range of the MOOG training grid, TEFF 3550-6692 K, LOGG 0.0-4.9, O_FE -0.518..0.725,
MG_FE -0.221..0.650, FE_H -2.498..0.500. The prior only samples inside it; :func:`emulate` clamps into it.

Instruments: ``"apogee"`` (:data:`APOGEE`, 7514 px, R 22,500) and ``"gaia_rvs"`` (:data:`GAIA_RVS`, the Gaia DR3 RVS
mean-spectrum grid 8460.0 + 0.1 i A vacuum, 2401 px, R 11,500; valid box TEFF 3550-6675 K, LOGG 0.0-4.94,
O_FE -0.252..0.642, MG_FE -0.205..0.569, FE_H -2.499..0.492). All their numbers are documented in their specs.

Modules: :mod:`.instruments` (specs and registry), :mod:`.priors` (label prior, :func:`sample_labels`),
:mod:`.generation` (:func:`emulate`, :func:`generate`); :mod:`.emulator`, :mod:`.realism`, :mod:`.augment`,
:mod:`.optical` and :mod:`.moog` as before.
"""

from __future__ import annotations

from .emulator import LABEL_NAMES
from .generation import SyntheticSet, emulate, generate, get_emulator
from .instruments import (APOGEE, GAIA_RVS, INSTRUMENTS, GapSpec, InstrumentSpec, RealismSpec, get_instrument,
                          register_instrument)
from .priors import DEFAULT_PRIOR, LabelPrior, sample_labels

__all__ = [
    "LABEL_NAMES",
    "GapSpec",
    "RealismSpec",
    "InstrumentSpec",
    "APOGEE",
    "GAIA_RVS",
    "INSTRUMENTS",
    "register_instrument",
    "get_instrument",
    "LabelPrior",
    "DEFAULT_PRIOR",
    "sample_labels",
    "get_emulator",
    "emulate",
    "SyntheticSet",
    "generate",
]
