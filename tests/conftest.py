"""Shared test setup: offline Hub, the tiny committed checkpoint, and the ../shared folder (skip when absent)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a network; a missing repo fails at once
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED = REPO.parent / "shared"
TINY = TESTS / "fixtures" / "tiny-spectrafm"
sys.path.insert(0, str(TESTS))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_path(*parts) -> Path:
    """A path under ../shared, or skip the test when it is not there (a user's clone has no ../shared)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (only beside the development checkout)")
    return p


@pytest.fixture
def tiny_pipeline():
    from spectrafm_hf import SpectraFMPipeline

    return SpectraFMPipeline.from_pretrained(TINY, device="cpu")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def fake_apogee_spectrum(rng, n=None, start=0, **meta):
    """A continuum-normalised spectrum with random absorption lines on (part of) the APOGEE 7514 grid."""
    from spectrafm_hf import Spectrum
    from spectrafm_hf.grids import apogee_wavelength_7514

    wl = apogee_wavelength_7514()
    centers = rng.uniform(wl[0], wl[-1], 300)
    depth = rng.uniform(0.05, 0.3, 300)
    flux = np.ones_like(wl)
    for c, d in zip(centers, depth):  # lines over the whole H band, then the requested cut
        near = np.abs(wl - c) < 3
        flux[near] *= 1 - d * np.exp(-0.5 * ((wl[near] - c) / 0.4) ** 2)
    sl = slice(start, None if n is None else start + n)
    wl, flux = wl[sl], flux[sl] + rng.normal(0, 0.005, wl[sl].size)
    return Spectrum(wavelength=wl, flux=flux, ivar=np.full(wl.size, 1 / 0.005**2), instrument="apogee", meta=meta)


def fake_dataset_dict(n_train=24, n_eval=8, seed=0, n_pixels=300):
    """A DatasetDict in the package schema with made-up spectra whose line depths follow FE_H (so there is
    something to learn), for Trainer tests that must not depend on the emulator."""
    import datasets

    from spectrafm_hf.data import arrays_to_table
    from spectrafm_hf.grids import apogee_wavelength_7514

    rng = np.random.default_rng(seed)
    wl = apogee_wavelength_7514()[1000 : 1000 + n_pixels]
    centers = rng.uniform(wl[0], wl[-1], 30)
    profile = np.exp(-0.5 * ((wl[None] - centers[:, None]) / 0.4) ** 2).sum(0)
    out = {}
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        labels = np.column_stack([rng.uniform(4000, 5500, n), rng.uniform(1, 4.5, n), rng.normal(0.1, 0.1, n),
                                  rng.normal(0.1, 0.1, n), rng.uniform(-1.5, 0.4, n)])
        labels[0, 2] = np.nan  # a missing label must not break anything
        flux = 1 - 0.1 * (1 + labels[:, 4:5]) * profile[None] + rng.normal(0, 0.005, (n, wl.size))
        table = arrays_to_table([f"{split}{i}" for i in range(n)], "apogee", wl, flux, labels=labels,
                                label_err=np.full_like(labels, 0.01), ivar=np.full(wl.size, 4e4))
        out[split] = datasets.Dataset(table)
    return datasets.DatasetDict(out)
