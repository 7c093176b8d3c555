"""`Spectrum`: one stellar spectrum with the package's conventions.

Conventions (the whole package follows them; see docs/input_conventions.md):

- wavelength: **vacuum, Angstrom**, strictly increasing after construction (a descending array is reversed,
  together with every per-pixel array; duplicated wavelengths are an error). Plain arrays are taken to be in
  Angstrom and checked for the classic unit mistakes (nm, microns); an astropy ``Quantity`` is converted exactly.
  Air wavelengths are converted with :func:`air_to_vacuum` (readers do this when the file says "air").
- flux: any units; the processor normalises it. NaN/inf flux marks a missing pixel.
- ivar (inverse variance) or flux_err (one of the two): ``ivar == 0`` marks a missing pixel; negative or
  infinite ivar is an error.
- mask: boolean, **True = good/observed** (the one missing-data rule of the package: a pixel is used iff
  ``mask & isfinite(flux) & (ivar > 0 if ivar is given)``). A bad-pixel mask (True / nonzero = bad, e.g. a survey
  bitmask or specutils' convention) goes in ``bad_mask=`` instead; an integer ``mask`` holding values other than
  0/1 (a bitmask passed by mistake) is refused.
- lsf_sigma: optional line-spread-function Gaussian sigma in Angstrom (scalar or per pixel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Spectrum", "air_to_vacuum", "vacuum_to_air", "SpectrumError"]

# Plain-array wavelengths below this are almost certainly not Angstrom (nm or microns by mistake).
_MIN_PLAUSIBLE_ANGSTROM = 2000.0


class SpectrumError(ValueError):
    """A spectrum that cannot be used, with the reason (and the source, when known) in the message."""


def air_to_vacuum(wavelength_air):
    """Air -> vacuum wavelength in Angstrom (Morton 2000 / IAU formula, as used by SDSS and VALD).

    Exact to ~1e-4 A over 2000 A - 25 um; wavelengths below 2000 A are returned unchanged (IAU convention).
    """
    wl = np.asarray(wavelength_air, dtype=np.float64)
    sigma2 = (1e4 / wl) ** 2
    n = 1.0 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - sigma2) + 1.599740894897e-4 / (
        38.92568793293 - sigma2
    )
    return np.where(wl >= 2000.0, wl * n, wl)


def vacuum_to_air(wavelength_vacuum):
    """Vacuum -> air wavelength in Angstrom (Morton 2000), the inverse of :func:`air_to_vacuum`."""
    wl = np.asarray(wavelength_vacuum, dtype=np.float64)
    sigma2 = (1e4 / wl) ** 2
    n = 1.0 + 0.0000834254 + 0.02406147 / (130.0 - sigma2) + 0.00015998 / (38.9 - sigma2)
    return np.where(wl >= 2000.0, wl / n, wl)


def _as_angstrom(wavelength, source: str) -> np.ndarray:
    try:  # astropy Quantity: exact conversion, no guessing
        from astropy import units as u

        if isinstance(wavelength, u.Quantity):
            return np.asarray(wavelength.to_value(u.AA, equivalencies=u.spectral()), dtype=np.float64)
    except ImportError:  # pragma: no cover - astropy is a dependency
        pass
    wl = np.asarray(wavelength, dtype=np.float64)
    finite = wl[np.isfinite(wl)]
    if finite.size and np.median(finite) < _MIN_PLAUSIBLE_ANGSTROM:
        med = float(np.median(finite))
        guess = "microns" if med < 50 else "nanometres"
        raise SpectrumError(
            f"{source}wavelengths look like {guess} (median {med:.4g}), but plain arrays must be vacuum Angstrom. "
            f"Multiply by {'1e4' if guess == 'microns' else '10'} or pass an astropy Quantity with its unit."
        )
    return wl


def _good_mask(mask, src: str) -> np.ndarray:
    """A good-pixel mask (True = good) as bool; an integer array with values beyond 0/1 is a bitmask by mistake."""
    m = np.asarray(mask)
    if m.dtype.kind in "iuf":
        m = np.nan_to_num(m.astype(np.float64), nan=0.0)
        if m.size and not np.isin(m, (0.0, 1.0)).all():
            raise SpectrumError(
                f"{src}mask holds values other than 0/1 (max {m.max():g}): it looks like a bitmask, where nonzero "
                "means bad. mask= is True = good; pass a bad-pixel mask as bad_mask= (or mask=(bitmask & bad_bits) == 0)")
    return m.astype(bool)


def _as_flux(flux) -> np.ndarray:
    try:
        from astropy import units as u

        if isinstance(flux, u.Quantity):
            return np.asarray(flux.value, dtype=np.float64)
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(flux, dtype=np.float64)


def _astropy():
    """(astropy.units, InverseVariance). Imported inside try: this file is also remote code (beside a checkpoint's
    weights), which may import only numpy/torch/transformers at load time."""
    try:
        import astropy.units as u
        from astropy.nddata import InverseVariance
    except ImportError:
        raise ImportError("this needs astropy: pip install astropy") from None
    return u, InverseVariance


@dataclass
class Spectrum:
    """One stellar spectrum: vacuum wavelength [Angstrom], flux, inverse variance, good-pixel mask.

    Args:
        wavelength: vacuum wavelengths in Angstrom (array or astropy Quantity of any spectral unit).
        flux: flux values (NaN = missing).
        flux_err: 1-sigma flux uncertainty (alternative to ``ivar``; ``ivar = 1/flux_err**2``, 0 where err is
            0, NaN or inf).
        ivar: inverse variance (0 = missing). Give ``flux_err`` or ``ivar``, not both.
        mask: boolean good-pixel mask, True = observed (good).
        bad_mask: boolean bad-pixel mask, True / nonzero = bad (the opposite convention; combined with ``mask``).
        lsf_sigma: Gaussian LSF sigma in Angstrom, scalar or per pixel (optional).
        instrument: free-text instrument name, e.g. ``"apogee"``.
        meta: anything else (object id, source file, header values...).

    Example:
        >>> import numpy as np
        >>> s = Spectrum(wavelength=np.linspace(15200.0, 15300.0, 5), flux=[1.0, 0.9, np.nan, 1.0, 0.95])
        >>> int(s.good.sum())
        4
    """

    wavelength: Any
    flux: Any
    flux_err: Any = None
    ivar: Any = None
    mask: Any = None
    lsf_sigma: Any = None
    instrument: str | None = None
    meta: dict = field(default_factory=dict)
    bad_mask: Any = None

    def __post_init__(self):
        src = f"{self.meta['source']}: " if self.meta.get("source") else ""
        wl = _as_angstrom(self.wavelength, src)
        flux = _as_flux(self.flux)
        if wl.ndim != 1 or flux.ndim != 1:
            raise SpectrumError(f"{src}wavelength and flux must be 1-D, got shapes {wl.shape} and {flux.shape}")
        if wl.size == 0:
            raise SpectrumError(f"{src}empty spectrum (no pixels)")
        if wl.size != flux.size:
            raise SpectrumError(f"{src}wavelength has {wl.size} pixels but flux has {flux.size}")
        if not np.all(np.isfinite(wl)):
            raise SpectrumError(f"{src}wavelength contains NaN or inf; mark bad pixels with mask/NaN flux instead")
        if self.flux_err is not None and self.ivar is not None:
            raise SpectrumError(f"{src}give flux_err or ivar, not both")
        ivar = None
        if self.flux_err is not None:
            err = _as_flux(self.flux_err)
            self._check_len(err, "flux_err", wl.size, src)
            if np.any(err[np.isfinite(err)] < 0):
                raise SpectrumError(f"{src}flux_err has negative values")
            with np.errstate(divide="ignore", invalid="ignore"):
                ivar = np.where(np.isfinite(err) & (err > 0), 1.0 / err**2, 0.0)
        elif self.ivar is not None:
            ivar = _as_flux(self.ivar)
            self._check_len(ivar, "ivar", wl.size, src)
            if np.any(np.isnan(ivar)):
                ivar = np.where(np.isnan(ivar), 0.0, ivar)  # NaN ivar = no information = missing
            if np.any(ivar < 0):
                raise SpectrumError(f"{src}ivar has negative values (inverse variance must be >= 0)")
            if np.any(np.isinf(ivar)):
                raise SpectrumError(f"{src}ivar has infinite values (zero uncertainty is not physical)")
        mask = np.ones(wl.size, bool) if self.mask is None else _good_mask(self.mask, src)
        self._check_len(mask, "mask", wl.size, src)
        if self.bad_mask is not None:
            bad = np.asarray(self.bad_mask)
            self._check_len(bad, "bad_mask", wl.size, src)
            mask = mask & ~(bad.astype(bool) if bad.dtype.kind != "f" else (np.nan_to_num(bad, nan=1.0) != 0))
            self.bad_mask = None  # folded into mask: the one good-pixel array from here on
        lsf = self.lsf_sigma
        if lsf is not None and np.ndim(lsf) > 0:
            lsf = np.asarray(lsf, dtype=np.float64)
            self._check_len(lsf, "lsf_sigma", wl.size, src)

        # Documented repair: descending wavelengths (e.g. APOGEE apVisit chips) are reversed.
        if wl.size > 1:
            d = np.diff(wl)
            if not np.all(d > 0):
                order = np.argsort(wl, kind="stable")
                dup = np.flatnonzero(np.diff(wl[order]) == 0)
                if dup.size:  # anywhere in the array, not only next to each other
                    i, j = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
                    raise SpectrumError(f"{src}duplicated wavelength {wl[i]:.6g} A at pixels {i} and {j}")
                wl, flux, mask = wl[order], flux[order], mask[order]
                ivar = None if ivar is None else ivar[order]
                if lsf is not None and np.ndim(lsf) > 0:
                    lsf = lsf[order]
        self.wavelength, self.flux, self.mask, self.ivar, self.lsf_sigma = wl, flux, mask, ivar, lsf
        self.flux_err = None if ivar is None else np.where(ivar > 0, 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1)), np.inf)

    @staticmethod
    def _check_len(arr, name, n, src):
        if np.ndim(arr) != 1 or len(arr) != n:
            raise SpectrumError(f"{src}{name} has shape {np.shape(arr)} but the spectrum has {n} pixels")

    # ------------------------------------------------------------------ views
    @property
    def good(self) -> np.ndarray:
        """Boolean array of usable pixels: mask & finite flux & (ivar > 0 when ivar is known)."""
        ok = self.mask & np.isfinite(self.flux)
        if self.ivar is not None:
            ok &= self.ivar > 0
        return ok

    @property
    def n_good(self) -> int:
        return int(self.good.sum())

    def __len__(self) -> int:
        return int(self.wavelength.size)

    def __repr__(self) -> str:
        name = self.meta.get("object_id") or self.meta.get("source") or ""
        return (
            f"Spectrum({name!s} {self.instrument or ''} {len(self)} px, {self.wavelength[0]:.1f}-"
            f"{self.wavelength[-1]:.1f} A, {self.n_good} good)".replace("  ", " ")
        )

    def select(self, keep) -> "Spectrum":
        """A new Spectrum with only the pixels where ``keep`` (bool array or index array) is set."""
        keep = np.asarray(keep)
        lsf = self.lsf_sigma[keep] if self.lsf_sigma is not None and np.ndim(self.lsf_sigma) > 0 else self.lsf_sigma
        return Spectrum(
            wavelength=self.wavelength[keep],
            flux=self.flux[keep],
            ivar=None if self.ivar is None else self.ivar[keep],
            mask=self.mask[keep],
            lsf_sigma=lsf,
            instrument=self.instrument,
            meta=dict(self.meta),
        )

    def crop(self, wmin: float, wmax: float) -> "Spectrum":
        """Pixels with ``wmin <= wavelength <= wmax`` (Angstrom)."""
        return self.select((self.wavelength >= wmin) & (self.wavelength <= wmax))

    # ------------------------------------------------------------------ interop
    @classmethod
    def from_air(cls, wavelength_air, flux, **kwargs) -> "Spectrum":
        """Build from air wavelengths (Angstrom or a Quantity); converted to vacuum."""
        return cls(wavelength=air_to_vacuum(_as_angstrom(wavelength_air, "")), flux=flux, **kwargs)

    def to_specutils(self):
        """A specutils ``Spectrum1D`` (``Spectrum`` in specutils >= 2) with vacuum Angstrom axis,
        ``InverseVariance`` uncertainty and specutils' mask convention (True = bad)."""
        u, InverseVariance = _astropy()
        try:  # (imports inside try: the remote-code copy of this file must not require astropy/specutils)
            from specutils import Spectrum as _S1D
        except ImportError:  # specutils < 2
            try:
                from specutils import Spectrum1D as _S1D
            except ImportError:
                raise ImportError("to_specutils needs specutils: pip install specutils") from None
        unc = None if self.ivar is None else InverseVariance(self.ivar)
        return _S1D(
            flux=self.flux * u.dimensionless_unscaled,
            spectral_axis=self.wavelength * u.AA,
            uncertainty=unc,
            mask=~self.good,
            meta=dict(self.meta),
        )

    @classmethod
    def from_specutils(cls, spec, instrument: str | None = None) -> "Spectrum":
        """Build from a specutils ``Spectrum1D``/``Spectrum`` (1-D flux). Its mask is True = bad."""
        u, InverseVariance = _astropy()

        wl = spec.spectral_axis.to(u.AA, equivalencies=u.spectral())
        ivar = None
        if spec.uncertainty is not None:
            ivar = np.asarray(spec.uncertainty.represent_as(InverseVariance).array)
        mask = None if spec.mask is None else ~np.asarray(spec.mask, bool)
        return cls(wavelength=wl, flux=np.asarray(spec.flux.value), ivar=ivar, mask=mask, instrument=instrument,
                   meta=dict(spec.meta or {}))
