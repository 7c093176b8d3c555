"""Baselines for the paper's [Fe/H] experiment, trained and evaluated on the same pixel arrays as SpectraFM.

All take an (n_stars, n_pixels) flux array (NaN = missing or masked pixel) and predict one or several labels
with a 1-sigma uncertainty:

- `ScratchMLP`: the paper's ``basic_NN`` (Koblischke & Bovy 2024, ``training/basic_NN/TrainingNN.py``): an MLP
  n_pixels -> 2048 -> 1280 -> 1024 -> {mean, log variance}, ReLU, dropout 0.1 after the first two hidden layers
  (4,987,138 parameters for 512 pixels), missing flux -> 1.0, inputs = flux minus the per-pixel mean of the training
  stars, the label standardised with the training mean/std, the heteroscedastic Gaussian NLL of SpectraFM, Adam 1e-4
  with cosine warm restarts. Unlike the paper's script, the checkpoint is chosen on the validation set it is given,
  never on test stars.
- `RidgeBaseline`: ridge regression of the label on the same centred pixels (closed form through one SVD); alpha is
  chosen on the validation set (or by leave-one-out when there is none); sigma = the leave-one-out residual RMS of
  the training stars.
- `CannonBaseline`: a quadratic Cannon (Ness et al. 2015): at every pixel the flux is a quadratic polynomial of the
  labels plus Gaussian scatter; training is weighted linear least squares per pixel at the maximum-likelihood
  scatter; test-time labels are found by non-linear least squares (`scipy.optimize.least_squares`) and their
  uncertainties come from the Jacobian.

- `GradientBoostingBaseline`: gradient-boosted regression trees on the raw pixels (scikit-learn's
  ``HistGradientBoostingRegressor``, which handles missing pixels natively), one label per model; the number of
  trees is chosen by early stopping on the validation set when one is given; sigma = the validation residual RMS.

Everything is numpy/scipy except the MLP (torch) and the trees (scikit-learn, the ``baselines`` extra).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["ScratchMLP", "RidgeBaseline", "GradientBoostingBaseline", "CannonBaseline", "prepare_flux"]


def prepare_flux(X, fill: float = 1.0) -> np.ndarray:
    """float64 copy of ``X`` with non-finite flux replaced by ``fill`` (the paper's basic_NN: NaN -> 1.0)."""
    X = np.array(X, dtype=np.float64, copy=True)
    X[~np.isfinite(X)] = fill
    return X


def _as_2d_labels(y) -> tuple[np.ndarray, bool]:
    y = np.asarray(y, dtype=np.float64)
    return (y[:, None], True) if y.ndim == 1 else (y, False)


# ============================================================================================== scratch MLP
LOG_VARIANCE_BOUNDS = (-15.0, 10.0)  # SpectraFMConfig's default clamp, in standardised label units


def _label_nll(mean, log_variance, target, target_err=None, student_t_dof: float = 0.0):
    """SpectraFM's loss, by default the Gaussian NLL 0.5 [(y - mu)^2 / s^2 + ln s^2], s^2 = exp(logvar) + err^2 +
    1e-8, NaN targets ignored. The log-variance is clamped to `LOG_VARIANCE_BOUNDS` (as in SpectraFM): unclamped,
    a network that drives it to -inf on easy stars makes 1/s^2 and its gradients overflow. ``student_t_dof`` > 2:
    the Student-t NLL with s^2 its scale^2 instead, constants dropped (SpectraFM's ``student_t_dof``,
    `spectrafm_hf.training.run.student_t_nll`)."""
    import torch

    ok = torch.isfinite(target)
    var = torch.exp(log_variance.clamp(*LOG_VARIANCE_BOUNDS)) + 1e-8
    if target_err is not None:
        var = var + torch.nan_to_num(target_err, nan=0.0) ** 2
    r = torch.where(ok, target - mean, torch.zeros_like(mean))
    if student_t_dof:
        per = 0.5 * (student_t_dof + 1.0) * torch.log1p(r**2 / (student_t_dof * var)) + 0.5 * torch.log(var)
    else:
        per = 0.5 * (r**2 / var + torch.log(var))
    return (per * ok).sum() / ok.sum().clamp_min(1)


class ScratchMLP:
    """The paper's scratch network (``basic_NN``) with checkpoint selection on a validation set.

    Args:
        hidden: hidden layer widths (the paper: 2048, 1280, 1024).
        dropout: dropout after the first two hidden layers (the paper: 0.1).
        learning_rate: Adam learning rate (the paper: 1e-4).
        batch_size: stars per step (the paper: 64).
        restart_epochs: period of the cosine warm-restart schedule, stepped once per epoch (the paper: 500);
            0 = constant learning rate.
        max_grad_norm: clip the gradient norm of every step to this (None = no clipping). Real spectra have rare
            pixels hundreds of times the median flux (Gaia XP); without clipping one such batch can send the
            weights to NaN (the paper's script had no clipping; its synthetic-like spectra had no such pixels).
        ema_decay: keep a running average of the weights with this decay (0 = off); validation scores and the
            kept weights are the average's (`spectrafm_hf.training.weight_average`, as SpectraFM's ``ema_decay``).
        student_t_dof: train (and choose the epoch) on a Student-t likelihood with this many degrees of freedom
            (> 2; 0 = the Gaussian NLL), as SpectraFM's ``student_t_dof``; `predict`'s sigma is then the t scale
            times ``sigma_per_scale``, so that +-sigma still holds 68 % of the stars.
        device: torch device (default CPU).

    A step whose loss is not finite is skipped (counted in ``skipped_steps_``) instead of being applied.
    """

    def __init__(self, hidden: Sequence[int] = (2048, 1280, 1024), dropout: float = 0.1, learning_rate: float = 1e-4,
                 batch_size: int = 64, restart_epochs: int = 500, max_grad_norm: float | None = 10.0,
                 ema_decay: float = 0.0, student_t_dof: float = 0.0, device: str = "cpu"):
        if student_t_dof and not (math.isfinite(student_t_dof) and student_t_dof > 2.0):
            raise ValueError(f"student_t_dof must be above 2, or 0 for the Gaussian NLL; got {student_t_dof}")
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.learning_rate = float(learning_rate)
        self.batch_size = int(batch_size)
        self.restart_epochs = int(restart_epochs)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.ema_decay = float(ema_decay)
        self.student_t_dof = float(student_t_dof)
        self.device = device
        self.net = None

    def build(self, n_inputs: int, n_outputs: int = 1):
        """The network for ``n_inputs`` pixels (also called by `fit`)."""
        import torch
        from torch import nn

        class _Net(nn.Module):
            def __init__(self, n_in, hidden, n_out, p):
                super().__init__()
                widths = [n_in, *hidden]
                layers = []
                for k in range(len(hidden)):
                    layers += [nn.Linear(widths[k], widths[k + 1]), nn.ReLU()]
                    if k < 2:  # the paper: dropout after fc1 and fc2 only
                        layers.append(nn.Dropout(p))
                self.body = nn.Sequential(*layers)
                self.mean_out = nn.Linear(widths[-1], n_out)
                self.log_variance_out = nn.Linear(widths[-1], n_out)

            def forward(self, x):
                h = self.body(x)
                return self.mean_out(h), self.log_variance_out(h)

        self.n_inputs, self.n_outputs = int(n_inputs), int(n_outputs)
        self.net = _Net(self.n_inputs, self.hidden, self.n_outputs, self.dropout).to(torch.device(self.device))
        return self.net

    def num_parameters(self, n_inputs: int | None = None) -> int:
        """Trainable parameters (of a fresh network for ``n_inputs`` pixels when given)."""
        net = self.build(n_inputs) if n_inputs is not None else self.net
        return int(sum(p.numel() for p in net.parameters() if p.requires_grad))

    def _inputs(self, X):
        import torch

        X = prepare_flux(X)
        if X.shape[1] != self.n_inputs:
            raise ValueError(f"expected {self.n_inputs} pixels, got {X.shape[1]}")
        return torch.as_tensor(X - self.x_mean_, dtype=torch.float32, device=torch.device(self.device))

    def _targets(self, y, y_err):
        import torch

        y2, _ = _as_2d_labels(y)
        t = torch.as_tensor((y2 - self.y_mean_) / self.y_std_, dtype=torch.float32, device=torch.device(self.device))
        if y_err is None:
            return t, None
        e2, _ = _as_2d_labels(y_err)
        return t, torch.as_tensor(e2 / self.y_std_, dtype=torch.float32, device=torch.device(self.device))

    def fit(self, X, y, X_val=None, y_val=None, y_err=None, y_val_err=None, epochs: int = 1000,
            steps: int | None = None, seed: int = 0, eval_every: int = 1, select_on: str = "nll",
            patience: int | None = None):
        """Train on (X, y); with a validation set, keep the weights of the evaluation with the lowest validation
        loss (``select_on`` = ``"nll"``, the training loss, or ``"mse"``). ``steps`` (optimizer steps), when given,
        replaces ``epochs``. ``y_err``: catalogue label errors, added to the predicted variance as in SpectraFM.
        ``patience``: stop once that many evaluations in a row have not improved on the best (a validation
        plateau: ``epochs`` is then a budget); ``stopped_epoch_`` says where training ended."""
        import torch

        if patience is not None and int(patience) < 1:
            raise ValueError(f"patience must be a positive number of evaluations, got {patience}")

        X_fill = prepare_flux(X)
        y2, self._squeeze = _as_2d_labels(y)
        if X_fill.shape[0] != y2.shape[0]:
            raise ValueError("X and y have different numbers of stars")
        torch.manual_seed(seed)
        self.build(X_fill.shape[1], y2.shape[1])
        self.x_mean_ = X_fill.mean(0)
        self.y_mean_ = np.nanmean(y2, 0)
        self.y_std_ = np.nanstd(y2, 0)
        self.y_std_[~(self.y_std_ > 0)] = 1.0
        x = self._inputs(X)
        t, te = self._targets(y, y_err)
        has_val = X_val is not None and y_val is not None
        if has_val:
            xv = self._inputs(X_val)
            tv, tve = self._targets(y_val, y_val_err)
        n = x.shape[0]
        per_epoch = max(1, math.ceil(n / self.batch_size))
        if steps is not None:
            epochs = max(1, math.ceil(int(steps) / per_epoch))
        # foreach: one call per step over every tensor (on CPU torch defaults to a loop); the same numbers
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.learning_rate, foreach=True)
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=self.restart_epochs,
                                                                          eta_min=1e-10)
                     if self.restart_epochs > 0 else None)
        gen = torch.Generator().manual_seed(seed)
        from .training.weight_average import WeightAverage

        average = WeightAverage(self.net, self.ema_decay) if self.ema_decay else None
        self.history_ = []
        best, self.best_epoch_, self._best_state = math.inf, None, None
        done, self.skipped_steps_, since_best = 0, 0, 0
        for epoch in range(1, epochs + 1):
            self.net.train()
            order = torch.randperm(n, generator=gen)
            losses = []
            for start in range(0, n, self.batch_size):
                if steps is not None and done >= steps:
                    break
                idx = order[start : start + self.batch_size].to(x.device)
                mean, logvar = self.net(x[idx])
                loss = _label_nll(mean, logvar, t[idx], None if te is None else te[idx], self.student_t_dof)
                optimizer.zero_grad(set_to_none=True)
                done += 1
                if not torch.isfinite(loss):
                    self.skipped_steps_ += 1
                    continue
                loss.backward()
                if self.max_grad_norm is not None:
                    norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.max_grad_norm)
                    if not torch.isfinite(norm):
                        self.skipped_steps_ += 1
                        continue
                optimizer.step()
                if average is not None:
                    average.update()
                losses.append(float(loss.detach()))
            if scheduler is not None:
                scheduler.step()
            record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan")}
            if has_val and (epoch % max(1, eval_every) == 0 or epoch == epochs):
                self.net.eval()
                with torch.no_grad(), (average.applied() if average is not None else contextlib.nullcontext()):
                    mv, lv = self._forward_batched(xv)
                    record["val_nll"] = float(_label_nll(mv, lv, tv, tve, self.student_t_dof))
                    ok = torch.isfinite(tv)
                    record["val_mse"] = float(((mv - tv)[ok] ** 2).mean())
                    score = record["val_nll" if select_on == "nll" else "val_mse"]
                    since_best += 1
                    if math.isfinite(score) and score < best:
                        best, self.best_epoch_, since_best = score, epoch, 0
                        self._best_state = copy.deepcopy(self.net.state_dict())
            self.history_.append(record)
            if patience is not None and since_best >= int(patience):
                break
        self.stopped_epoch_ = len(self.history_)
        if self._best_state is not None:
            self.net.load_state_dict(self._best_state)
        else:
            self.best_epoch_ = epochs
            if average is not None:
                average.copy_to_model()
        self.net.eval()
        return self

    def _forward_batched(self, x, batch: int = 1024):
        import torch

        means, logvars = [], []
        for start in range(0, x.shape[0], batch):
            m, lv = self.net(x[start : start + batch])
            means.append(m)
            logvars.append(lv)
        return torch.cat(means), torch.cat(logvars)

    @property
    def sigma_per_scale(self) -> float:
        """sigma / the predicted scale: 1 under the Gaussian NLL; under ``student_t_dof`` the t quantile at the
        Gaussian 1-sigma level (1.11 at 5 degrees of freedom), since the t scale alone covers only 64 % there."""
        if not self.student_t_dof:
            return 1.0
        from scipy.stats import norm, t

        return float(t.ppf(norm.cdf(1.0), self.student_t_dof))

    def predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sigma) in the label's units, sigma the 68 % half-width as for every model here
        (``sigma_per_scale``); 1-D when the model was fit on a 1-D label."""
        import torch

        if self.net is None:
            raise RuntimeError("fit() first")
        self.net.eval()
        with torch.no_grad():
            m, lv = self._forward_batched(self._inputs(X))
        mean = m.cpu().numpy().astype(np.float64) * self.y_std_ + self.y_mean_
        scale = np.sqrt(np.exp(np.clip(lv.cpu().numpy().astype(np.float64), *LOG_VARIANCE_BOUNDS))) * self.y_std_
        sigma = scale * self.sigma_per_scale
        return (mean[:, 0], sigma[:, 0]) if self._squeeze else (mean, sigma)


# ============================================================================================== ridge
class RidgeBaseline:
    """Ridge regression on centred pixels (missing flux -> 1.0), one SVD for every alpha.

    Args:
        alphas: candidate penalties; default: 41 values log-spaced over 1e-6 .. 1e4 times the mean squared singular
            value of the training pixels.
    """

    def __init__(self, alphas: Sequence[float] | None = None):
        self.alphas = None if alphas is None else np.asarray(alphas, np.float64)

    def fit(self, X, y, X_val=None, y_val=None):
        X_fill = prepare_flux(X)
        y2, self._squeeze = _as_2d_labels(y)
        keep = np.all(np.isfinite(y2), 1)
        X_fill, y2 = X_fill[keep], y2[keep]
        n = X_fill.shape[0]
        self.x_mean_ = X_fill.mean(0)
        self.y_mean_ = y2.mean(0)
        Xc, yc = X_fill - self.x_mean_, y2 - self.y_mean_
        U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
        alphas = self.alphas if self.alphas is not None else np.mean(s**2) * np.logspace(-6, 4, 41)
        Uty = U.T @ yc
        # leave-one-out residuals through the hat matrix (the intercept adds 1/n to its diagonal)
        self.scores_ = []
        best = (math.inf, None)
        has_val = X_val is not None and y_val is not None
        if has_val:
            yv, _ = _as_2d_labels(y_val)
            Xv = prepare_flux(X_val) - self.x_mean_
            okv = np.all(np.isfinite(yv), 1)
        for a in alphas:
            coef = Vt.T @ ((s / (s**2 + a))[:, None] * Uty)
            shrink = s**2 / (s**2 + a)
            h = (U**2) @ shrink + 1.0 / n
            loo = (yc - U @ (shrink[:, None] * Uty)) / np.clip(1.0 - h, 1e-9, None)[:, None]
            loo_mse = float(np.mean(loo**2))
            score = float(np.mean(((Xv @ coef + self.y_mean_) - yv)[okv] ** 2)) if has_val else loo_mse
            self.scores_.append((float(a), score, loo_mse))
            if score < best[0]:
                best = (score, (float(a), coef, np.sqrt(np.mean(loo**2, 0))))
        self.alpha_, self.coef_, self.sigma_ = best[1]
        self.selected_on_ = "validation" if has_val else "leave-one-out"
        return self

    def predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sigma); sigma is the same for every star: the training leave-one-out residual RMS."""
        mean = (prepare_flux(X) - self.x_mean_) @ self.coef_ + self.y_mean_
        sigma = np.broadcast_to(self.sigma_, mean.shape).copy()
        return (mean[:, 0], sigma[:, 0]) if self._squeeze else (mean, sigma)


# ============================================================================================== boosted trees
class GradientBoostingBaseline:
    """Gradient-boosted trees for one label (scikit-learn ``HistGradientBoostingRegressor``).

    Args:
        max_iter: trees fitted; with a validation set, predictions use the number with the lowest validation MSE.
        learning_rate, max_leaf_nodes, l2_regularization: passed to scikit-learn.
        seed: random state.
    """

    def __init__(self, max_iter: int = 500, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                 l2_regularization: float = 0.0, seed: int = 0):
        self.params = dict(max_iter=int(max_iter), learning_rate=float(learning_rate),
                           max_leaf_nodes=int(max_leaf_nodes), l2_regularization=float(l2_regularization))
        self.seed = int(seed)

    def fit(self, X, y, X_val=None, y_val=None):
        try:
            from sklearn.ensemble import HistGradientBoostingRegressor
        except ImportError as e:
            raise ImportError("GradientBoostingBaseline needs scikit-learn: pip install 'spectrafm-hf[baselines]'") from e
        X = np.asarray(X, np.float64)
        y = np.asarray(y, np.float64)
        ok = np.isfinite(y)
        has_val = X_val is not None and y_val is not None
        model = HistGradientBoostingRegressor(**self.params, random_state=self.seed, early_stopping=False)
        model.fit(X[ok], y[ok])
        if has_val:
            Xv, yv = np.asarray(X_val, np.float64), np.asarray(y_val, np.float64)
            okv = np.isfinite(yv)
            # validation MSE after each tree; predictions use the best number of trees
            mse = np.array([np.mean((p - yv[okv]) ** 2) for p in model.staged_predict(Xv[okv])])
            self.n_trees_ = int(np.argmin(mse)) + 1
            self.sigma_ = float(np.sqrt(mse[self.n_trees_ - 1]))
        else:
            self.n_trees_ = int(model.n_iter_)
            self.sigma_ = float(np.sqrt(np.mean((model.predict(X[ok]) - y[ok]) ** 2)))
        self.model_ = model
        return self

    def predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sigma); sigma is the same for every star (validation residual RMS, else training RMS)."""
        for k, mean in enumerate(self.model_.staged_predict(np.asarray(X, np.float64)), start=1):
            if k == self.n_trees_:
                return mean, np.full(mean.shape, self.sigma_)
        raise RuntimeError("the fitted model has fewer trees than chosen")  # cannot happen


# ============================================================================================== the Cannon
def _label_vector(x: np.ndarray) -> np.ndarray:
    """[1, x_i, x_i x_j (i <= j)] for (n, L) scaled labels -> (n, K)."""
    n, L = x.shape
    iu, ju = np.triu_indices(L)
    return np.concatenate([np.ones((n, 1)), x, x[:, iu] * x[:, ju]], axis=1)


def _label_vector_jacobian(x: np.ndarray) -> np.ndarray:
    """d(label vector)/dx for one star's (L,) scaled labels -> (K, L)."""
    L = x.size
    iu, ju = np.triu_indices(L)
    quad = np.zeros((iu.size, L))
    quad[np.arange(iu.size), iu] += x[ju]
    quad[np.arange(iu.size), ju] += x[iu]
    return np.concatenate([np.zeros((1, L)), np.eye(L), quad], axis=0)


class CannonBaseline:
    """A quadratic Cannon: ``flux[n, p] = theta[p] . l(labels[n]) + noise``, noise variance
    ``1/ivar[n, p] + scatter[p]^2``, with the labels pivoted by their training mean and scaled by their std.

    Args:
        label_names: names of the label columns (for reporting only).
        scatter_grid: ln(scatter) values searched per pixel before a parabolic refinement (default 1e-5 .. 1).
        bound: test-time labels are bounded to +-``bound`` training standard deviations around the training mean.
    """

    def __init__(self, label_names: Sequence[str] | None = None, scatter_grid: Sequence[float] | None = None,
                 bound: float = 12.0):
        self.label_names = None if label_names is None else list(label_names)
        self.scatter_grid = (np.linspace(np.log(1e-5), 0.0, 47) if scatter_grid is None
                             else np.asarray(scatter_grid, np.float64))
        self.bound = float(bound)

    @staticmethod
    def _noise(X, ivar):
        X = np.asarray(X, np.float64)
        good = np.isfinite(X)
        if ivar is None:
            var = np.zeros_like(X)
        else:
            ivar = np.asarray(ivar, np.float64)
            good &= np.isfinite(ivar) & (ivar > 0)
            var = np.where(good, 1.0 / np.where(good, ivar, 1.0), 0.0)
        return np.where(good, X, 1.0), var, good

    def _solve(self, lvec, flux, var, good, scatter):
        """Weighted least squares at every pixel for a given (P,) scatter: theta (P, K) and -2 ln L per pixel."""
        w = good / (var + scatter[None, :] ** 2)
        A = np.einsum("np,nk,nl->pkl", w, lvec, lvec)
        b = np.einsum("np,nk->pk", w * flux, lvec)
        A[:, np.arange(A.shape[1]), np.arange(A.shape[1])] += 1e-10 * np.trace(A, axis1=1, axis2=2)[:, None] + 1e-12
        theta = np.linalg.solve(A, b[..., None])[..., 0]
        r = flux - lvec @ theta.T
        with np.errstate(divide="ignore"):
            m2lnl = np.sum(np.where(good, w * r**2 - np.log(np.where(good, w, 1.0)), 0.0), 0)
        return theta, m2lnl

    def fit(self, X, labels, ivar=None):
        """Train on (n, P) flux (NaN = missing), (n, L) or (n,) labels and optional (n, P) inverse variances."""
        lab, self._squeeze = _as_2d_labels(labels)
        keep = np.all(np.isfinite(lab), 1)
        flux, var, good = self._noise(np.asarray(X)[keep], None if ivar is None else np.asarray(ivar)[keep])
        lab = lab[keep]
        self.pivots_ = lab.mean(0)
        self.scales_ = lab.std(0)
        self.scales_[~(self.scales_ > 0)] = 1.0
        lvec = _label_vector((lab - self.pivots_) / self.scales_)
        if lvec.shape[0] < lvec.shape[1]:
            raise ValueError(f"a quadratic Cannon in {lab.shape[1]} labels needs >= {lvec.shape[1]} training stars")
        P = flux.shape[1]
        grid = self.scatter_grid
        table = np.stack([self._solve(lvec, flux, var, good, np.full(P, np.exp(g)))[1] for g in grid])  # (G, P)
        k = np.argmin(table, 0)
        ln_s = grid[k].copy()
        inner = (k > 0) & (k < grid.size - 1)  # parabola through the best grid point and its neighbours
        if inner.any():
            i = np.flatnonzero(inner)
            y0, y1, y2 = table[k[i] - 1, i], table[k[i], i], table[k[i] + 1, i]
            h = grid[1] - grid[0]
            denom = y0 - 2 * y1 + y2
            step = np.where(denom > 0, 0.5 * h * (y0 - y2) / np.where(denom > 0, denom, 1.0), 0.0)
            ln_s[i] += np.clip(step, -h, h)
        self.scatter_ = np.exp(ln_s)
        self.theta_, _ = self._solve(lvec, flux, var, good, self.scatter_)
        return self

    def model_flux(self, labels) -> np.ndarray:
        """Model spectra (n, P) for labels in physical units."""
        lab, _ = _as_2d_labels(labels)
        return _label_vector((lab - self.pivots_) / self.scales_) @ self.theta_.T

    def predict(self, X, ivar=None) -> tuple[np.ndarray, np.ndarray]:
        """Labels and their 1-sigma uncertainties (from the Jacobian at the optimum), by non-linear least squares
        from two starts per star (the linearised solution and the training mean), keeping the better fit."""
        from scipy.optimize import least_squares

        flux, var, good = self._noise(X, ivar)
        L = self.pivots_.size
        n = flux.shape[0]
        mean = np.full((n, L), np.nan)
        sigma = np.full((n, L), np.nan)
        theta0, theta1 = self.theta_[:, 0], self.theta_[:, 1 : 1 + L]
        for i in range(n):
            g = good[i]
            if g.sum() <= L:
                continue
            wsq = 1.0 / np.sqrt(var[i, g] + self.scatter_[g] ** 2)
            th = self.theta_[g]
            f = flux[i, g]

            def resid(x):
                return (f - _label_vector(x[None])[0] @ th.T) * wsq

            def jac(x):
                return -(th @ _label_vector_jacobian(x)) * wsq[:, None]

            lin, *_ = np.linalg.lstsq(theta1[g] * wsq[:, None], (f - theta0[g]) * wsq, rcond=None)
            best = None
            for x0 in (np.clip(lin, -self.bound + 1e-6, self.bound - 1e-6), np.zeros(L)):
                sol = least_squares(resid, x0, jac=jac, bounds=(-self.bound, self.bound), method="trf",
                                    x_scale=1.0)
                if best is None or sol.cost < best.cost:
                    best = sol
            J = best.jac
            try:
                cov = np.linalg.inv(J.T @ J)
                err = np.sqrt(np.clip(np.diag(cov), 0, None))
            except np.linalg.LinAlgError:
                err = np.full(L, np.inf)
            mean[i] = best.x * self.scales_ + self.pivots_
            sigma[i] = err * self.scales_
        return (mean[:, 0], sigma[:, 0]) if self._squeeze else (mean, sigma)
