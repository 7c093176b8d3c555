"""Instrument wavelength grids the package knows by heart (all vacuum Angstrom).

APOGEE apStar/aspcapStar spectra live on a log-linear grid ``10**(4.179 + 6e-6 i)``, i = 0..8574. SpectraFM (and
ASPCAP since DR13) drops the chip gaps and edges, keeping the 7514 pixels ``[246, 3274) + [3585, 6080) +
[6344, 8335)``; the paper's pixel token ``syn_apogee{i}`` sits at ``apogee_wavelength_7514()[i]``.
"""

from __future__ import annotations

import numpy as np

APOGEE_LOGLAM0 = 4.179
APOGEE_DLOGLAM = 6e-6
APOGEE_N_APSTAR = 8575
APOGEE_CHIP_RANGES_7514 = ((246, 3274), (3585, 6080), (6344, 8335))  # blue, green, red chip, apStar indices

# The paper's stage-2 and stage-3 windows, as indices into the 7514 grid (end exclusive).
PAPER_STAGE2_PIXELS = (0, 3757)  # 15152.2-16027.9 A
PAPER_STAGE3_PIXELS = (4107, 4619)  # 16105.9-16220.0 A, exactly 512 pixels


def apogee_apstar_wavelength() -> np.ndarray:
    """The 8575-pixel apStar vacuum grid in Angstrom."""
    return 10.0 ** (APOGEE_LOGLAM0 + APOGEE_DLOGLAM * np.arange(APOGEE_N_APSTAR))


def apogee_7514_indices() -> np.ndarray:
    """Indices of the 7514 SpectraFM/ASPCAP pixels inside the 8575-pixel apStar grid."""
    return np.concatenate([np.arange(a, b) for a, b in APOGEE_CHIP_RANGES_7514])


def apogee_wavelength_7514() -> np.ndarray:
    """The 7514-pixel APOGEE vacuum grid SpectraFM uses (15152.2-16943.5 A)."""
    return apogee_apstar_wavelength()[apogee_7514_indices()]
