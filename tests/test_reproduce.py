"""The paper-reproduction chain (scripts/reproduce_paper.py) at toy scale, and the baselines on problems with a
known answer."""

import contextlib
import importlib.util
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from spectrafm_hf.baselines import CannonBaseline, RidgeBaseline, ScratchMLP

MODELS = {"spectrafm_stage3", "spectrafm_alternative", "scratch_nn", "spectrafm_no_pretraining", "cannon", "ridge",
          "spectrafm_stage1", "spectrafm_stage2", "spectrafm_stage3_l2sp", "spectrafm_stage2_affine"}
SPLITS = {"all", "feh_lt_-1", "feh_ge_-1", "feh_lt_-1.5", "giants", "dwarfs"}
COLUMNS = ["model", "split", "n", "bias", "mae", "rmse", "robust_scatter", "coverage68", "coverage95"]


def _reproduce(out) -> str:
    """``python scripts/reproduce_paper.py scripts/configs/reproduce_tiny.yaml --output_dir OUT``, run in this process
    (the package is imported already, which saves the ~10 s start-up of a fresh interpreter); returns its log."""
    spec = importlib.util.spec_from_file_location("reproduce_paper", REPO / "scripts" / "reproduce_paper.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    buffer = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; the toy models gain nothing from more
    try:
        with contextlib.redirect_stdout(buffer):
            assert script.main([str(REPO / "scripts" / "configs" / "reproduce_tiny.yaml"), "--output_dir",
                                str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    return out, _reproduce(out)


def test_every_model_and_split_has_finite_metrics(tiny):
    out, _ = tiny
    table = pd.read_csv(out / "results" / "paper_reproduction.csv")
    assert list(table.columns) == COLUMNS
    assert set(zip(table.model, table.split)) == {(m, s) for m in MODELS for s in SPLITS}
    assert len(table) == len(MODELS) * len(SPLITS)
    filled = table[table.n > 0]
    assert np.isfinite(filled[COLUMNS[3:]].to_numpy(float)).all()
    assert ((filled.coverage68 >= 0) & (filled.coverage68 <= filled.coverage95) & (filled.coverage95 <= 1)).all()
    # the split sizes are those of the test stars the script wrote down
    test = pd.read_csv(out / "data" / "test.csv")
    n = table[table.model == "spectrafm_stage3"].set_index("split").n
    assert n["all"] == len(test) == 120
    assert n["feh_lt_-1"] == (test.FE_H < -1).sum() > 0 and n["feh_lt_-1.5"] == (test.FE_H < -1.5).sum() > 0
    assert n["feh_lt_-1"] + n["feh_ge_-1"] == n["all"]
    assert n["giants"] == ((test.LOGG >= 1) & (test.LOGG <= 3.5)).sum() > 0 and n["dwarfs"] == (test.LOGG > 3.5).sum()


def test_figures_summary_and_readme(tiny):
    out, _ = tiny
    results = out / "results"
    for name in ("fe_h_predicted_vs_true_fig4.png", "calibration_fe_h.png", "attention_fe_window.png",
                 "fe_h_predicted_vs_true_all_models.png"):
        data = (results / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    summary = json.loads((results / "summary.json").read_text())
    table = pd.read_csv(results / "paper_reproduction.csv").set_index(["model", "split"])
    ratio = table.loc[("scratch_nn", "feh_lt_-1"), "rmse"] / table.loc[("spectrafm_stage3", "feh_lt_-1"), "rmse"]
    goals = summary["goals"]
    assert goals["metal_poor_rmse_ratio_scratch_over_stage3"]["value"] == pytest.approx(ratio, rel=1e-4)
    assert set(goals["stage3_coverage68"]["value"]) == SPLITS
    assert goals["stage3_coverage68"]["value"]["all"] == pytest.approx(
        table.loc[("spectrafm_stage3", "all"), "coverage68"], rel=1e-4)
    assert summary["data"]["validation"]["n_feh_le_-1"] == 0
    readme = (results / "README.md").read_text()
    assert "none " in readme and "metal-poor" in readme and "validation" in readme.lower()


def test_validation_has_no_metal_poor_and_no_test_star(tiny):
    out, log = tiny
    val = pd.read_csv(out / "data" / "validation.csv")
    train = pd.read_csv(out / "data" / "train_stage3.csv")
    test = pd.read_csv(out / "data" / "test.csv")
    assert len(val) > 10 and (val.FE_H > -1).all()
    assert len(train) == 24 and (train.FE_H > -1).all()
    assert not set(val.object_id) & set(test.object_id)
    assert not set(train.object_id) & set(test.object_id)
    assert not set(train.object_id) & set(val.object_id)
    # the test set reaches the metal-poor tail (its fraction was raised on purpose)
    assert (test.FE_H < -1).mean() > 0.2 and test.FE_H.min() < -2.0
    # every SpectraFM model was trained here (nothing reused) and the baselines saw the same 24 stars
    for stage in ("stage 1", "stage 2", "stage 3", "alternative", "no pretraining"):
        assert f"{stage}: training" in log
    assert "baselines: 24 training stars x 512 pixels" in log
    history = pd.read_csv(out / "predictions" / "scratch_nn_history.csv")
    assert history.val_nll.notna().all()


def test_the_affine_row_is_stage_2_with_a_fitted_fe_h_scale(tiny):
    out, _ = tiny
    slope, intercept = json.loads((out / "spectrafm_stage2_affine" / "preprocessor_config.json").read_text())[
        "label_affine"]["FE_H"]
    assert slope != 1.0
    stage2, affine = (pd.read_csv(out / "predictions" / f"{m}.csv")
                      for m in ("spectrafm_stage2", "spectrafm_stage2_affine"))
    np.testing.assert_allclose(affine.FE_H_pred, slope * stage2.FE_H_pred + intercept, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(affine.FE_H_sigma, abs(slope) * stage2.FE_H_sigma, rtol=1e-5)


def test_a_second_run_skips_every_finished_step(tiny):
    out, _ = tiny
    before = (out / "predictions" / "spectrafm_stage3.csv").stat().st_mtime_ns
    log = _reproduce(out)
    for stage in ("stage 1", "stage 2", "stage 3", "alternative", "no pretraining"):
        assert f"{stage}: " in log and f"{stage}: training" not in log
    assert "exists, skipped" in log and "scratch NN:" not in log and "predicted" not in log
    assert (out / "predictions" / "spectrafm_stage3.csv").stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------------------- baselines
def _linear_problem(n, lo, hi, rng, p=512, noise=0.005, second=False):
    """Spectra linear in one label (and optionally a nuisance label), a few missing pixels."""
    a = np.random.default_rng(99).normal(0, 0.05, p)
    b = np.random.default_rng(98).normal(0, 0.03, p)
    y = rng.uniform(lo, hi, n)
    t = rng.uniform(-1, 1, n)
    X = 1 + np.outer(y, a) + (np.outer(t, b) if second else 0) + rng.normal(0, noise, (n, p))
    X[rng.random(X.shape) < 0.02] = np.nan
    return X, y, t


def test_ridge_recovers_a_linear_label_and_its_leave_one_out_is_exact():
    rng = np.random.default_rng(0)
    X, y, _ = _linear_problem(100, -1, 0.4, rng)
    Xv, yv, _ = _linear_problem(60, -1, 0.4, rng)
    Xt, yt, _ = _linear_problem(200, -1, 0.4, rng)
    ridge = RidgeBaseline().fit(X, y, Xv, yv)
    mean, sigma = ridge.predict(Xt)
    rmse = np.sqrt(np.mean((mean - yt) ** 2))
    assert rmse < 0.02
    assert sigma.shape == mean.shape and np.all(sigma == sigma[0]) and 0.3 * rmse < sigma[0] < 3 * rmse
    scores = np.array(ridge.scores_)
    assert ridge.alpha_ == scores[np.argmin(scores[:, 1]), 0]  # the alpha with the lowest validation error
    # the closed-form leave-one-out error equals refitting without each star
    small = RidgeBaseline(alphas=[ridge.alpha_]).fit(X[:25], y[:25])
    brute = [RidgeBaseline(alphas=[ridge.alpha_]).fit(np.delete(X[:25], i, 0), np.delete(y[:25], i)).predict(
        X[i : i + 1])[0][0] - y[i] for i in range(25)]
    assert small.scores_[0][2] == pytest.approx(np.mean(np.square(brute)), rel=1e-6)
    assert small.selected_on_ == "leave-one-out"


def test_cannon_recovers_labels_and_the_intrinsic_scatter():
    rng = np.random.default_rng(1)
    X, y, t = _linear_problem(120, -1, 0.4, rng, second=True)
    Xt, yt, tt = _linear_problem(80, -1, 0.4, rng, second=True)
    ivar = np.full(X.shape, 1 / 0.005**2)
    cannon = CannonBaseline().fit(X, np.column_stack([y, t]), ivar=ivar)
    mean, sigma = cannon.predict(Xt, ivar=np.full(Xt.shape, 1 / 0.005**2))
    # the noise limit is ~0.005 / (0.05 sqrt(500)) ~ 0.0045 dex
    assert np.sqrt(np.mean((mean[:, 0] - yt) ** 2)) < 0.01
    assert np.sqrt(np.mean((mean[:, 1] - tt) ** 2)) < 0.02
    assert 0.5 < np.mean(np.abs(mean[:, 0] - yt) < sigma[:, 0]) < 0.9  # the Jacobian errors are about right
    # noise without ivar is absorbed by the fitted per-pixel scatter
    rng = np.random.default_rng(2)
    X1, y1, _ = _linear_problem(150, -1, 0.4, rng, noise=0.01)
    one = CannonBaseline().fit(X1, y1)
    assert np.median(one.scatter_) == pytest.approx(0.01, rel=0.15)
    m1, s1 = one.predict(_linear_problem(40, -1, 0.4, rng, noise=0.01)[0])
    assert m1.shape == (40,) and np.isfinite(s1).all()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_scratch_mlp_is_the_papers_network_and_keeps_its_best_validation_epoch(one_thread):
    assert ScratchMLP().num_parameters(512) == 4_987_138
    rng = np.random.default_rng(3)
    X, y, _ = _linear_problem(64, -1, 0.4, rng)
    Xv, yv, _ = _linear_problem(40, -1, 0.4, rng)
    mlp = ScratchMLP(learning_rate=1e-3).fit(X, y, Xv, yv, epochs=8, seed=0)
    assert np.allclose(mlp.x_mean_, np.where(np.isnan(X), 1.0, X).mean(0))  # NaN -> 1, then centred
    assert mlp.y_mean_[0] == pytest.approx(y.mean()) and mlp.y_std_[0] == pytest.approx(y.std())
    nll = [h["val_nll"] for h in mlp.history_]
    assert mlp.best_epoch_ == int(np.argmin(nll)) + 1
    mean, sigma = mlp.predict(Xv)
    assert mean.shape == sigma.shape == (40,) and (sigma > 0).all()
    # the weights in use are those of the chosen epoch: its recorded validation MSE is reproduced
    mse = np.mean(((mean - yv) / mlp.y_std_[0]) ** 2)
    assert mse == pytest.approx(mlp.history_[mlp.best_epoch_ - 1]["val_mse"], rel=1e-4)
    assert nll[mlp.best_epoch_ - 1] < nll[0]


def test_scratch_mlp_ema_scores_and_keeps_the_average(one_thread):
    """ema_decay: validation scores are the running average's and the kept weights are it: the chosen epoch's
    recorded MSE is reproduced by the kept network, and it differs from the plain run's."""
    rng = np.random.default_rng(3)
    X, y, _ = _linear_problem(64, -1, 0.4, rng)
    Xv, yv, _ = _linear_problem(40, -1, 0.4, rng)
    plain = ScratchMLP(learning_rate=1e-3).fit(X, y, Xv, yv, epochs=6, seed=0)
    mlp = ScratchMLP(learning_rate=1e-3, ema_decay=0.9).fit(X, y, Xv, yv, epochs=6, seed=0)
    mean, _ = mlp.predict(Xv)
    mse = np.mean(((mean - yv) / mlp.y_std_[0]) ** 2)
    assert mse == pytest.approx(mlp.history_[mlp.best_epoch_ - 1]["val_mse"], rel=1e-4)
    assert [h["val_mse"] for h in mlp.history_] != pytest.approx([h["val_mse"] for h in plain.history_], rel=1e-3)
    with pytest.raises(ValueError, match="ema_decay"):
        ScratchMLP(ema_decay=1.0).fit(X, y, epochs=1)


def test_scratch_mlp_student_t_trains_and_scores_on_the_t_likelihood(one_thread):
    """student_t_dof: the MLP's loss and its validation score (the epoch choice) are SpectraFM's Student-t NLL, so
    its history differs from the Gaussian run's and its recorded score is that NLL of the kept network; dof <= 2 is
    refused."""
    import torch

    from spectrafm_hf.training.run import student_t_nll

    rng = np.random.default_rng(3)
    X, y, _ = _linear_problem(64, -1, 0.4, rng)
    Xv, yv, _ = _linear_problem(40, -1, 0.4, rng)
    plain = ScratchMLP(learning_rate=1e-3).fit(X, y, Xv, yv, epochs=4, seed=0)
    mlp = ScratchMLP(learning_rate=1e-3, student_t_dof=5.0).fit(X, y, Xv, yv, epochs=4, seed=0)
    assert [h["val_nll"] for h in mlp.history_] != pytest.approx([h["val_nll"] for h in plain.history_], rel=1e-3)
    mean, sigma = mlp.predict(Xv)
    t_scale = sigma / mlp.sigma_per_scale
    centre, scale = mlp.y_mean_[0], mlp.y_std_[0]
    score = student_t_nll(torch.as_tensor((mean - centre) / scale), torch.as_tensor(np.log((t_scale / scale) ** 2)),
                          torch.as_tensor((yv - centre) / scale), dof=5.0)
    assert float(score) == pytest.approx(mlp.history_[mlp.best_epoch_ - 1]["val_nll"], abs=1e-3)
    with pytest.raises(ValueError, match="student_t_dof must be above 2"):
        ScratchMLP(student_t_dof=1.5)


def test_scratch_mlp_student_t_sigma_holds_68_percent_of_t_distributed_errors():
    """Under student_t_dof, predict's sigma is the t scale widened so that +-sigma holds 68.3 % of errors drawn from
    that t distribution (the bare scale holds 64 % at 5 degrees of freedom); the Gaussian MLP's factor is 1."""
    rng = np.random.default_rng(0)
    draws = rng.standard_t(5.0, size=400_000)
    factor = ScratchMLP(student_t_dof=5.0).sigma_per_scale
    assert np.mean(np.abs(draws) < 1.0) == pytest.approx(0.637, abs=0.004)
    assert np.mean(np.abs(draws) < factor) == pytest.approx(0.6827, abs=0.004)
    assert ScratchMLP().sigma_per_scale == 1.0


def test_scratch_mlp_stops_on_a_validation_plateau_with_the_weights_a_whole_run_keeps(one_thread):
    """patience: training ends once that many evaluations in a row have not beaten the best; the run is the whole
    run cut short (same history so far) and keeps the best weights it saw. (Here the whole run improves again
    later: a plateau stop can keep an earlier epoch than the whole budget would.)"""
    rng = np.random.default_rng(3)
    X, y, _ = _linear_problem(48, -1, 0.4, rng)
    Xv, yv, _ = _linear_problem(40, -1, 0.4, rng)
    kw = dict(hidden=(256, 128), learning_rate=3e-3, batch_size=16, restart_epochs=0)
    whole = ScratchMLP(**kw).fit(X, y, Xv, yv, epochs=60, seed=0, eval_every=2)
    cut = ScratchMLP(**kw).fit(X, y, Xv, yv, epochs=60, seed=0, eval_every=2, patience=5)
    # the rule replayed on the whole run's validation history: the first evaluation 5 after the last improvement
    scores = [(h["epoch"], h["val_nll"]) for h in whole.history_ if "val_nll" in h]
    best, since, expected = np.inf, 0, None
    for epoch, score in scores:
        since += 1
        if score < best:
            best, since = score, 0
        if since >= 5:
            expected = epoch
            break
    assert expected is not None and expected < 60  # this problem overfits: the plateau comes before the budget
    assert cut.stopped_epoch_ == expected and whole.stopped_epoch_ == 60
    assert cut.history_ == whole.history_[:expected]
    seen = [score for epoch, score in scores if epoch <= expected]
    assert cut.best_epoch_ == scores[int(np.argmin(seen))][0] < expected
    mean, _ = cut.predict(Xv)  # the kept weights are the best epoch's: its recorded validation MSE is reproduced
    assert np.mean(((mean - yv) / cut.y_std_[0]) ** 2) == pytest.approx(
        cut.history_[cut.best_epoch_ - 1]["val_mse"], rel=1e-4)
    with pytest.raises(ValueError, match="patience"):
        ScratchMLP(**kw).fit(X, y, Xv, yv, epochs=2, patience=0)


def test_scratch_mlp_stays_finite_on_outlier_pixels_and_noise_free_labels(one_thread):
    # real Gaia XP spectra have rare pixels hundreds of times the median flux; with an unclamped exp(log variance)
    # and no gradient clipping the training loss went to NaN within 30 epochs here (issue 14)
    rng = np.random.default_rng(0)
    X = rng.normal(1, 0.1, (256, 20))
    y = X[:, :3].sum(1)  # noise-free: the likelihood rewards driving the variance to zero
    X[5, 4] = 1e4
    mlp = ScratchMLP(hidden=(64, 32), learning_rate=3e-3, batch_size=32, restart_epochs=0)
    mlp.fit(X, y, X[:64], y[:64], epochs=40)
    losses = [h["train_loss"] for h in mlp.history_]
    assert np.isfinite(losses).all(), losses
    assert np.isfinite([h["val_nll"] for h in mlp.history_]).all()
    mean, sigma = mlp.predict(X)
    assert np.isfinite(mean).all() and (sigma > 0).all() and np.isfinite(sigma).all()
    ok = np.arange(len(y)) != 5
    assert np.sqrt(np.mean((mean - y)[ok] ** 2)) < 0.75 * y.std()  # it still learns


# ------------------------------------------------------------------------------------------- beyond the paper
BEYOND_COLUMNS = ["experiment", "model", "n_train", "split", "n", "bias", "mae", "rmse", "robust_scatter",
                  "coverage68", "coverage95"]


@pytest.fixture(scope="module")
def beyond(tiny, tmp_path_factory):
    """scripts/beyond_paper.py beyond_paper_tiny.yaml on the tiny reproduction's models and data."""
    out, _ = tiny
    spec = importlib.util.spec_from_file_location("beyond_paper", REPO / "scripts" / "beyond_paper.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    beyond_out = tmp_path_factory.mktemp("beyond")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            assert script.main([str(REPO / "scripts" / "configs" / "beyond_paper_tiny.yaml"), "--output_dir",
                                str(beyond_out), "--reproduce_output_dir", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return beyond_out, buffer.getvalue()


def test_beyond_paper_writes_the_learning_curve_known_logg_and_second_instrument(tiny, beyond):
    out, _ = tiny
    beyond_out, log = beyond
    table = pd.read_csv(beyond_out / "results" / "beyond_paper.csv")
    assert list(table.columns) == BEYOND_COLUMNS
    lc = table[table.experiment == "learning_curve"]
    assert set(lc.model) == {"spectrafm_stage3", "scratch_nn", "ridge"} and sorted(lc.n_train.unique()) == [12, 24]
    # 24 stars = the reproduction's stage-3 set: its model is reused, not retrained
    assert "learning curve n=24" not in log and "learning curve n=12" in log
    reproduced = pd.read_csv(out / "results" / "paper_reproduction.csv")
    a = lc[(lc.model == "spectrafm_stage3") & (lc.n_train == 24) & (lc.split == "all")].rmse.item()
    b = reproduced[(reproduced.model == "spectrafm_stage3") & (reproduced.split == "all")].rmse.item()
    assert a == pytest.approx(b, rel=1e-4)
    assert set(table[table.experiment == "known_logg"].model) == {"spectrafm_stage3", "spectrafm_stage3_known_logg"}
    info = json.loads((beyond_out / "known_logg" / "final" / "training_info.json").read_text())
    assert info["config"]["data"]["input_label_names"] == ["LOGG"] and info["config"]["data"]["input_label_prob"] == 1
    si = table[table.experiment == "second_instrument"]
    assert set(si.model) == {"spectrafm_apogee_gaia_rvs_pretrained", "spectrafm_apogee_pretrained",
                             "spectrafm_no_pretraining", "scratch_nn", "ridge"}
    assert (si[si.split == "all"].n == 60).all() and (si[si.split == "feh_lt_-1"].n > 0).all()
    filled = table[table.n > 0]
    assert np.isfinite(filled[BEYOND_COLUMNS[5:]].to_numpy(float)).all()
    summary = json.loads((beyond_out / "results" / "summary.json").read_text())
    assert set(summary["figures"]) == {"learning_curve", "second_instrument"}
    # the RVS models read RVS spectra: their training data were Gaia RVS rows
    cfg = json.loads((beyond_out / "second_instrument" / "spectrafm_no_pretraining" / "final" / "config.json")
                     .read_text())
    assert cfg["label_names"] == ["FE_H"]
