"""Linear probes: a label read as a straight line from a frozen model's features.

The features of a spectrum are the model's embedding (its mean encoder output, `SpectraFMPipeline.embed`) and the
model's own predictions of the labels it knows. A ridge regression on them, fitted on a few labelled stars, is the
cheapest way to keep everything the pretraining learned: the network is not touched. A straight line also
extrapolates where a fine-tuned decoder saturates (issue 14: on Gaia XP the fine-tuned decoder's [Fe/H] stops near
-0.6 for stars below -1; docs/real_spectra.md: the few-shot experiments).

The ridge penalty is chosen by leave-one-out error on the fitting stars themselves (closed form, no validation
split needed) and the 1-sigma uncertainty of a prediction is the root-mean-square leave-one-out residual.
`SpectraFMPipeline.fit_linear_probe` fits one; the processor stores it (``linear_probes``) and `predict` applies it.
"""

from __future__ import annotations

import numpy as np

# ridge penalties tried, on standardised features (the penalty of a feature of unit variance)
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 29))


def fit_ridge_loo(features, target, alphas=DEFAULT_ALPHAS, min_rows: int = 5) -> dict:
    """Ridge regression of ``target`` (n,) on ``features`` (n, p), standardised on these rows, with the penalty of
    lowest mean squared leave-one-out residual. Returns the probe as plain numbers: ``weights`` (p,), ``bias``,
    ``feature_mean``, ``feature_scale``, ``alpha``, ``sigma`` (root-mean-square leave-one-out residual), ``n_fit``.
    Rows with a NaN are skipped."""
    x = np.asarray(features, np.float64)
    y = np.asarray(target, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features must be (n, p) and target (n,), got {x.shape} and {y.shape}")
    ok = np.isfinite(x).all(1) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(y)
    if n < min_rows:
        raise ValueError(f"a linear probe needs >= {min_rows} labelled rows with finite features, got {n}")
    if not np.std(y) > 0:
        raise ValueError("a linear probe needs labels that vary; every labelled row has the same value")
    alphas = np.asarray(alphas, np.float64).ravel()
    if not alphas.size or not (np.isfinite(alphas) & (alphas > 0)).all():
        raise ValueError(f"alphas must be positive finite numbers, got {alphas}")
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant feature stays constant (its weight is 0)
    z = (x - mean) / scale
    y_mean = y.mean()
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    uy = u.T @ (y - y_mean)
    best = None
    for alpha in alphas:
        shrink = s**2 / (s**2 + alpha)
        fitted = u @ (shrink * uy) + y_mean
        leverage = (u**2) @ shrink + 1.0 / n  # the intercept's 1/n: it is fitted too
        loo = (y - fitted) / (1.0 - leverage)
        mse = float(np.mean(loo**2))
        if best is None or mse < best[0]:
            best = (mse, float(alpha), vt.T @ (s / (s**2 + alpha) * uy))
    mse, alpha, weights = best
    return {"weights": weights.tolist(), "bias": float(y_mean), "feature_mean": mean.tolist(),
            "feature_scale": scale.tolist(), "alpha": alpha, "sigma": float(np.sqrt(mse)), "n_fit": int(n)}


def apply_probe(probe: dict, features) -> np.ndarray:
    """A probe's predictions (n,) for ``features`` (n, p) built as when it was fitted."""
    x = np.asarray(features, np.float64)
    w = np.asarray(probe["weights"], np.float64)
    if x.ndim != 2 or x.shape[1] != w.size:
        raise ValueError(f"this probe reads {w.size} features per spectrum, got an array of shape {x.shape}")
    z = (x - np.asarray(probe["feature_mean"], np.float64)) / np.asarray(probe["feature_scale"], np.float64)
    return z @ w + float(probe["bias"])
