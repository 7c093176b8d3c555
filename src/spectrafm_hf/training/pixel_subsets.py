"""Training pixel subsets that mix scattered pixels with contiguous windows.

The paper trained on random pixels scattered over the whole spectrum, then fine-tuned and evaluated on contiguous
windows (the first half of the spectrum, the 512-pixel Fe window); a model that only ever saw scattered pixels reads
a window out of distribution. Here each training row is, with probability ``window_prob``, restricted to one
contiguous window of random position and a log-uniform random width in ``window_width`` (pixels of the row's grid),
then ``context_length`` usable pixels are drawn at random inside it (all of them when fewer: the row is shorter and
padded, as a short window is at inference); the other rows draw their pixels from the whole spectrum. So every
window, and every instrument's partial coverage, is in the training distribution, and the whole-spectrum case
stays too.

Two implementations with the same rule: :func:`choose_pixels` (numpy, one row; the training collator) and
:func:`sample_pixel_subsets` (torch, a batch on any device; the GPU stream).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["check_window_options", "choose_pixels", "sample_pixel_subsets"]


def check_window_options(window_prob: float, window_width) -> tuple[float, tuple[int, int] | None]:
    """Validated (window_prob, (min_width, max_width)) with clear errors."""
    window_prob = float(window_prob or 0.0)
    if not 0.0 <= window_prob <= 1.0:
        raise ValueError(f"window_prob must be in [0, 1], got {window_prob}")
    if window_width is None:
        return window_prob, None
    if len(window_width) != 2:
        raise ValueError(f"window_width must be [min_pixels, max_pixels], got {window_width}")
    lo, hi = int(window_width[0]), int(window_width[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"window_width must satisfy 1 <= min <= max, got {window_width}")
    return window_prob, (lo, hi)


def _width(u: np.ndarray | float, lo: int, hi: int):
    """Log-uniform width in [lo, hi] from a uniform draw u in [0, 1)."""
    return np.floor(np.exp(np.log(lo) + u * (np.log(hi + 1) - np.log(lo)))).clip(lo, hi)


def choose_pixels(idx: np.ndarray, n_total: int, context_length: int, rng: np.random.Generator,
                  window_prob: float = 0.0, window_width=None) -> np.ndarray:
    """Sorted positions of one row's pixel subset.

    Args:
        idx: sorted positions (in ``[0, n_total)``) of the row's usable pixels.
        n_total: pixels in the row (windows are placed on this grid, masked pixels included).
        context_length: pixels per row.
        window_prob: probability of restricting the row to one contiguous window (0 = the collator's historic rule,
            with exactly its random draws).
        window_width: (min, max) window width in pixels (default: (context_length // 4, n_total)).
    """
    if window_prob > 0 and rng.random() < window_prob and idx.size:
        lo, hi = window_width or (max(1, context_length // 4), n_total)
        hi = max(1, min(int(hi), n_total))
        lo = min(max(1, int(lo)), hi)
        w = int(_width(rng.random(), lo, hi))
        start = int(rng.integers(0, n_total - w + 1))
        inside = idx[(idx >= start) & (idx < start + w)]
        if inside.size:  # a window that is all masked falls back to the whole spectrum
            idx = inside
    if idx.size > context_length:
        idx = np.sort(rng.choice(idx, context_length, replace=False))
    return idx


def sample_pixel_subsets(good: torch.Tensor, context_length: int, window_prob: float = 0.0, window_width=None,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel subsets of a batch, on ``good``'s device: ``(idx, valid)``, both (B, min(context_length, N)).

    ``good`` (B, N) bool marks usable pixels. Each row takes ``context_length`` usable pixels at random (from one
    random window with probability ``window_prob``, see the module docstring); ``valid`` is False where a row has
    fewer (those ``idx`` point at unusable pixels and must be masked). Uses one ``rand`` + ``topk``: fast on a GPU.
    """
    if good.dim() != 2:
        raise ValueError(f"good must be (batch, pixels), got shape {tuple(good.shape)}")
    B, N = good.shape
    L = min(int(context_length), N)
    dev = good.device
    allowed = good.bool()
    if window_prob > 0:
        lo, hi = window_width or (max(1, L // 4), N)
        hi = max(1, min(int(hi), N))
        lo = min(max(1, int(lo)), hi)
        u = torch.rand(B, 3, generator=generator, device=dev)
        width = torch.floor(torch.exp(np.log(lo) + u[:, 1] * (np.log(hi + 1) - np.log(lo)))).clamp(lo, hi)
        start = torch.floor(u[:, 2] * (N - width + 1))
        pos = torch.arange(N, device=dev)[None, :]
        inside = (pos >= start[:, None]) & (pos < (start + width)[:, None])
        use = (u[:, 0] < window_prob)[:, None] & (inside & allowed).any(1, keepdim=True)
        allowed = allowed & (inside | ~use)
    score = torch.rand(B, N, generator=generator, device=dev).masked_fill(~allowed, -1.0)
    top, idx = torch.topk(score, L, dim=1)
    return idx, top >= 0
