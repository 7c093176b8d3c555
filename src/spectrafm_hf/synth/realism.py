"""The instrument & realism layer: turns clean emulated spectra into "observed-domain" spectra.

Every number used here comes from the instrument's :class:`~spectrafm_hf.synth.RealismSpec` /
:class:`~spectrafm_hf.synth.GapSpec` (see ``INSTRUMENTS["apogee"]`` in ``spectrafm_hf/synth/instruments.py``, the one
documented place); the functions below only implement the recipe. The pipeline (:func:`observe`) applies, in order:

1. **Synthetic-to-real physics gap** (:func:`apply_physics_gap`), on the clean R_grid spectrum. Line depths
   ``d = 1 - f`` become ``d' = d * 10**(beta * s * (eps(lambda) + dC * w_C(lambda))) * (1 + s * kappa * (xi/xi_grid - 1)
   * d / (d + d_half))``, where
   - ``eps(lambda)`` is a FIXED per-line "line-data error" field: every line of the shipped line table gets a
     log gf error ``N(loggf_mean, loggf_sigma)`` dex (drawn once from ``GapSpec.seed``), spread onto pixels with
     the lines' relative strengths and the LSF (so blends average their lines' errors);
   - ``w_C(lambda)`` is the fraction of the pixel's line opacity that comes from CO and CN, and ``dC`` a per-star
     [C/Fe]-like offset ``N(carbon_mean, carbon_sigma)`` dex (the grid ties carbon to oxygen; real stars do not);
   - ``xi`` a per-star microturbulence from a logg law vs the grid's single ``xi_grid`` = 1.5 km/s: saturated
     lines (large ``d``) gain or lose strength, weak lines do not (curve-of-growth behaviour);
   - ``s = GapSpec.strength`` (0 switches the physics gap off; 1 is the default; 2 doubles it).
2. **LSF and residual RV** (:func:`apply_lsf_rv`): per star a resolution R drawn in ``resolution_range`` replaces
   the grid's R (extra Gaussian broadening, or a mild sharpening when R > R_grid), and a residual RV shift of
   ``rv_range_kms`` with a random sign; both in Fourier space, chip by chip.
3. **Telluric residuals**: ``flux *= T_k(lambda shifted by v_bary) ** eps`` with one of the real telluric templates,
   a random barycentric velocity and ``eps ~ N(0, telluric_eps_sigma)``.
4. **Sky residuals**: ``flux += alpha * sky_k`` (real sky template scaled to its strongest lines = 1,
   ``alpha ~ N(0, sky_alpha_sigma)``).
5. **Continuum error**: a smooth per-chip multiplicative ripple (Legendre degree 1-3, rms ``continuum_ripple``).
6. **Noise**: ``sigma = max(shape(lambda) * sqrt(f) / snr, noise_floor)`` with ``shape`` the REAL APOGEE relative-
   error template normalised to median 1 (so S/N is the continuum S/N), Gaussian noise added.
7. **Pipeline renormalisation**: per chip, an ivar-weighted polynomial of ``continuum_degree`` fitted to the
   continuum pixels (astroNN DR17 mask) of the noisy spectrum; flux divided by it, ivar multiplied by its square.
   By default (``continuum="true"``) the result is multiplied back by the noiseless pseudo-continuum of the clean
   spectrum, so observed and clean spectra share one normalisation and only the fit's ERROR remains (noise,
   ripple, masked pixels, tellurics, the physics gap). ``continuum="pseudo"`` keeps the pseudo-continuum
   normalisation of a real pipeline (then compare with clean spectra divided by :func:`pseudo_continuum`).
8. **Masks**: pixels with the real pixmask bits (``mask_bits``) of a template, random bad chunks, and the
   SpectraFM clipping (flux < 0.05 or > 1.2) become NaN with ivar 0 and mask False.
9. **Label noise**: catalogue labels = true labels + N(0, label_err), ``label_err`` log-normal around
   ``label_err_median`` (ASPCAP DR17 medians 8 K, 0.023, 0.015, 0.012, 0.008).

Size of the gap at the default strength 1 (``benchmarks/bench_emulator.py``, 200 prior draws, seed 42):

- noiseless physics gap alone: RMS flux difference 0.023-0.031 over all pixels (median per star 0.010; cool giants
  are largest), mean line depth +14-16 % (log gf offset +5 %, carbon +6 %, microturbulence +1 %);
- full observed domain vs clean (S/N 200-600): RMS 0.024 on unmasked pixels, 5.6 % of pixels NaN/masked;
- fitting the observed spectra by chi^2 with the CLEAN emulator itself (the best a clean-trained model can do):
  [Fe/H] bias +0.07, RMSE 0.12; TEFF bias +35 K, RMSE 110 K; LOGG RMSE 0.49; with ``strength=0`` the same fit
  gives [Fe/H] RMSE 0.015 and TEFF RMSE 28 K. (The paper's synthetic-only model: [Fe/H] RMSE 0.25 on real data.)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

try:
    from scipy import fft as sp_fft
except ImportError:  # e.g. a bare GPU image: numpy's rfft/irfft take the same calls (in float64 instead of float32)
    sp_fft = np.fft

if TYPE_CHECKING:  # pragma: no cover
    from . import GapSpec, InstrumentSpec

__all__ = [
    "ObservedBatch",
    "RealismTemplates",
    "load_templates",
    "line_gap_fields",
    "apply_physics_gap",
    "apply_lsf_rv",
    "add_noise",
    "renormalize_continuum",
    "draw_label_noise",
    "observe",
    "pseudo_continuum",
    "physics_gap_rms",
    "build_line_table",
]


def resource_path(name: str):
    """Path of a file under ``spectrafm_hf/resources/``."""
    return resources.files("spectrafm_hf").joinpath("resources").joinpath(name)


# ----------------------------------------------------------------------------------------------------- templates
@dataclass
class RealismTemplates:
    """Real-instrument templates, resampled onto the instrument grid at load time.

    ``telluric``, ``sky``, ``pixmask`` stay on their own template grid (``template_wave``) because they are shifted
    by a barycentric velocity per star; ``noise_shape`` (relative error normalised to median 1) and
    ``continuum_mask`` are on the instrument grid.
    """

    template_wave: np.ndarray  # (m,)
    grid_index: np.ndarray  # (n_pix,) fractional index of each instrument pixel in template_wave
    grid_index_dlnl: np.ndarray  # (n_pix,) d(index)/d(ln lambda) there, for velocity shifts
    telluric: np.ndarray  # (k, m) transmission
    sky: np.ndarray  # (k, m) sky residual pattern, strongest lines ~1
    pixmask: np.ndarray  # (k, m) int bitmask
    noise_shape: np.ndarray  # (k, n_pix) relative error / its median, clipped
    continuum_mask: np.ndarray  # (n_pix,) bool
    line_wave: np.ndarray | None = None  # (L,) vacuum Angstrom
    line_logw: np.ndarray | None = None  # (L,) log10 relative strength at the reference atmosphere
    line_is_carbon: np.ndarray | None = None  # (L,) bool, CO or CN


def _chip_slices(spec) -> list[slice]:
    return [slice(a, b) for a, b in spec.chips]


@functools.lru_cache(maxsize=8)
def _load_templates_cached(name: str, spec) -> RealismTemplates:
    rs = spec.realism
    wave = spec.wavelength
    with resource_path(rs.templates_file).open("rb") as fh:
        t = np.load(fh)
        twave = np.asarray(t[rs.templates_wave_key], dtype=np.float64)
        tell = np.asarray(t["telluric"], dtype=np.float32)
        sky = np.asarray(t["sky"], dtype=np.float64)
        pixmask = np.asarray(t["pixmask"]).astype(np.int64)
        rel_err = np.asarray(t["rel_err"], dtype=np.float64)
    good_t = twave > 0
    tell = np.where(tell > 0, tell, 1.0).astype(np.float32)  # zeros = chip gaps / no data: no absorption
    # sky: positive excess over the median, scaled so that the strongest lines (99.9th pct) are ~1
    sky = sky - np.median(sky, axis=1, keepdims=True)
    sky = np.clip(sky, 0, None) / np.maximum(np.percentile(sky, 99.9, axis=1, keepdims=True), 1e-30)
    sky = np.clip(sky, 0, rs.sky_max).astype(np.float32)
    # noise shape on the instrument grid: relative error normalised to its median; bad values -> upper clip
    shape = np.empty((rel_err.shape[0], wave.size), np.float64)
    for k in range(rel_err.shape[0]):
        r = np.interp(wave, twave[good_t], rel_err[k, good_t])
        finite = np.isfinite(r) & (r > 0)
        med = np.median(r[finite]) if finite.any() else 1.0
        s = np.where(finite, r / med, rs.noise_shape_clip[1])
        shape[k] = np.clip(s, *rs.noise_shape_clip)
    if rs.continuum_mask_file:
        with resource_path(rs.continuum_mask_file).open("rb") as fh:
            cmask = np.load(fh).astype(bool)
    else:
        cmask = np.ones(wave.size, bool)
    if cmask.size != wave.size:
        raise ValueError(f"{name}: continuum mask has {cmask.size} pixels, the grid {wave.size}")
    tidx = np.arange(twave.size, dtype=np.float64)
    gidx = np.interp(wave, twave, tidx)
    dlnl = np.gradient(tidx, np.log(twave))
    out = RealismTemplates(twave, np.interp(gidx, tidx, tidx), np.interp(gidx, tidx, dlnl), tell, sky, pixmask,
                           shape.astype(np.float32), cmask)
    if rs.line_table_file:
        with resource_path(rs.line_table_file).open("rb") as fh:
            lt = np.load(fh)
            out.line_wave = np.asarray(lt["wl_vac"], dtype=np.float64)
            out.line_logw = np.asarray(lt["logw"], dtype=np.float64)
            out.line_is_carbon = np.asarray(lt["is_carbon"], dtype=bool)
    return out


def load_templates(spec: "InstrumentSpec") -> RealismTemplates:
    """The realism templates of an instrument (cached)."""
    return _load_templates_cached(spec.name, spec)


@functools.lru_cache(maxsize=8)
def _shifted_template_bank(name: str, spec):
    """Telluric (as ln T), sky and bad-pixel templates on the instrument grid for barycentric velocities
    ``-v_max, -v_max + step, ..., v_max`` (linear interpolation; the mask takes the nearest template pixel).
    Returns (velocities (V,), ln_tell (k, V, n_pix), sky (k, V, n_pix), bad (k, V, n_pix) bool)."""
    rs = spec.realism
    tpl = load_templates(spec)
    vmax, step = rs.barycentric_max_kms, rs.barycentric_step_kms
    vel = np.arange(-vmax, vmax + 0.5 * step, step)
    badbits = np.int64(sum(1 << b for b in rs.mask_bits))
    k, m = tpl.telluric.shape
    # template features sit in the observed frame: the star-frame pixel at lambda sees the template at
    # lambda / (1 - v/c), i.e. the fractional template index moves by -ln(1 - v/c) * d(index)/d(ln lambda)
    u = tpl.grid_index[None, :] - np.log1p(-vel / rs.speed_of_light_kms)[:, None] * tpl.grid_index_dlnl[None, :]
    u = np.clip(u, 0.0, m - 1.000001)
    i0 = u.astype(np.int64)
    fr = (u - i0)[None]
    lt = np.log(np.maximum(tpl.telluric.astype(np.float64), 1e-3))
    ln_tell = (lt[:, i0] * (1 - fr) + lt[:, i0 + 1] * fr).astype(np.float32)
    sky = (tpl.sky[:, i0] * (1 - fr) + tpl.sky[:, i0 + 1] * fr).astype(np.float32)
    bad = (tpl.pixmask[:, np.where(fr[0] < 0.5, i0, i0 + 1)] & badbits) != 0
    return vel, ln_tell, sky, bad


# ----------------------------------------------------------------------------------------------------- physics gap
@functools.lru_cache(maxsize=8)
def _line_fields_cached(name: str, spec, seed: int, loggf_mean: float, loggf_sigma: float):
    tpl = load_templates(spec)
    wave = spec.wavelength
    n_pix = wave.size
    if tpl.line_wave is None:  # no line table: a per-pixel field correlated over one LSF width
        rng = np.random.default_rng(seed)
        sig = _grid_lsf_sigma_pix(spec)
        x = np.arange(-int(4 * sig) - 1, int(4 * sig) + 2)
        ker = np.exp(-0.5 * (x / sig) ** 2)
        raw = np.convolve(rng.normal(size=n_pix), ker / np.sqrt((ker**2).sum()), mode="same")
        return (loggf_mean + loggf_sigma * raw).astype(np.float32), np.zeros(n_pix, np.float32)
    rng = np.random.default_rng(seed)
    delta = rng.normal(loggf_mean, loggf_sigma, size=tpl.line_wave.size)
    # Gaussian LSF of the grid, in Angstrom at each line
    sig_aa = tpl.line_wave / (spec.resolution * 2.0 * np.sqrt(2.0 * np.log(2.0)))
    w_rel = 10.0 ** (tpl.line_logw - tpl.line_logw.max())
    num = np.zeros(n_pix)
    carb = np.zeros(n_pix)
    den = np.zeros(n_pix)
    lo = np.searchsorted(wave, tpl.line_wave - 4 * sig_aa)
    hi = np.searchsorted(wave, tpl.line_wave + 4 * sig_aa)
    width = int((hi - lo).max()) if lo.size else 0
    for j in range(width):  # vectorised over lines, looped over the few pixels each line touches
        p = lo + j
        ok = p < hi
        pp = p[ok]
        phi = w_rel[ok] * np.exp(-0.5 * ((wave[pp] - tpl.line_wave[ok]) / sig_aa[ok]) ** 2)
        np.add.at(den, pp, phi)
        np.add.at(num, pp, phi * delta[ok])
        np.add.at(carb, pp, phi * tpl.line_is_carbon[ok])
    tiny = den.max() * 1e-12 + 1e-300
    eps = np.where(den > tiny, num / np.maximum(den, tiny), loggf_mean)
    wc = np.where(den > tiny, carb / np.maximum(den, tiny), 0.0)
    return eps.astype(np.float32), wc.astype(np.float32)


def line_gap_fields(spec: "InstrumentSpec", gap: "GapSpec" | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(eps, w_C) on the instrument grid: the fixed per-pixel log gf error [dex] and the CO+CN opacity fraction."""
    gap = gap or spec.realism.gap
    return _line_fields_cached(spec.name, spec, gap.seed, gap.loggf_mean_dex, gap.loggf_sigma_dex)


def microturbulence(logg: np.ndarray, gap: "GapSpec", rng: np.random.Generator | None = None) -> np.ndarray:
    """Per-star microturbulence [km/s] of the "real" stars: ``a + b*logg`` clipped, times a log-normal scatter."""
    a, b = gap.vmic_law
    xi = np.clip(a + b * np.asarray(logg, np.float64), *gap.vmic_clip)
    if rng is not None and gap.vmic_scatter_dex > 0:
        xi = xi * 10.0 ** rng.normal(0.0, gap.vmic_scatter_dex, size=xi.shape)
    return xi


def apply_physics_gap(flux: np.ndarray, labels: np.ndarray, spec: "InstrumentSpec", rng: np.random.Generator,
                      strength: float | None = None, gap: "GapSpec" | None = None) -> tuple[np.ndarray, dict]:
    """The synthetic-to-real physics gap on clean flux (n, n_pix). Returns (flux, per-star info).

    ``strength`` overrides ``gap.strength`` (0 = no physics gap, output equals input).
    """
    gap = gap or spec.realism.gap
    s = gap.strength if strength is None else float(strength)
    n = flux.shape[0]
    carbon = rng.normal(gap.carbon_mean_dex, gap.carbon_sigma_dex, size=n)
    xi = microturbulence(labels[:, 1], gap, rng)
    info = {"carbon_dex": carbon.astype(np.float32), "vmic_kms": xi.astype(np.float32)}
    if s == 0:
        return flux.astype(np.float32, copy=True), info
    eps, wc = line_gap_fields(spec, gap)
    f32 = np.float32
    d = f32(1.0) - flux.astype(np.float32)
    ln10_beta_s = f32(np.log(10.0) * gap.curve_of_growth_beta * s)
    scale = np.exp(ln10_beta_s * (eps[None, :] + carbon.astype(f32)[:, None] * wc[None, :]))
    dpos = np.maximum(d, f32(0.0))
    vm_amp = (f32(s * gap.vmic_depth_response) * (xi.astype(f32) / f32(gap.vmic_grid_kms) - f32(1.0)))[:, None]
    scale *= f32(1.0) + vm_amp * dpos / (dpos + f32(gap.vmic_half_depth))
    d *= scale
    np.minimum(d, f32(gap.max_depth), out=d)
    return f32(1.0) - d, info


def physics_gap_rms(spec: "InstrumentSpec", labels: np.ndarray, strength: float = 1.0, seed: int = 0) -> float:
    """RMS flux difference between clean and physics-gapped (noiseless) spectra at ``labels``: the gap's size."""
    from . import emulate

    clean = emulate(labels, instrument=spec.name)
    gapped, _ = apply_physics_gap(clean, np.asarray(labels, np.float64), spec, np.random.default_rng(seed), strength)
    return float(np.sqrt(np.mean((gapped - clean) ** 2)))


# ----------------------------------------------------------------------------------------------------- LSF + RV
def _grid_lsf_sigma_pix(spec, chip: slice | None = None) -> float:
    wave = spec.wavelength if chip is None else spec.wavelength[chip]
    dln = float(np.median(np.diff(np.log(wave))))
    return 1.0 / (spec.resolution * dln * 2.0 * np.sqrt(2.0 * np.log(2.0)))


def apply_lsf_rv(flux: np.ndarray, spec: "InstrumentSpec", resolution: np.ndarray, rv_kms: np.ndarray,
                 pad: int = 32) -> np.ndarray:
    """Change each star's LSF from the grid's R to ``resolution[i]`` and shift it by ``rv_kms[i]`` (redshift > 0).

    Works chip by chip in Fourier space (edge-padded, so chip gaps never mix). The Gaussian kernel has variance
    ``sigma(R_i)^2 - sigma(R_grid)^2`` pixels^2; a negative variance (R_i > R_grid) is a mild sharpening, safe
    because the grid spectrum has almost no power near Nyquist.
    """
    c_kms = spec.realism.speed_of_light_kms
    out = np.empty_like(flux, dtype=np.float32)
    fw = 2.0 * np.sqrt(2.0 * np.log(2.0))
    for sl in _chip_slices(spec):
        seg = flux[:, sl].astype(np.float32)
        m = seg.shape[1]
        dln = float(np.median(np.diff(np.log(spec.wavelength[sl]))))
        var = (1.0 / (np.asarray(resolution, np.float64) * dln * fw)) ** 2 - (1.0 / (spec.resolution * dln * fw)) ** 2
        shift = np.log1p(np.asarray(rv_kms, np.float64) / c_kms) / dln  # pixels
        padded = np.pad(seg, ((0, 0), (pad, pad)), mode="edge")
        L = padded.shape[1]
        k = np.fft.rfftfreq(L)
        h = np.exp(-2.0 * np.pi**2 * var[:, None] * k[None, :] ** 2 - 2j * np.pi * shift[:, None] * k[None, :])
        res = sp_fft.irfft(sp_fft.rfft(padded, axis=1) * h.astype(np.complex64), n=L, axis=1)
        out[:, sl] = res[:, pad:pad + m]
    return out


# ----------------------------------------------------------------------------------------------------- noise etc.
def add_noise(flux: np.ndarray, shape: np.ndarray, snr: np.ndarray, floor: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise ``sigma = max(shape * sqrt(max(f, 0.01)) / snr, floor)``; returns (noisy flux, ivar)."""
    f32 = np.float32
    inv_snr = (1.0 / np.asarray(snr, np.float64)).astype(f32).reshape(-1, 1)
    flux = np.asarray(flux, f32)
    sigma = np.sqrt(np.maximum(flux, f32(0.01)))
    sigma *= shape
    sigma *= inv_snr
    np.maximum(sigma, f32(floor), out=sigma)
    noisy = rng.standard_normal(flux.shape, dtype=f32)
    noisy *= sigma
    noisy += flux
    return noisy, f32(1.0) / (sigma * sigma)


def _legendre_design(m: int, degree: int) -> np.ndarray:
    x = np.linspace(-1.0, 1.0, m)
    return np.polynomial.legendre.legvander(x, degree)  # (m, degree+1)


def renormalize_continuum(flux: np.ndarray, ivar: np.ndarray, good: np.ndarray, spec: "InstrumentSpec",
                          continuum_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per chip, fit an ivar-weighted Legendre polynomial to the good continuum pixels and divide it out.

    Returns (flux, ivar, continuum). Chips with too few good continuum pixels keep their continuum at 1.
    """
    deg = spec.realism.continuum_degree
    cont = np.ones(flux.shape, dtype=np.float32)
    for sl in _chip_slices(spec):
        m = sl.stop - sl.start
        X = _legendre_design(m, deg)
        cm = continuum_mask[sl]
        Xc = X[cm]
        w = np.where(good[:, sl][:, cm], ivar[:, sl][:, cm], 0.0).astype(np.float64)
        w /= np.maximum(w.max(axis=1, keepdims=True), 1e-30)  # scale-free weights (conditioning)
        y = np.nan_to_num(flux[:, sl][:, cm].astype(np.float64))
        k1 = deg + 1
        A = (w @ (Xc[:, :, None] * Xc[:, None, :]).reshape(-1, k1 * k1)).reshape(-1, k1, k1)
        b = (w * y) @ Xc
        ok = (w > 0).sum(1) > 4 * (deg + 1)
        A[~ok] = np.eye(deg + 1)
        b[~ok] = 0.0
        b[~ok, 0] = 1.0
        coef = np.linalg.solve(A, b[..., None])[..., 0]
        cont[:, sl] = coef @ X.T
    np.clip(cont, np.float32(0.5), np.float32(1.5), out=cont)
    return (flux / cont).astype(np.float32, copy=False), (ivar * cont * cont).astype(np.float32, copy=False), cont


def draw_label_noise(labels: np.ndarray, spec: "InstrumentSpec", rng: np.random.Generator):
    """(catalogue labels, label_err): ASPCAP-like errors, log-normal around the instrument's medians."""
    rs = spec.realism
    med = np.asarray(rs.label_err_median, np.float64)
    err = med[None, :] * np.exp(rng.normal(0.0, rs.label_err_lognormal_sigma, size=labels.shape))
    noisy = labels + err * rng.standard_normal(labels.shape)
    return noisy.astype(np.float32), err.astype(np.float32)


# ----------------------------------------------------------------------------------------------------- pipeline
@dataclass
class ObservedBatch:
    """Output of :func:`observe` for one batch of stars."""

    flux: np.ndarray  # (n, n_pix) float32, NaN where masked
    ivar: np.ndarray  # (n, n_pix) float32, 0 where masked
    mask: np.ndarray  # (n, n_pix) bool, True = good
    labels: np.ndarray  # (n, 5) catalogue labels (true + label noise)
    label_err: np.ndarray  # (n, 5)
    info: dict  # per-star draws: snr, resolution, rv_kms, v_bary_kms, carbon_dex, vmic_kms, template index


def pseudo_continuum(flux: np.ndarray, spec: "InstrumentSpec") -> np.ndarray:
    """Noiseless pseudo-continuum (n, n_pix) of clean spectra: the per-chip polynomial of the pipeline
    renormalisation fitted with equal weights to the continuum pixels. In cool, metal-rich giants the
    "continuum" pixels of a true-continuum-normalised spectrum sit well below 1 (molecular blanketing), so this
    differs from 1 by up to ~25 %; real pipelines (ASPCAP, astroNN) only ever see the pseudo-continuum."""
    tpl = load_templates(spec)
    ones = np.ones(flux.shape, np.float32)
    return renormalize_continuum(flux, ones, ones.astype(bool), spec, tpl.continuum_mask)[2]


def observe(flux: np.ndarray, labels: np.ndarray, spec: "InstrumentSpec", rng: np.random.Generator,
            snr=None, gap_strength: float | None = None, continuum: str = "true") -> ObservedBatch:
    """Apply the full realism layer (module docstring, steps 1-9) to clean flux (n, n_pix) at true labels (n, 5).

    Args:
        snr: continuum S/N per star (scalar or (n,)); None draws log-uniformly in ``realism.snr_range``.
        gap_strength: overrides ``realism.gap.strength`` (0 = instrument effects only, no physics gap).
        continuum: ``"true"`` (default): the output keeps the clean spectra's normalisation (true continuum = 1),
            so step 7 contributes only its ERROR (noise, ripple, masks, tellurics and the physics gap in the fit):
            the observed flux is ``f / c_obs * c_clean`` with ``c_clean`` the same fit (same weights, no masks)
            on the clean input. ``"pseudo"``: divide by the fitted pseudo-continuum like a real pipeline; compare with
            clean spectra divided by :func:`pseudo_continuum` (``generate(..., continuum="pseudo")``).
    """
    if continuum not in ("true", "pseudo"):
        raise ValueError("continuum must be 'true' or 'pseudo'")
    rs = spec.realism
    tpl = load_templates(spec)
    n, n_pix = flux.shape
    labels = np.asarray(labels, np.float64)
    if snr is None:
        lo, hi = rs.snr_range
        snr = np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))
    snr = np.broadcast_to(np.asarray(snr, np.float64), (n,)).copy()
    if np.any(snr <= 0):
        raise ValueError("snr must be > 0")
    # 1. physics gap
    f, info = apply_physics_gap(flux, labels, spec, rng, strength=gap_strength)
    # 2. LSF + residual RV
    res = rng.uniform(*rs.resolution_range, size=n)
    rv = rng.uniform(*rs.rv_range_kms, size=n) * rng.choice([-1.0, 1.0], size=n)
    f = apply_lsf_rv(f, spec, res, rv)
    # 3.-4. tellurics and sky from a random real template, shifted by a barycentric velocity
    k_tpl = rng.integers(0, tpl.telluric.shape[0], size=n)
    v_bary = rng.uniform(-rs.barycentric_max_kms, rs.barycentric_max_kms, size=n)
    t_eps = rng.normal(0.0, rs.telluric_eps_sigma, size=n).astype(np.float32)
    s_alpha = rng.normal(0.0, rs.sky_alpha_sigma, size=n).astype(np.float32)
    vel, ln_tell, sky, bad = _shifted_template_bank(spec.name, spec)
    iv = np.clip(np.rint((v_bary - vel[0]) / rs.barycentric_step_kms).astype(np.int64), 0, vel.size - 1)
    v_bary = vel[iv]  # velocities on the bank's grid (step barycentric_step_kms)
    f *= np.exp(t_eps[:, None] * ln_tell[k_tpl, iv])
    f += s_alpha[:, None] * sky[k_tpl, iv]
    good = ~bad[k_tpl, iv]
    # 5. smooth continuum ripple per chip
    for sl in _chip_slices(spec):
        X = _legendre_design(sl.stop - sl.start, 3)[:, 1:]
        a = rng.normal(0.0, rs.continuum_ripple / np.sqrt(3.0), size=(n, 3))
        f[:, sl] *= (1.0 + a @ X.T).astype(np.float32)
    # 6. noise with the real relative-error shape
    shape = tpl.noise_shape[k_tpl]
    f, ivar = add_noise(f, shape, snr, rs.noise_floor, rng)
    # random bad chunks
    n_chunks = rng.poisson(rs.bad_chunks_mean, size=n)
    for i in np.flatnonzero(n_chunks):
        for _ in range(n_chunks[i]):
            ln = rng.integers(rs.bad_chunk_length[0], rs.bad_chunk_length[1] + 1)
            st = rng.integers(0, max(1, n_pix - ln))
            good[i, st:st + ln] = False
    # 7. pipeline renormalisation on the continuum pixels
    if continuum == "true":  # the same fit (same weights, no masks) on the clean input spectrum
        c_clean = renormalize_continuum(flux, ivar, np.ones_like(good), spec, tpl.continuum_mask)[2]
    f, ivar, _ = renormalize_continuum(f, ivar, good, spec, tpl.continuum_mask)
    if continuum == "true":  # back to the clean spectra's convention: only the normalisation error remains
        f, ivar = f * c_clean, ivar / c_clean**2
    # 8. masks and SpectraFM clipping
    lo_clip, hi_clip = rs.clip_range
    good &= np.isfinite(f) & (f >= lo_clip) & (f <= hi_clip)
    f[~good] = np.nan
    ivar[~good] = 0.0
    # 9. label noise
    cat, err = draw_label_noise(labels, spec, rng)
    info.update({"snr": snr.astype(np.float32), "resolution": res.astype(np.float32), "rv_kms": rv.astype(np.float32),
                 "v_bary_kms": v_bary.astype(np.float32), "template": k_tpl.astype(np.int16)})
    return ObservedBatch(flux=f, ivar=ivar, mask=good, labels=cat, label_err=err, info=info)


# ----------------------------------------------------------------------------------------------------- build tools
def build_line_table(linelist_npz: str, out_npz: str, species_log_n: dict, theta_ref: float, n_keep: int) -> dict:
    """Build the compact line table the physics gap uses (run once; the result ships in resources/realism/).

    Each line's strength proxy at a reference atmosphere is ``log gf - theta_ref * EP + log N(species)``, with
    ``species_log_n`` an order-of-magnitude number density (per H) of the absorbing species. Only the ``n_keep``
    strongest lines are kept. CO (608) and CN (607) lines are flagged as carbon-bearing.
    """
    d = np.load(linelist_npz)
    sp = np.asarray(d["species"], np.float64)
    base = np.floor(sp).astype(int)
    logn = np.array([species_log_n.get(int(b), species_log_n["default_atom"] if b < 100 else np.nan) for b in base])
    keep = np.isfinite(logn)
    logw = np.asarray(d["loggf"]) - theta_ref * np.asarray(d["ep"]) + logn
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(logw[idx])[::-1][:n_keep]]
    idx = np.sort(idx)
    table = {"wl_vac": np.asarray(d["wl_vac"])[idx].astype(np.float64), "logw": logw[idx].astype(np.float32),
             "is_carbon": np.isin(base[idx], [607, 608]), "species": sp[idx].astype(np.float32)}
    np.savez_compressed(out_npz, **table)
    return table


def _main(argv=None) -> None:
    """``python -m spectrafm_hf.synth.realism build-line-table LINELIST.npz [--instrument apogee]``."""
    import argparse

    from . import get_instrument

    ap = argparse.ArgumentParser(prog="python -m spectrafm_hf.synth.realism")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-line-table", help="build resources/<line_table_file> from a linemake npz")
    b.add_argument("linelist")
    b.add_argument("--instrument", default="apogee")
    b.add_argument("--out", default=None, help="default: the package resource path")
    args = ap.parse_args(argv)
    spec = get_instrument(args.instrument)
    rec = spec.realism.line_table_recipe
    out = args.out or str(resource_path(spec.realism.line_table_file))
    t = build_line_table(args.linelist, out, rec["species_log_n"], rec["theta_ref"], rec["n_keep"])
    print(f"{out}: {t['wl_vac'].size} lines, {int(t['is_carbon'].sum())} CO/CN")


if __name__ == "__main__":
    _main()
