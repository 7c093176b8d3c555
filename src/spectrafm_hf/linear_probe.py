"""Linear probes: a label read as a straight line from a frozen model's features.

The features of a spectrum are the model's embedding (its mean encoder output, `SpectraFMPipeline.embed`) and the
model's own predictions of the labels it knows. A ridge regression on them, fitted on a few labelled stars, is the
cheapest way to keep everything the pretraining learned: the network is not touched. A straight line also
extrapolates where a fine-tuned decoder saturates (issue 14: on Gaia XP the fine-tuned decoder's [Fe/H] stops near
-0.6 for stars below -1; docs/real_spectra.md: the few-shot experiments).

The ridge penalty is chosen by leave-one-out error on the fitting stars themselves (closed form, no validation
split needed) and the 1-sigma uncertainty of a prediction is the root-mean-square leave-one-out residual.
`SpectraFMPipeline.fit_linear_probe` fits one; the processor stores it (``linear_probes``) and `predict` applies it.

A ridge line is discriminative: fitted on stars of one range it pulls stars outside it towards their mean (regression
dilution: on Gaia XP, stars below [Fe/H] = -2 read -0.8 from a probe fitted on stars above -1). `fit_generative_probe`
is the other way round, as The Cannon does for spectra: each feature linear in the target and in covariates (the
network's own Teff and logg), inverted for the target by generalised least squares. Its answer is again a straight
line in the same features, so it is stored and applied as a ridge probe is; it is not pulled towards the fitting
stars' mean, at the price of variance.
"""

from __future__ import annotations

import numpy as np

# what a probe reads: the mean encoder output and the network's answers for its inputs, or also the last decoder
# state of each of those inputs' queries (`probe_features`)
PROBE_FEATURES = ("embedding", "embedding+queries")
# ridge penalties tried, on standardised features (the penalty of a feature of unit variance)
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 29))
MAX_REFITS = 100  # a generative probe's sigma: leave-one-out up to this many rows, this many folds beyond


def _standardised_rows(features, target, min_rows: int, what: str):
    """(target, standardised features, feature mean, feature scale) of the rows with finite values, checked: shapes,
    at least ``min_rows`` rows, a target that varies. A constant feature keeps scale 1 (its weight is then 0)."""
    x = np.asarray(features, np.float64)
    y = np.asarray(target, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features must be (n, p) and target (n,), got {x.shape} and {y.shape}")
    ok = np.isfinite(x).all(1) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(y) < min_rows:
        raise ValueError(f"{what} needs >= {min_rows} labelled rows with finite features, got {len(y)}")
    if not np.std(y) > 0:
        raise ValueError(f"{what} needs labels that vary; every labelled row has the same value")
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    return y, (x - mean) / scale, mean, scale


def fit_ridge_loo(features, target, alphas=DEFAULT_ALPHAS, min_rows: int = 5) -> dict:
    """Ridge regression of ``target`` (n,) on ``features`` (n, p), standardised on these rows, with the penalty of
    lowest mean squared leave-one-out residual. Returns the probe as plain numbers: ``weights`` (p,), ``bias``,
    ``feature_mean``, ``feature_scale``, ``alpha``, ``sigma`` (root-mean-square leave-one-out residual), ``n_fit``.
    Rows with a NaN are skipped."""
    y, z, mean, scale = _standardised_rows(features, target, min_rows, "a linear probe")
    alphas = np.asarray(alphas, np.float64).ravel()
    if not alphas.size or not (np.isfinite(alphas) & (alphas > 0)).all():
        raise ValueError(f"alphas must be positive finite numbers, got {alphas}")
    n = len(y)
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


def probe_features(kind: str, inputs, embedding, query_states, answers, columns: dict) -> np.ndarray:
    """The features a probe reads, (n, p): the embedding (n, hidden_size); with ``kind`` ``"embedding+queries"``
    also the decoder state (n, hidden_size) of each of its ``inputs``' queries (``query_states`` (n, Q, hidden_size),
    ``columns``: each input's query column); then the network's answers for its ``inputs``."""
    if kind not in PROBE_FEATURES:
        raise ValueError(f"a linear probe's features must be one of {PROBE_FEATURES}, got {kind!r}")
    cols = [columns[name] for name in inputs]
    states = [query_states[:, c] for c in cols] if kind == "embedding+queries" else []
    return np.column_stack([embedding, *states, *(answers[:, c] for c in cols)])


def apply_probe(probe: dict, features) -> np.ndarray:
    """A probe's predictions (n,) for ``features`` (n, p) built as when it was fitted."""
    x = np.asarray(features, np.float64)
    w = np.asarray(probe["weights"], np.float64)
    if x.ndim != 2 or x.shape[1] != w.size:
        raise ValueError(f"this probe reads {w.size} features per spectrum, got an array of shape {x.shape}")
    z = (x - np.asarray(probe["feature_mean"], np.float64)) / np.asarray(probe["feature_scale"], np.float64)
    return z @ w + float(probe["bias"])


def fit_generative_probe(features, target, covariates, shrink: float = 0.2, min_rows: int = 5) -> dict:
    """The generative read-out of ``target`` (n,): every column of ``features`` (n, p) not in ``covariates`` (column
    indices) is modelled as ``a + b * target + c . covariates + noise``, least squares on these rows after
    standardising them; a spectrum's target is then the generalised-least-squares solution of that model, with the
    residual covariance shrunk towards its diagonal by ``shrink`` (1: diagonal; needed when the rows are few). The
    solution is linear in the features, so the probe has `fit_ridge_loo`'s fields (``alpha`` holds ``shrink``,
    ``method`` is ``"generative"``) and `apply_probe` reads it; ``sigma`` is the root-mean-square leave-one-out
    residual, as for a ridge probe (``MAX_REFITS`` folds beyond that many rows). Rows with a NaN are skipped."""
    if not 0.0 <= float(shrink) <= 1.0:
        raise ValueError(f"shrink must be within [0, 1], got {shrink}")
    cov_cols = sorted({int(c) for c in covariates})
    y, z, mean, scale = _standardised_rows(features, target, max(min_rows, len(cov_cols) + 3), "a generative probe")
    n, n_features = z.shape
    if any(not 0 <= c < n_features for c in cov_cols):
        raise ValueError(f"covariates must be column indices of the {n_features} features, got {list(covariates)}")
    modelled = [c for c in range(n_features) if c not in cov_cols]

    def weights_bias(rows):
        design = np.column_stack([np.ones(len(rows)), y[rows], z[np.ix_(rows, cov_cols)]])
        coef, *_ = np.linalg.lstsq(design, z[np.ix_(rows, modelled)], rcond=None)
        residual = z[np.ix_(rows, modelled)] - design @ coef
        cov = np.atleast_2d(np.cov(residual.T))
        cov = (1.0 - shrink) * cov + shrink * np.diag(np.diag(cov))
        slope = coef[1]
        v = np.linalg.pinv(cov) @ slope
        information = float(slope @ v)
        if not information > 0:
            raise ValueError("a generative probe needs features that change with the target; none does here")
        v /= information  # target = (z_modelled - a - c . z_covariates) . v
        w = np.zeros(n_features)
        w[modelled] = v
        w[cov_cols] = -(coef[2:] @ v)
        return w, -float(coef[0] @ v)

    w, bias = weights_bias(np.arange(n))
    # held-out residuals from refits (the covariance has no closed form): leave-one-out up to MAX_REFITS rows, beyond
    # that MAX_REFITS interleaved folds, so thousands of stars cost 100 refits, not thousands
    folds = np.arange(n) % min(n, MAX_REFITS)
    held_out = np.empty(n)
    for k in range(folds.max() + 1):
        wk, bk = weights_bias(np.flatnonzero(folds != k))
        held_out[folds == k] = y[folds == k] - (z[folds == k] @ wk + bk)
    return {"weights": w.tolist(), "bias": bias, "feature_mean": mean.tolist(), "feature_scale": scale.tolist(),
            "alpha": float(shrink), "sigma": float(np.sqrt(np.mean(held_out**2))), "n_fit": int(n),
            "method": "generative"}
