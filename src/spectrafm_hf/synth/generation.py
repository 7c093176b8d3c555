"""Emulated spectra on an instrument's grid: :func:`emulate` (noiseless) and :func:`generate` (with noise or the
full observed-domain realism; see :mod:`spectrafm_hf.synth`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
import numpy as np

from . import realism
from .emulator import LABEL_NAMES, Emulator, load_emulator
from .instruments import InstrumentSpec, get_instrument
from .priors import sample_labels

@functools.lru_cache(maxsize=8)
def _emulator_for(spec: InstrumentSpec) -> Emulator:
    emu = load_emulator(realism.resource_path(spec.emulator_file))
    if emu.n_pixels != spec.n_pixels or not np.allclose(emu.wavelength, spec.wavelength, rtol=1e-10):
        raise ValueError(f"{spec.emulator_file}: wavelength grid differs from instrument {spec.name!r}")
    return emu


def get_emulator(instrument: str | InstrumentSpec = "apogee") -> Emulator:
    """The (cached) :class:`~spectrafm_hf.synth.emulator.Emulator` of an instrument."""
    return _emulator_for(get_instrument(instrument))


def emulate(labels, instrument: str | InstrumentSpec = "apogee", clip: bool = True) -> np.ndarray:
    """Noiseless continuum-normalised flux (n, n_pixels) float32 on the instrument grid for (n, 5) labels.

    Labels outside the valid box are clamped into it (``clip=True``) or rejected (``clip=False``).
    """
    return get_emulator(instrument)(labels, clip=clip)


# =============================================================================================== generate
@dataclass
class SyntheticSet:
    """A batch of synthetic spectra. Unpacks as ``flux, wavelength, labels = generate(...)``.

    Attributes:
        flux: (n, n_pixels) float32; NaN at masked pixels in the observed domain.
        wavelength: (n_pixels,) vacuum Angstrom, common to all spectra.
        labels: (n, 5) float32 TEFF, LOGG, O_FE, MG_FE, FE_H. In the observed domain these are CATALOGUE labels
            (true labels + ASPCAP-like noise), as a survey would give them; ``true_labels`` holds the truth.
        label_err: (n, 5) float32 1-sigma catalogue errors (observed domain), else None.
        ivar: (n, n_pixels) float32 inverse variance (0 = masked) when noise was added, else None.
        mask: (n, n_pixels) bool, True = good pixel; None for noiseless clean spectra (every pixel good).
        true_labels: (n, 5) float32 labels the spectra were generated with.
        snr: (n,) continuum S/N when noise was added, else None.
        info: per-star draws of the realism layer (resolution, rv_kms, carbon_dex, vmic_kms, ...).
        instrument, observed: provenance.
    """

    flux: np.ndarray
    wavelength: np.ndarray
    labels: np.ndarray
    label_err: np.ndarray | None = None
    ivar: np.ndarray | None = None
    mask: np.ndarray | None = None
    true_labels: np.ndarray | None = None
    snr: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    instrument: str = "apogee"
    observed: bool = False

    def __iter__(self):
        yield self.flux
        yield self.wavelength
        yield self.labels

    @property
    def n(self) -> int:
        return int(self.flux.shape[0])

    def to_spectra(self) -> list:
        """One :class:`~spectrafm_hf.spectrum.Spectrum` per star; labels (and errors) in ``meta``."""
        from ..spectrum import Spectrum

        out = []
        for i in range(self.n):
            meta = {"labels": dict(zip(LABEL_NAMES, map(float, self.labels[i]))), "synthetic": True, "normalized": True,
                    "observed_domain": self.observed, "object_id": f"synth-{self.instrument}-{i}"}
            if self.true_labels is not None:
                meta["true_labels"] = dict(zip(LABEL_NAMES, map(float, self.true_labels[i])))
            if self.label_err is not None:
                meta["label_err"] = dict(zip(LABEL_NAMES, map(float, self.label_err[i])))
            if self.snr is not None:
                meta["snr"] = float(self.snr[i])
            out.append(Spectrum(wavelength=self.wavelength, flux=self.flux[i],
                                ivar=None if self.ivar is None else self.ivar[i],
                                mask=None if self.mask is None else self.mask[i],
                                instrument=self.instrument, meta=meta))
        return out


def generate(n: int, instrument: str | InstrumentSpec = "apogee", seed=0, snr=None, observed: bool = False,
             labels=None, prior=None, as_spectra: bool = False, *, metal_poor_fraction: float | None = None,
             gap_strength: float | None = None, continuum: str = "true", batch_size: int = 1024):
    """Generate ``n`` synthetic spectra of ``instrument``.

    Args:
        n: number of spectra (ignored when ``labels`` is given).
        seed: int seed; the same seed gives the same labels in the clean and the observed domain.
        snr: continuum S/N (scalar or (n,)). Clean domain: None = noiseless; otherwise Gaussian noise with the
            real relative-error shape and ``ivar``. Observed domain: None draws S/N log-uniformly in the
            instrument's ``snr_range`` (APOGEE 200-600, Gaia RVS 20-200).
        observed: apply the realism layer (see :mod:`spectrafm_hf.synth.realism`).
        labels: (n, 5) labels to use instead of sampling.
        prior: passed to :func:`sample_labels` (default: the DR17-shaped prior; or a label table).
        as_spectra: return ``list[Spectrum]`` instead of a :class:`SyntheticSet`.
        metal_poor_fraction: fraction of stars with [Fe/H] < -1 for the parametric prior.
        gap_strength: strength of the physics gap in the observed domain (default: the instrument's, 1.0).
        continuum: ``"true"`` (default): flux normalised by the true continuum (the emulator's convention; in the
            observed domain only the renormalisation ERROR is added). ``"pseudo"``: every spectrum, clean or
            observed, divided by its per-chip polynomial pseudo-continuum on the continuum pixels, as
            ASPCAP/astroNN-normalised survey spectra are (matters for cool giants, up to ~25 %).
        batch_size: rows per emulator/realism batch (results depend on it only through the random stream).

    Returns:
        :class:`SyntheticSet` (unpacks as ``flux, wavelength, labels``) or ``list[Spectrum]``.
    """
    spec = get_instrument(instrument)
    if continuum not in ("true", "pseudo"):
        raise ValueError("continuum must be 'true' or 'pseudo'")
    ss = np.random.SeedSequence(seed if not isinstance(seed, np.random.Generator) else
                                int(seed.integers(0, 2**63 - 1)))
    s_lab, s_obs = ss.spawn(2)
    if labels is None:
        true = sample_labels(n, seed=np.random.default_rng(s_lab), prior="default" if prior is None else prior,
                             metal_poor_fraction=metal_poor_fraction, instrument=spec)
    else:
        true = np.asarray(labels, np.float32)
        if true.ndim != 2 or true.shape[1] != 5:
            raise ValueError(f"labels must have shape (n, 5) in the order {LABEL_NAMES}")
    n = true.shape[0]
    emu = _emulator_for(spec)
    flux = np.empty((n, spec.n_pixels), np.float32)
    rng = np.random.default_rng(s_obs)
    noisy = observed or snr is not None
    ivar = np.empty((n, spec.n_pixels), np.float32) if noisy else None
    mask = np.ones((n, spec.n_pixels), bool) if noisy else None
    snr_arr = None
    if snr is not None:
        snr_arr = np.broadcast_to(np.asarray(snr, np.float64), (n,)).astype(np.float32)
        if np.any(snr_arr <= 0):
            raise ValueError("snr must be > 0")
    cat, err = (np.empty((n, 5), np.float32), np.empty((n, 5), np.float32)) if observed else (None, None)
    infos: list[dict] = []
    for i in range(0, n, batch_size):
        sl = slice(i, min(i + batch_size, n))
        f = emu(true[sl])
        if observed:
            ob = realism.observe(f, true[sl], spec, rng, snr=None if snr_arr is None else snr_arr[sl],
                                 gap_strength=gap_strength, continuum=continuum)
            flux[sl], ivar[sl], mask[sl], cat[sl], err[sl] = ob.flux, ob.ivar, ob.mask, ob.labels, ob.label_err
            infos.append(ob.info)
        elif snr_arr is not None:
            tpl = realism.load_templates(spec)
            k_tpl = rng.integers(0, tpl.noise_shape.shape[0], size=f.shape[0])
            flux[sl], ivar[sl] = realism.add_noise(f, tpl.noise_shape[k_tpl], snr_arr[sl], spec.realism.noise_floor,
                                                   rng)
            infos.append({"template": k_tpl.astype(np.int16)})
        else:
            flux[sl] = f
        if continuum == "pseudo" and not observed:
            c = realism.pseudo_continuum(f, spec)
            flux[sl] /= c
            if ivar is not None:
                ivar[sl] *= c**2
    info = {}
    if infos:
        info = {k: np.concatenate([d[k] for d in infos]) for k in infos[0]}
        snr_arr = info.get("snr", snr_arr)
    out = SyntheticSet(flux=flux, wavelength=spec.wavelength.copy(), labels=cat if observed else true.copy(),
                       label_err=err, ivar=ivar, mask=mask, true_labels=true, snr=snr_arr, info=info,
                       instrument=spec.name, observed=observed)
    return out.to_spectra() if as_spectra else out
