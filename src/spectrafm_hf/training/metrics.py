"""Label metrics in physical units: bias, MAE, RMSE, robust scatter and interval coverage."""

from __future__ import annotations

import numpy as np

__all__ = ["label_metrics", "make_compute_metrics", "METRIC_NAMES"]

METRIC_NAMES = ("n", "bias", "mae", "rmse", "robust_scatter", "coverage68", "coverage95")
_Z68, _Z95 = 0.994457883, 1.959963985  # two-sided Gaussian quantiles of 68 % and 95 %


def label_metrics(pred, true, sigma=None) -> dict:
    """Metrics of one label over the stars with a finite reference value.

    residual = pred - true; bias = mean residual; robust scatter = 1.4826 * median |r - median r|; coverage68/95 =
    fraction of stars with |r| inside the predicted 68 % / 95 % Gaussian interval (needs ``sigma``).
    """
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    ok = np.isfinite(true) & np.isfinite(pred)
    r = pred[ok] - true[ok]
    out = {"n": int(ok.sum())}
    if not r.size:
        return {**out, **{k: float("nan") for k in METRIC_NAMES[1:]}}
    out.update(
        bias=float(r.mean()),
        mae=float(np.abs(r).mean()),
        rmse=float(np.sqrt((r**2).mean())),
        robust_scatter=float(1.482602218505602 * np.median(np.abs(r - np.median(r)))),
    )
    if sigma is not None:
        s = np.asarray(sigma, np.float64)[ok]
        out["coverage68"] = float((np.abs(r) <= _Z68 * s).mean())
        out["coverage95"] = float((np.abs(r) <= _Z95 * s).mean())
    return out


def make_compute_metrics(processor, label_names):
    """A ``compute_metrics`` for the `Trainer`: predictions are (mean, log_variance), label_ids the normalised
    targets, all (n, n_labels) in ``label_names`` order. Keys look like ``FE_H_rmse`` (physical units);
    ``FE_H_spread`` = std of the predictions / std of the true values (near 0: a constant prediction);
    ``FE_H_nll`` = that label's own Gaussian NLL in normalised units (without catalogue errors), where ``eval_loss``
    averages every queried label, helper labels included (``metric_for_best_model: FE_H_nll`` with
    ``greater_is_better: false`` chooses checkpoints on the target alone)."""

    def compute_metrics(eval_pred):
        mean, log_variance = eval_pred.predictions[:2]
        value, sigma = processor.unscale_labels(mean, log_variance, label_names)
        true = processor.unscale_labels(eval_pred.label_ids, np.zeros_like(eval_pred.label_ids), label_names)[0]
        out = {}
        for k, name in enumerate(label_names):
            for key, v in label_metrics(value[:, k], true[:, k], sigma[:, k]).items():
                out[f"{name}_{key}"] = v
            ok = np.isfinite(true[:, k]) & np.isfinite(value[:, k])
            std_true = float(np.std(true[ok, k])) if ok.sum() > 1 else 0.0
            out[f"{name}_spread"] = float(np.std(value[ok, k]) / std_true) if std_true > 0 else float("nan")
            y, m, lv = eval_pred.label_ids[:, k], mean[:, k], log_variance[:, k]
            finite = np.isfinite(y) & np.isfinite(m) & np.isfinite(lv)
            nll = 0.5 * ((y[finite] - m[finite]) ** 2 * np.exp(-lv[finite]) + lv[finite])
            out[f"{name}_nll"] = float(nll.mean()) if nll.size else float("nan")
        z = (value - true) / sigma
        out["z_std"] = float(np.nanstd(z))
        return out

    return compute_metrics
