"""The spectral emulator: a small MLP from 5 labels to continuum-normalised flux through a PCA output basis.

Architecture (shared by training, ``scripts/train_emulator.py``, and inference, :class:`Emulator`)::

    labels (n, 5) = TEFF, LOGG, O_FE, MG_FE, FE_H
      -> features: TEFF is replaced by theta = 5040 / TEFF (spectra are closer to linear in theta), then each
         feature is mapped to [-1, 1] with the training box (``feature_lo``, ``feature_hi``)
      -> MLP: Linear(5, H) + SiLU, (Linear(H, H) + SiLU) x (n_hidden - 1), Linear(H, K)
      -> z (n, K), PCA coefficients c = z * coef_scale
      -> flux = mean_flux + c @ basis          (basis: K orthonormal rows of length n_pixels)

Because the basis is orthonormal, the MSE on the coefficients equals the flux MSE (up to the basis truncation,
which is ~1e-5 in flux for K >= 96 on the MOOG grid), so training works on K numbers per spectrum.

The weights ship as one safetensors file: MLP weights in float32, the basis in float16 (it is the large part),
and the metadata (label names, instrument, feature box, valid label box, training record) as JSON strings in the
safetensors header. Inference runs in torch (batched, no autograd); ``torch.set_num_threads`` governs speed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["LABEL_NAMES", "EmulatorNet", "Emulator", "load_emulator", "labels_to_features"]

LABEL_NAMES = ("TEFF", "LOGG", "O_FE", "MG_FE", "FE_H")
THETA_TEFF = 5040.0  # theta = 5040 K / Teff (the classic excitation-temperature variable)


def labels_to_features(labels: torch.Tensor) -> torch.Tensor:
    """(n, 5) labels -> (n, 5) raw features: TEFF replaced by 5040/TEFF, the others unchanged."""
    return torch.cat([THETA_TEFF / labels[:, :1], labels[:, 1:]], dim=1)


class EmulatorNet(nn.Module):
    """labels (n, 5) -> flux (n, n_pixels). See the module docstring for the maths."""

    def __init__(self, n_pixels: int, n_components: int = 128, hidden: int = 256, n_hidden: int = 3,
                 n_labels: int = 5):
        super().__init__()
        self.n_pixels, self.n_components, self.hidden, self.n_hidden = n_pixels, n_components, hidden, n_hidden
        layers: list[nn.Module] = [nn.Linear(n_labels, hidden), nn.SiLU()]
        for _ in range(n_hidden - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, n_components))
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("feature_lo", torch.zeros(n_labels))
        self.register_buffer("feature_hi", torch.ones(n_labels))
        self.register_buffer("coef_scale", torch.ones(n_components))
        self.register_buffer("basis", torch.zeros(n_components, n_pixels))
        self.register_buffer("mean_flux", torch.ones(n_pixels))

    def scaled_features(self, labels: torch.Tensor) -> torch.Tensor:
        f = labels_to_features(labels)
        return 2.0 * (f - self.feature_lo) / (self.feature_hi - self.feature_lo) - 1.0

    def coefficients(self, labels: torch.Tensor) -> torch.Tensor:
        """PCA coefficients (n, K) of the emulated flux."""
        return self.mlp(self.scaled_features(labels)) * self.coef_scale

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.mean_flux, self.coefficients(labels), self.basis)


@dataclass
class Emulator:
    """A loaded emulator: ``emulator(labels)`` -> noiseless normalised flux on ``wavelength``.

    Attributes:
        net: the :class:`EmulatorNet` (float32, eval mode).
        wavelength: (n_pixels,) vacuum Angstrom grid of the output.
        label_lo, label_hi: the valid label box (the training grid's range, per label, in LABEL_NAMES order).
        metadata: everything stored with the weights (instrument, training record, held-out metrics...).
    """

    net: EmulatorNet
    wavelength: np.ndarray
    label_lo: np.ndarray
    label_hi: np.ndarray
    metadata: dict = field(default_factory=dict)

    @property
    def n_pixels(self) -> int:
        return int(self.wavelength.size)

    def in_box(self, labels) -> np.ndarray:
        """Boolean (n,): which label rows lie inside the valid box."""
        lab = np.atleast_2d(np.asarray(labels, dtype=np.float64))
        return np.all((lab >= self.label_lo) & (lab <= self.label_hi), axis=1)

    def __call__(self, labels, clip: bool = True, batch_size: int = 4096) -> np.ndarray:
        """Noiseless flux (n, n_pixels) float32 for labels (n, 5) (or one label vector of length 5).

        Args:
            labels: TEFF [K], LOGG, O_FE, MG_FE, FE_H per row. Must be finite.
            clip: clamp each label into the valid box first (default). With ``clip=False`` labels outside the
                box raise a ``ValueError``: an MLP extrapolates without warning, so we do not let it.
            batch_size: rows per forward pass (memory: batch_size x n_pixels x 4 bytes).
        """
        lab = np.asarray(labels, dtype=np.float32)
        single = lab.ndim == 1
        lab = np.atleast_2d(lab)
        if lab.ndim != 2 or lab.shape[1] != len(LABEL_NAMES):
            raise ValueError(f"labels must have shape (n, 5) in the order {LABEL_NAMES}, got {lab.shape}")
        if not np.all(np.isfinite(lab)):
            raise ValueError("labels contain NaN/inf; the emulator needs all five labels")
        if clip:
            lab = np.clip(lab, self.label_lo.astype(np.float32), self.label_hi.astype(np.float32))
        elif not np.all(self.in_box(lab)):
            bad = int(np.flatnonzero(~self.in_box(lab))[0])
            raise ValueError(
                f"label row {bad} = {lab[bad].tolist()} is outside the emulator's valid box "
                f"lo={self.label_lo.tolist()} hi={self.label_hi.tolist()}; pass clip=True to clamp it")
        out = np.empty((lab.shape[0], self.n_pixels), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, lab.shape[0], batch_size):
                out[i:i + batch_size] = self.net(torch.from_numpy(lab[i:i + batch_size])).numpy()
        return out[0] if single else out


def save_emulator(path, net: EmulatorNet, wavelength: np.ndarray, label_lo, label_hi, metadata: dict) -> None:
    """Write the emulator as safetensors: MLP float32, basis float16, everything else in the JSON header."""
    from safetensors.torch import save_file

    sd = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    sd["basis"] = sd["basis"].half()
    sd["wavelength"] = torch.as_tensor(np.asarray(wavelength, dtype=np.float64))
    meta = {
        "format": "spectrafm_hf.emulator/1",
        "architecture": json.dumps({"n_pixels": net.n_pixels, "n_components": net.n_components,
                                    "hidden": net.hidden, "n_hidden": net.n_hidden, "activation": "silu"}),
        "label_names": json.dumps(list(LABEL_NAMES)),
        "label_lo": json.dumps([float(x) for x in label_lo]),
        "label_hi": json.dumps([float(x) for x in label_hi]),
        "info": json.dumps(metadata),
    }
    save_file(sd, str(path), metadata=meta)


def load_emulator(path) -> Emulator:
    """Load an emulator written by :func:`save_emulator` (see ``resources/emulators/``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"emulator weights not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "spectrafm_hf.emulator/1":
            raise ValueError(f"{path} is not a spectrafm_hf emulator file (format={meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    arch = json.loads(meta["architecture"])
    if json.loads(meta["label_names"]) != list(LABEL_NAMES):
        raise ValueError(f"{path}: label order {meta['label_names']} differs from {LABEL_NAMES}")
    net = EmulatorNet(n_pixels=arch["n_pixels"], n_components=arch["n_components"], hidden=arch["hidden"],
                      n_hidden=arch["n_hidden"])
    wavelength = tensors.pop("wavelength").numpy()
    net.load_state_dict({k: v.float() for k, v in tensors.items()})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Emulator(net=net, wavelength=wavelength, label_lo=np.array(json.loads(meta["label_lo"])),
                    label_hi=np.array(json.loads(meta["label_hi"])), metadata=json.loads(meta["info"]))
