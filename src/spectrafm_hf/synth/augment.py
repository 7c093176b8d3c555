"""Realism augmentation for pretraining: the cheap, label-free parts of the observed domain, applied on the fly.

:func:`spectrafm_hf.synth.generate` with ``observed=True`` runs the whole realism layer (physics gap, LSF, RV,
renormalisation...) in numpy: right for fine-tuning sets, too slow to feed a GPU. :class:`RealismAugment` applies,
to spectra that already exist (clean emulated flux, or dataset rows), only the effects that do not change what the
labels mean, so a model pretrained on synthetic spectra has seen real-looking defects:

- **noise**: extra Gaussian noise bringing a spectrum to a continuum S/N drawn log-uniformly in ``snr_range``, with
  the instrument's real relative-error shape (``sigma = shape * sqrt(max(f, 0.01)) / snr``; the noise already in the
  input is neglected, so use it on clean or high-S/N spectra);
- **continuum errors**: a smooth multiplicative ripple per chip (Legendre degrees 1-3, rms ``continuum_ripple``),
  the error a pipeline's continuum normalisation leaves;
- **telluric and sky residuals**: ``f *= T**eps`` and ``f += alpha * sky`` with the instrument's real templates at a
  random barycentric velocity (``telluric_eps_sigma``, ``sky_alpha_sigma``);
- **masks**: the real bad-pixel templates (``pixmask``) and ``Poisson(bad_chunks_mean)`` random bad chunks become
  masked pixels (``good = False``).

Unset numbers (None) take the instrument's :class:`~spectrafm_hf.synth.RealismSpec` values, the ones the observed
domain uses. Templates need the instrument's own grid: a spectrum of another length gets a flat noise shape, one
chip, and no telluric/sky/pixmask templates.

Two paths share the parameters: :meth:`RealismAugment.__call__` (numpy, one spectrum; the training collator's
``augment`` hook) and :meth:`RealismAugment.torch_batch` (a batch of tensors on any device; the GPU stream
:class:`spectrafm_hf.training.synthetic_stream.SyntheticStream`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["RealismAugment"]


def _legendre(m: int) -> np.ndarray:
    return np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, m), 3)[:, 1:]  # (m, 3), degrees 1..3


@dataclass
class RealismAugment:
    """Label-free realism effects for pretraining (see the module docstring).

    Args:
        instrument: name in :data:`spectrafm_hf.synth.INSTRUMENTS` (templates, chips, defaults).
        prob: fraction of spectra augmented; the others pass unchanged.
        snr_range: (lo, hi) continuum S/N, log-uniform; None = no extra noise.
        continuum_ripple: rms of the per-chip ripple (None = the instrument's; 0 = off).
        telluric_eps_sigma, sky_alpha_sigma: telluric / sky residual strengths (None = the instrument's; 0 = off).
        pixmask: mask the pixels the real bad-pixel templates flag.
        bad_chunks_mean: Poisson mean of random bad chunks per spectrum (None = the instrument's; 0 = off).
        bad_chunk_length: (min, max) chunk length in pixels (None = the instrument's).
    """

    instrument: str = "apogee"
    prob: float = 1.0
    snr_range: tuple[float, float] | None = None
    continuum_ripple: float | None = None
    telluric_eps_sigma: float | None = None
    sky_alpha_sigma: float | None = None
    pixmask: bool = True
    bad_chunks_mean: float | None = None
    bad_chunk_length: tuple[int, int] | None = None

    def __post_init__(self):
        from . import get_instrument

        self.spec = get_instrument(self.instrument)
        rs = self.spec.realism
        pick = lambda v, d: d if v is None else v  # noqa: E731
        self.continuum_ripple = float(pick(self.continuum_ripple, rs.continuum_ripple))
        self.telluric_eps_sigma = float(pick(self.telluric_eps_sigma, rs.telluric_eps_sigma))
        self.sky_alpha_sigma = float(pick(self.sky_alpha_sigma, rs.sky_alpha_sigma))
        self.bad_chunks_mean = float(pick(self.bad_chunks_mean, rs.bad_chunks_mean))
        self.bad_chunk_length = tuple(int(v) for v in pick(self.bad_chunk_length, rs.bad_chunk_length))
        if not 0.0 <= float(self.prob) <= 1.0:
            raise ValueError(f"RealismAugment: prob must be in [0, 1], got {self.prob}")
        if self.snr_range is not None:
            lo, hi = (float(v) for v in self.snr_range)
            if not 0 < lo <= hi:
                raise ValueError(f"RealismAugment: snr_range must be 0 < lo <= hi, got {self.snr_range}")
            self.snr_range = (lo, hi)
        for name in ("continuum_ripple", "telluric_eps_sigma", "sky_alpha_sigma", "bad_chunks_mean"):
            if getattr(self, name) < 0:
                raise ValueError(f"RealismAugment: {name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.bad_chunk_length[0] <= self.bad_chunk_length[1]:
            raise ValueError(f"RealismAugment: bad_chunk_length must be 1 <= min <= max, got {self.bad_chunk_length}")
        self._torch_cache = {}

    @classmethod
    def from_dict(cls, values: dict | None):
        """From a YAML mapping (None or {} = None: no augmentation)."""
        if not values:
            return None
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"augment: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**values)

    # ------------------------------------------------------------------ templates
    def _bank(self):
        from . import realism

        return realism._shifted_template_bank(self.spec.name, self.spec)

    def _on_grid(self, n: int) -> bool:
        return n == self.spec.n_pixels

    # ------------------------------------------------------------------ numpy, one spectrum
    def __call__(self, flux: np.ndarray, good: np.ndarray, rng: np.random.Generator):
        """Augment one spectrum: returns new (flux float64, good bool) arrays; the inputs are not modified."""
        flux = np.array(flux, dtype=np.float64)
        good = np.array(good, dtype=bool)
        if self.prob < 1.0 and rng.random() >= self.prob:
            return flux, good
        from . import realism

        n = flux.size
        on_grid = self._on_grid(n)
        if on_grid and (self.telluric_eps_sigma > 0 or self.sky_alpha_sigma > 0 or self.pixmask):
            vel, ln_tell, sky, bad = self._bank()
            k, v = rng.integers(0, ln_tell.shape[0]), rng.integers(0, vel.size)
            flux *= np.exp(rng.normal(0.0, self.telluric_eps_sigma) * ln_tell[k, v])
            flux += rng.normal(0.0, self.sky_alpha_sigma) * sky[k, v]
            if self.pixmask:
                good &= ~bad[k, v]
        if self.continuum_ripple > 0:
            chips = self.spec.chips if on_grid else ((0, n),)
            for a, b in chips:
                coef = rng.normal(0.0, self.continuum_ripple / np.sqrt(3.0), size=3)
                flux[a:b] *= 1.0 + _legendre(b - a) @ coef
        if self.snr_range is not None:
            tpl = realism.load_templates(self.spec)
            shape = tpl.noise_shape[rng.integers(0, tpl.noise_shape.shape[0])] if on_grid else 1.0
            snr = np.exp(rng.uniform(np.log(self.snr_range[0]), np.log(self.snr_range[1])))
            sigma = np.maximum(shape * np.sqrt(np.maximum(flux, 0.01)) / snr, self.spec.realism.noise_floor)
            flux += sigma * rng.standard_normal(n)
        for _ in range(rng.poisson(self.bad_chunks_mean) if self.bad_chunks_mean > 0 else 0):
            ln = int(rng.integers(self.bad_chunk_length[0], self.bad_chunk_length[1] + 1))
            st = int(rng.integers(0, max(1, n - ln)))
            good[st:st + ln] = False
        return flux, good

    # ------------------------------------------------------------------ torch, a batch on any device
    def _tensors(self, device):
        key = str(device)
        if key not in self._torch_cache:
            from . import realism

            vel, ln_tell, sky, bad = self._bank()
            tpl = realism.load_templates(self.spec)
            legendre = torch.zeros(3, self.spec.n_pixels)
            chip_id = torch.zeros(self.spec.n_pixels, dtype=torch.long)
            for c, (a, b) in enumerate(self.spec.chips):
                legendre[:, a:b] = torch.as_tensor(_legendre(b - a).T, dtype=torch.float32)
                chip_id[a:b] = c
            self._torch_cache[key] = {
                "ln_tell": torch.as_tensor(ln_tell, device=device).flatten(0, 1),
                "sky": torch.as_tensor(sky, device=device).flatten(0, 1),
                "bad": torch.as_tensor(bad, device=device).flatten(0, 1),
                "shape": torch.as_tensor(tpl.noise_shape, dtype=torch.float32, device=device),
                "legendre": legendre.to(device),
                "chip_id": chip_id.to(device),
            }
        return self._torch_cache[key]

    def torch_batch(self, flux: torch.Tensor, good: torch.Tensor, generator: torch.Generator | None = None):
        """Augment a batch (B, n_pixels) on the instrument grid, on flux's device. Returns new (flux, good)."""
        B, n = flux.shape
        if not self._on_grid(n):
            raise ValueError(f"RealismAugment.torch_batch: spectra have {n} pixels, the {self.spec.name!r} grid "
                             f"{self.spec.n_pixels}")
        dev = flux.device
        t = self._tensors(dev)
        g = dict(generator=generator, device=dev)
        on = torch.rand(B, 1, **g) < self.prob
        out = flux.float().clone()
        good0, good = good.bool(), good.bool().clone()
        row = torch.randint(0, t["ln_tell"].shape[0], (B,), **g)
        if self.telluric_eps_sigma > 0:
            out = out * torch.exp(torch.randn(B, 1, **g) * self.telluric_eps_sigma * t["ln_tell"][row])
        if self.sky_alpha_sigma > 0:
            out = out + torch.randn(B, 1, **g) * self.sky_alpha_sigma * t["sky"][row]
        if self.pixmask:
            good = good & ~t["bad"][row]
        if self.continuum_ripple > 0:
            n_chips = len(self.spec.chips)
            coef = torch.randn(B, n_chips, 3, **g) * (self.continuum_ripple / np.sqrt(3.0))
            ripple = (coef[:, t["chip_id"], :] * t["legendre"].T[None]).sum(-1)  # (B, n)
            out = out * (1.0 + ripple)
        if self.snr_range is not None:
            lo, hi = np.log(self.snr_range[0]), np.log(self.snr_range[1])
            snr = torch.exp(lo + (hi - lo) * torch.rand(B, 1, **g))
            shape = t["shape"][torch.randint(0, t["shape"].shape[0], (B,), **g)]
            sigma = (shape * out.clamp_min(0.01).sqrt() / snr).clamp_min(self.spec.realism.noise_floor)
            out = out + sigma * torch.randn(B, n, **g)
        if self.bad_chunks_mean > 0:  # 4 slots, each on with P(Poisson(mean / 4) > 0): about Poisson(mean) chunks
            k = torch.poisson(torch.full((B, 4), self.bad_chunks_mean / 4, device=dev), generator=generator) > 0
            lo, hi = self.bad_chunk_length
            length = torch.randint(lo, hi + 1, (B, 4), **g)
            start = (torch.rand(B, 4, **g) * (n - length).clamp_min(1)).long()
            pos = torch.arange(n, device=dev)[None, None, :]
            chunk = k[..., None] & (pos >= start[..., None]) & (pos < (start + length)[..., None])
            good = good & ~chunk.any(1)
        return torch.where(on, out, flux.float()), torch.where(on, good, good0)
