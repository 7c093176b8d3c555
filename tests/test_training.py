"""Collator, metrics and the Trainer path: pretrain -> fine-tune (full, frozen, LoRA, new label) -> evaluate."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY, fake_dataset_dict
from transformers import TrainingArguments

from spectrafm_hf import SpectraFMPipeline, SpectraFMProcessor, Spectrum
from spectrafm_hf.training.collator import SpectraCollator
from spectrafm_hf.training.metrics import label_metrics
from spectrafm_hf.training.run import DataArguments, ModelArguments, parse_args, run_training

LABELS = ["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"]
TINY_MODEL = dict(hidden_size=8, encoder_num_heads=[2, 2], encoder_ffn_dims=[16, 8], decoder_num_heads=[2, 2, 1],
                  decoder_ffn_dims=[16, 8, 8], head_dims=[16, 8], context_length=64)


@pytest.fixture(scope="module")
def dsd():
    return fake_dataset_dict()


def _collator(**kw):
    proc = SpectraFMProcessor.from_pretrained(TINY)
    return SpectraCollator(proc, LABELS, list(range(5)), **kw)


def test_collator_draws_a_new_subset_every_call_and_a_fixed_one_for_eval(dsd):
    rows = [dsd["train"][i] for i in range(4)]
    train = _collator(seed=0)
    a, b = train(rows), train(rows)
    assert a["flux"].shape == (4, 64) and a["observed_mask"].all()
    assert not torch.equal(a["wavelength"], b["wavelength"])  # fresh pixels per step, no dataset copy
    evalc = _collator(deterministic=True)
    c, d = evalc(rows), evalc(rows[::-1])
    assert torch.equal(c["wavelength"], d["wavelength"].flip(0))  # same star -> same pixels, whatever the order
    assert c["labels"].shape == (4, 5) and torch.isnan(c["labels"][0, 2])
    assert torch.equal(c["query_ids"][0], torch.arange(5))
    # label errors are normalised by the label scale
    proc = evalc.processor
    assert c["label_err"][1, 0].item() == pytest.approx(0.01 / proc.label_scales[0], rel=1e-5)


def test_collator_wavelength_window_and_input_labels(dsd):
    rows = [dsd["train"][i] for i in range(3)]
    wl = np.asarray(rows[0]["wavelength"])
    window = [float(wl[100]) - 0.01, float(wl[149]) + 0.01]
    batch = _collator(wavelength_window=window, input_label_names=["LOGG"], input_label_prob=1.0,
                      input_ids=[1])(rows)
    assert batch["observed_mask"].sum(1).tolist() == [50, 50, 50]
    kept = batch["wavelength"][batch["observed_mask"].bool()]
    assert kept.min() >= window[0] and kept.max() <= window[1]
    assert batch["input_mask"].all() and batch["input_ids"].tolist() == [[1]] * 3


def test_collator_input_label_noise_jitters_training_inputs_only(dsd):
    """input_label_noise={TEFF: sigma}: training rows get the given Teff with Gaussian noise of that sigma (in K), so
    a model learns how far to trust a measured Teff; evaluation rows get it exactly."""
    rows = [dsd["train"][i] for i in range(len(dsd["train"]))]
    given = dict(input_label_names=["TEFF"], input_label_prob=1.0, input_ids=[0])
    exact = _collator(deterministic=True, **given)(rows)["input_values"][:, 0].numpy()
    assert torch.equal(_collator(deterministic=True, input_label_noise={"TEFF": 300.0}, **given)(rows)["input_values"],
                       torch.as_tensor(exact)[:, None])
    scale = _collator().processor.label_scales[0]
    for sigma in (0.0, 300.0):
        train = _collator(input_label_noise={"TEFF": sigma}, **given)
        jitter = np.concatenate([train(rows)["input_values"][:, 0].numpy() - exact for _ in range(4)]) * scale  # K
        if sigma == 0:
            assert np.allclose(jitter, 0, atol=1e-2)
        else:  # a fresh draw every time a row is used
            assert jitter.size >= 90 and 240 < jitter.std() < 360 and abs(jitter.mean()) < 100
    for bad, message in (({"LOGG": 0.1}, "not one of the input labels"), ({"TEFF": -1.0}, "sigma >= 0")):
        with pytest.raises(ValueError, match=message):
            _collator(input_label_noise=bad, **given)


def test_collator_batches_can_be_pinned_for_a_gpu(dsd):
    """The Trainer's DataLoader pins every batch for a GPU (pin_memory=True by default), and pinning refuses a tensor
    whose elements share memory (an expand()ed one): a GPU training then died at its first step."""
    rows = [dsd["train"][i] for i in range(3)]
    for kw in ({}, {"input_label_names": ["LOGG"], "input_label_prob": 1.0, "input_ids": [1]}):
        for name, t in _collator(**kw)(rows).items():
            if isinstance(t, torch.Tensor):
                shared = [d for d, (size, stride) in enumerate(zip(t.shape, t.stride())) if size > 1 and stride == 0]
                assert not shared, f"{name}: dimensions {shared} share memory"


def test_label_metrics_are_right_on_a_known_case():
    true = np.array([0.0, 0.0, 0.0, 0.0, np.nan])
    pred = np.array([0.1, -0.1, 0.3, 0.1, 5.0])
    sigma = np.array([0.2, 0.2, 0.2, 0.05, 1.0])
    m = label_metrics(pred, true, sigma)
    assert m["n"] == 4
    assert m["bias"] == pytest.approx(0.1)
    assert m["rmse"] == pytest.approx(np.sqrt((0.01 + 0.01 + 0.09 + 0.01) / 4))
    assert m["mae"] == pytest.approx(0.15)
    assert m["coverage68"] == pytest.approx(0.5)  # |r| <= 0.199: 0.1, -0.1 yes; 0.3 and 0.1 (sigma 0.05) no
    assert m["coverage95"] == pytest.approx(0.75)


def test_compute_metrics_reports_each_labels_own_nll_for_checkpoint_choice():
    """FE_H_nll is that label's Gaussian NLL alone (normalised units), so a fine-tune with helper labels can choose
    its checkpoints on the target; it agrees with the model's loss restricted to that label."""
    from types import SimpleNamespace

    from spectrafm_hf.modeling_spectrafm import gaussian_nll
    from spectrafm_hf.training.metrics import make_compute_metrics

    proc = SpectraFMProcessor(label_names=["TEFF", "FE_H"])
    proc.fit_labels(np.array([[4000.0, -1.0], [5000.0, 0.0], [6000.0, 0.5]]), ["TEFF", "FE_H"])
    rng = np.random.default_rng(0)
    mean, log_variance = rng.normal(size=(50, 2)), rng.normal(-1.0, 0.3, size=(50, 2))
    targets = mean + rng.normal(size=(50, 2)) * np.exp(0.5 * log_variance)
    targets[:5, 1] = np.nan  # unknown [Fe/H]: left out, as the loss leaves it out
    targets[:, 0] += 3.0  # Teff badly predicted: must not change [Fe/H]'s number
    out = make_compute_metrics(proc, ["TEFF", "FE_H"])(SimpleNamespace(predictions=(mean, log_variance),
                                                                      label_ids=targets))
    expected = gaussian_nll(*(torch.as_tensor(a[:, 1:]) for a in (mean, log_variance, targets)))
    assert out["FE_H_nll"] == pytest.approx(float(expected), rel=1e-6)
    assert out["TEFF_nll"] > out["FE_H_nll"] + 3.0


def _args(tmp_path, name, **kw):
    base = dict(output_dir=str(tmp_path / name), max_steps=4, per_device_train_batch_size=8,
                per_device_eval_batch_size=8, learning_rate=1e-3, logging_steps=2, eval_strategy="steps",
                eval_steps=4, save_strategy="steps", save_steps=2, report_to=[], use_cpu=True, seed=0,
                disable_tqdm=True, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, dsd):
    tmp = tmp_path_factory.mktemp("pre")
    _, metrics = run_training(ModelArguments(config_overrides=TINY_MODEL), DataArguments(),
                              _args(tmp, "pretrain"), splits=(dsd["train"], dsd["validation"], dsd["test"]))
    return tmp / "pretrain", metrics


def test_pretraining_writes_a_loadable_resumable_documented_checkpoint(pretrained):
    out, metrics = pretrained
    for key in ("eval_loss", "eval_FE_H_rmse", "eval_TEFF_coverage68", "test_FE_H_robust_scatter"):
        assert np.isfinite(metrics[key]), key
    assert 100 < metrics["eval_TEFF_rmse"] < 5000  # physical units (Kelvin), not normalised ones
    ckpt = out / "checkpoint-4"
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "training_info.json",
                 "preprocessor_config.json", "config.json"):
        assert (ckpt / name).is_file(), name
    info = json.loads((ckpt / "training_info.json").read_text())
    assert info["seed"] == 0 and info["global_step"] == 4 and "torch" in info["versions"]
    assert info["config"]["model"]["config_overrides"]["hidden_size"] == 8
    pipe = SpectraFMPipeline.from_pretrained(out / "final", device="cpu")
    assert json.loads((out / "final" / "training_info.json").read_text())["metrics"]["eval_loss"] == pytest.approx(
        metrics["eval_loss"])
    assert pipe.processor.wavelength_coverage and pipe.label_names == LABELS


@pytest.mark.parametrize(
    "model_kw, expect_frozen",
    [
        (dict(), None),
        (dict(freeze=["decoder", "encoder_block_2"]), "decoder.0.dense_1.weight"),
        (dict(lora_r=2, lora_target_modules=["q_proj", "v_proj", "dense_1"]), "embedding_layer.embeddings"),
    ],
    ids=["full", "paper-stage3-freeze", "lora"],
)
def test_finetune_variants(pretrained, dsd, tmp_path, model_kw, expect_frozen):
    from safetensors.torch import load_file

    base, _ = pretrained
    margs = ModelArguments(model_name_or_path=str(base / "final"), target_labels=["FE_H"], **model_kw)
    dargs = DataArguments(train_selection={"FE_H": [-1.0, None]}, max_train_stars=10)
    _, metrics = run_training(margs, dargs, _args(tmp_path, "ft", max_steps=3, learning_rate=1e-2),
                              splits=(dsd["train"], dsd["validation"], dsd["test"]))
    assert np.isfinite(metrics["test_FE_H_rmse"])
    info = json.loads((tmp_path / "ft" / "final" / "training_info.json").read_text())
    # the labels the pretrained model knows are trained alongside as helpers (issue 14)
    assert info["data"]["train"] == 10 and info["data"]["labels"] == ["FE_H", "TEFF", "LOGG", "O_FE", "MG_FE"]
    assert info["data"]["helper_labels"] == ["TEFF", "LOGG", "O_FE", "MG_FE"]
    before = load_file(base / "final" / "model.safetensors")
    after = load_file(tmp_path / "ft" / "final" / "model.safetensors")
    assert set(before) == set(after)  # LoRA is merged back: a plain SpectraFM folder
    assert not torch.equal(before["encoder.0.dense_1.weight"], after["encoder.0.dense_1.weight"]) or \
        "lora" in str(model_kw)
    if expect_frozen:
        assert torch.equal(before[expect_frozen], after[expect_frozen])
    if "lora_r" in model_kw:  # merged into the FFN and the (packed on disk) attention projections alike
        assert not torch.equal(before["encoder.0.dense_1.weight"], after["encoder.0.dense_1.weight"])
        assert not torch.equal(before["encoder.0.attention.in_proj_weight"], after["encoder.0.attention.in_proj_weight"])
    pipe = SpectraFMPipeline.from_pretrained(tmp_path / "ft" / "final", device="cpu")
    assert np.isfinite(pipe.predict(__import__("spectrafm_hf.data", fromlist=["x"]).row_to_spectrum(
        dsd["test"][0]))["FE_H"]).all()


def test_finetune_with_a_new_label(pretrained, dsd, tmp_path):
    base, _ = pretrained
    train = dsd["train"].add_column("VMIC", np.linspace(0.8, 2.0, len(dsd["train"])).astype(np.float32))
    margs = ModelArguments(model_name_or_path=str(base / "final"), target_labels=["FE_H", "VMIC"])
    _, metrics = run_training(margs, DataArguments(), _args(tmp_path, "new", max_steps=2, eval_strategy="no"),
                              splits=(train, None, None))
    pipe = SpectraFMPipeline.from_pretrained(tmp_path / "new" / "final", device="cpu")
    assert pipe.label_names == LABELS + ["VMIC"]
    assert 0.8 < pipe.processor.label_centers[-1] < 2.0


def test_helper_labels_can_be_chosen_or_turned_off(pretrained, dsd, tmp_path):
    base, _ = pretrained
    splits = (dsd["train"], dsd["validation"], None)
    for name, kw, expected in (("off", dict(use_helper_labels=False), ["FE_H"]),
                               ("some", dict(helper_labels=["LOGG"]), ["FE_H", "LOGG"])):
        margs = ModelArguments(model_name_or_path=str(base / "final"), target_labels=["FE_H"], **kw)
        run_training(margs, DataArguments(), _args(tmp_path, name, max_steps=2, eval_strategy="no"), splits=splits)
        info = json.loads((tmp_path / name / "final" / "training_info.json").read_text())
        assert info["data"]["labels"] == expected
    margs = ModelArguments(model_name_or_path=str(base / "final"), target_labels=["FE_H"], helper_labels=["VMIC"])
    with pytest.raises(ValueError, match="VMIC"):
        run_training(margs, DataArguments(), _args(tmp_path, "bad", max_steps=2, eval_strategy="no"), splits=splits)


def test_collapse_guard_stops_only_on_a_constant_prediction_after_warmup():
    from transformers import TrainerControl, TrainerState

    from spectrafm_hf.training.guards import CollapseGuardCallback

    args = TrainingArguments(output_dir="unused", warmup_steps=10, report_to=[], use_cpu=True)
    guard = CollapseGuardCallback(["TEFF", "FE_H"], min_spread=0.05, patience=2)
    state, control = TrainerState(global_step=10, max_steps=100), TrainerControl()
    metrics = {"eval_TEFF_spread": 0.9, "eval_FE_H_spread": 0.001}
    guard.on_evaluate(args, state, control, metrics=metrics)
    assert not control.should_training_stop and not guard.collapsed  # still warming up
    for step, spread in ((20, 0.001), (30, 0.3), (40, 0.001)):  # a low spread that recovers is not a collapse
        state.global_step = step
        guard.on_evaluate(args, state, control, metrics={**metrics, "eval_FE_H_spread": spread})
        assert not control.should_training_stop and not guard.collapsed
    state.global_step = 50
    guard.on_evaluate(args, state, control, metrics=metrics)
    assert control.should_training_stop and guard.collapsed == {"FE_H": {"step": 50, "spread": 0.001}}
    with pytest.raises(ValueError, match="min_spread"):
        CollapseGuardCallback(["FE_H"], min_spread=1.5)


def test_run_training_stops_and_reports_when_the_guard_fires(dsd, tmp_path):
    # a threshold no model meets stands in for a collapsed run: training ends at the third evaluation
    margs = ModelArguments(config_overrides=TINY_MODEL, target_labels=["FE_H"], collapse_min_spread=0.999)
    trainer, metrics = run_training(margs, DataArguments(), _args(tmp_path, "guard", max_steps=40, eval_steps=4,
                                                                  save_steps=4),
                                    splits=(dsd["train"], dsd["validation"], None))
    assert trainer.state.global_step == 12
    assert metrics["collapsed"]["FE_H"]["step"] == 12 and metrics["collapsed"]["FE_H"]["spread"] < 0.999
    saved = json.loads((tmp_path / "guard" / "final_metrics.json").read_text())
    assert saved["collapsed"]["FE_H"]["step"] == 12


def test_pipeline_fit_with_helper_labels_does_not_collapse_where_fe_h_alone_does(dsd):
    import pandas as pd

    from spectrafm_hf.data import row_to_spectrum

    torch.set_num_threads(1)
    rows = fake_dataset_dict(n_train=48, n_eval=2)["train"]
    spectra = [row_to_spectrum(r) for r in rows]
    table = pd.DataFrame({n: np.asarray(rows[n], float) for n in ("TEFF", "LOGG", "FE_H")})
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    kw = dict(label_names=["FE_H"], steps=150, learning_rate=2e-3, seed=0, rehearsal=None)  # helper labels alone
    spread, rmse = {}, {}
    for helpers in (None, "auto"):
        pred = pipe.fit(spectra, table, helper_labels=helpers, **kw).predict(spectra, labels="FE_H")["FE_H"]
        spread[helpers] = pred.std() / table.FE_H.std()
        rmse[helpers] = np.sqrt(np.mean((pred - table.FE_H) ** 2))
    # measured: [Fe/H] alone collapses to a constant (spread 0.016); with TEFF/LOGG from the table and O_FE/MG_FE
    # from the model's own predictions as helpers it learns (spread 0.59, RMSE halved)
    assert spread[None] < 0.1 and spread["auto"] > 0.3, spread
    assert rmse["auto"] < 0.7 * rmse[None], rmse
    # helpers from the model's own predictions only (array labels): what the model knew is kept better
    before = pipe.predict(spectra, labels="TEFF")["TEFF"]
    drift = {h: np.abs(pipe.fit(spectra, table[["FE_H"]].to_numpy(), helper_labels=h, **kw)
                       .predict(spectra, labels="TEFF")["TEFF"] - before).mean() for h in (None, "auto")}
    assert drift["auto"] < drift[None], drift
    with pytest.raises(KeyError, match="VMIC"):
        pipe.fit(spectra, table, helper_labels=["VMIC"], **{**kw, "steps": 1})


def test_yaml_and_flags_parse(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: out\nmax_steps: 7\ntarget_labels: [FE_H]\nfreeze: [decoder]\n"
                   "pixel_range: [4107, 4619]\ndataset_kwargs: {n_train: 10}\n")
    m, d, t = parse_args([str(cfg), "--max_steps", "9"])
    assert t.max_steps == 9 and m.target_labels == ["FE_H"] and m.freeze == ["decoder"]
    assert d.pixel_range == [4107, 4619] and d.dataset_kwargs == {"n_train": 10}
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: out\nnot_a_field: 1\n")
    with pytest.raises(SystemExit, match="not_a_field"):
        parse_args([str(bad)])


@pytest.mark.parametrize("name", ["pretrain_cpu", "pretrain_paper", "finetune_stage2_cpu", "finetune_stage2_paper",
                                  "finetune_stage3_cpu", "finetune_stage3_paper"])
def test_shipped_presets_parse(name):
    from conftest import REPO

    extra = ["--bf16", "false"] if "paper" in name else []  # bf16 needs a GPU; this machine has none
    m, d, t = parse_args([str(REPO / "scripts" / "configs" / f"{name}.yaml"), *extra])
    assert t.output_dir.startswith("runs/") and d.dataset_config
    if "stage3" in name:
        assert d.pixel_range == [4107, 4619] and m.freeze == ["decoder", "encoder_block_2"]
        assert d.max_train_stars == 100 and d.train_selection == {"FE_H": [-1.0, None]}


def test_l2sp_keeps_fine_tuned_weights_near_the_start(dsd, tmp_path):
    """L2-SP (issue 14): the same fine-tune with a strong penalty moves the weights far less, in the Trainer path
    and in pipe.fit; a negative alpha is refused."""
    from safetensors.torch import load_file

    splits = (dsd["train"], dsd["validation"], None)
    start = load_file(str(TINY / "model.safetensors"))
    moved = {}
    for alpha in (0.0, 100.0):
        margs = ModelArguments(model_name_or_path=str(TINY), l2sp_alpha=alpha, calibrate_uncertainties=False)
        run_training(margs, DataArguments(), _args(tmp_path, f"a{alpha}", max_steps=6, learning_rate=1e-2,
                                                   eval_strategy="no", save_strategy="no"), splits=splits)
        end = load_file(str(tmp_path / f"a{alpha}" / "final" / "model.safetensors"))
        moved[alpha] = sum(float(((end[k] - start[k]) ** 2).sum()) for k in start if k in end)
    assert moved[100.0] < 0.25 * moved[0.0]

    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    from spectrafm_hf.data import row_to_spectrum

    spectra = [row_to_spectrum(r) for r in dsd["train"]]
    labels = {"FE_H": np.asarray(dsd["train"]["FE_H"])}
    w0 = torch.cat([p.detach().flatten() for p in pipe.model.parameters()])
    dist = {}
    for alpha in (0.0, 100.0):
        new = pipe.fit(spectra, labels, steps=6, learning_rate=1e-2, l2sp_alpha=alpha, helper_labels=None)
        dist[alpha] = float(((torch.cat([p.detach().flatten() for p in new.model.parameters()]) - w0) ** 2).sum())
    assert dist[100.0] < 0.25 * dist[0.0]
    with pytest.raises(ValueError, match="l2sp_alpha"):
        pipe.fit(spectra, labels, steps=1, l2sp_alpha=-1.0)


def test_rehearsal_mixes_an_earlier_set_into_the_training_rows(dsd, tmp_path):
    """Rehearsal (issue 14): rows of another set with their labels are appended so that about `fraction` of the
    training rows are rehearsal; a label the rehearsal set lacks is NaN there; bad options are refused."""
    from spectrafm_hf.training.run import add_rehearsal

    train = dsd["train"].select(range(8))
    mixed = add_rehearsal(train, {"dataset_config": "synthetic_apogee", "fraction": 0.75, "seed": 3,
                                  "dataset_kwargs": {"n_train": 40, "n_validation": 4, "n_test": 0, "seed": 9,
                                                     "snr": 200}}, cache_dir=str(tmp_path / "cache"))
    assert len(mixed) == 8 + 24 and mixed.features == train.features
    assert mixed["object_id"][:8] == train["object_id"]
    fe_h = np.asarray(mixed["FE_H"], np.float64)
    assert np.isfinite(fe_h).all() and len(set(mixed["object_id"][8:])) == 24
    # many rehearsal spectra next to a few stars: the few are repeated to keep the fraction
    more = add_rehearsal(train, {"dataset_config": "synthetic_apogee", "fraction": 0.5, "rows": 32, "seed": 3,
                                 "dataset_kwargs": {"n_train": 40, "n_validation": 4, "n_test": 0, "seed": 9,
                                                    "snr": 200}}, cache_dir=str(tmp_path / "cache"))
    assert len(more) == 4 * 8 + 32 and more["object_id"][8:16] == train["object_id"]
    # a set saved with save_to_disk (the few-shot scripts' own synthetic spectra) works the same way
    dsd["validation"].save_to_disk(str(tmp_path / "saved"))
    saved = add_rehearsal(train, {"data_dir": str(tmp_path / "saved"), "fraction": 0.5, "rows": 8, "seed": 1})
    assert len(saved) == 16 and set(saved["object_id"][8:]) <= set(dsd["validation"]["object_id"])
    for bad in ({"fraction": 0.5}, {"dataset_config": "synthetic_apogee", "fraction": 1.0},
                {"dataset_config": "synthetic_apogee", "typo": 1},
                {"dataset_config": "synthetic_apogee", "data_dir": str(tmp_path / "saved")},
                {"data_dir": str(tmp_path / "nowhere")}):
        with pytest.raises(ValueError, match="rehearsal"):
            add_rehearsal(train, bad)
    # through run_training: the run trains on both and says so in training_info.json
    margs = ModelArguments(model_name_or_path=str(TINY), target_labels=["FE_H"], calibrate_uncertainties=False)
    dargs = DataArguments(rehearsal={"dataset_config": "synthetic_apogee", "fraction": 0.5, "dataset_kwargs": {
        "n_train": 40, "n_validation": 4, "n_test": 0, "seed": 9, "snr": 200}}, dataset_cache_dir=str(tmp_path / "c"))
    run_training(margs, dargs, _args(tmp_path, "reh", max_steps=2, eval_strategy="no", save_strategy="no"),
                 splits=(train, dsd["validation"], None))
    info = json.loads((tmp_path / "reh" / "final" / "training_info.json").read_text())
    assert info["data"]["train"] == 16 and info["config"]["data"]["rehearsal"]["fraction"] == 0.5


def test_pipe_fit_rehearsal_trains_on_the_earlier_labels_too(rng):
    """pipe.fit(rehearsal=...): the rehearsal rows' labels enter every batch: fitted on stars all at [Fe/H] +0.4 with
    rehearsal stars at -1.6, the model predicts the rehearsal stars lower than the same fit without rehearsal."""
    from conftest import fake_apogee_spectrum

    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    new = [fake_apogee_spectrum(rng, n=300) for _ in range(8)]
    old = [fake_apogee_spectrum(rng, n=300, start=2000) for _ in range(8)]
    kw = dict(steps=30, batch_size=8, learning_rate=1e-2, helper_labels=None, label_names=["FE_H"])
    plain = pipe.fit(new, {"FE_H": np.full(8, 0.4)}, rehearsal=None, **kw)
    mixed = pipe.fit(new, {"FE_H": np.full(8, 0.4)}, rehearsal=(old, {"FE_H": np.full(8, -1.6), "X": np.zeros(8)}),
                     **kw)
    assert mixed.predict(old, labels=["FE_H"])["FE_H"].mean() < plain.predict(old, labels=["FE_H"])["FE_H"].mean() - 0.3
    with pytest.raises(ValueError, match="rehearsal_fraction"):
        pipe.fit(new, {"FE_H": np.zeros(8)}, rehearsal=(old, {"FE_H": np.zeros(8)}), rehearsal_fraction=1.0, **kw)
    with pytest.raises(ValueError, match="8 spectra and 3 label rows"):
        pipe.fit(new, {"FE_H": np.zeros(8)}, rehearsal=(old, {"FE_H": np.zeros(3)}), **kw)


def test_pipe_fit_synthetic_rehearsal_draws_the_emulator_in_the_fit_window(rng):
    """pipe.fit(rehearsal="synthetic"): emulator spectra of the model's instrument with their five labels, cut to
    the wavelength span of the fitted spectra, enter the batches; instruments the package cannot emulate, unknown
    words and bad row counts are refused with a message naming them."""
    from conftest import fake_apogee_spectrum

    from spectrafm_hf import synth

    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    new = [fake_apogee_spectrum(rng, n=300, start=1000) for _ in range(8)]
    spectra, table = pipe._synthetic_rehearsal("synthetic", new, 12, 0)
    assert len(spectra) == 12 and list(table.columns) == list(synth.LABEL_NAMES)
    lo, hi = new[0].wavelength[0], new[0].wavelength[-1]
    assert all(lo <= s.wavelength.min() and s.wavelength.max() <= hi and len(s) == 300 for s in spectra)
    assert table["FE_H"].std() > 0.1 and np.isfinite(table.to_numpy()).all()
    kw = dict(steps=20, batch_size=8, learning_rate=1e-2, helper_labels=None, label_names=["FE_H"])
    plain = pipe.fit(new, {"FE_H": np.full(8, 0.4)}, rehearsal=None, **kw)
    mixed = pipe.fit(new, {"FE_H": np.full(8, 0.4)}, rehearsal="synthetic", rehearsal_rows=12, **kw)
    # the default ("auto") is the same synthetic rehearsal for a model of an emulated instrument
    assert _same_weights(pipe.fit(new, {"FE_H": np.full(8, 0.4)}, rehearsal_rows=12, **kw), mixed)
    # the rehearsal stars' spread of [Fe/H] reached the model: it no longer predicts +0.4 for everything
    assert abs(mixed.predict(spectra, labels=["FE_H"])["FE_H"].mean() - table["FE_H"].mean()) < abs(
        plain.predict(spectra, labels=["FE_H"])["FE_H"].mean() - table["FE_H"].mean())
    with pytest.raises(ValueError, match="rehearsal_rows"):
        pipe.fit(new, {"FE_H": np.zeros(8)}, rehearsal="synthetic", rehearsal_rows=0, **kw)
    offgrid = [Spectrum(wavelength=np.linspace(5000, 6000, 300), flux=np.ones(300)) for _ in range(8)]
    with pytest.raises(ValueError, match="do not overlap"):
        pipe._synthetic_rehearsal("synthetic", offgrid, 4, 0)
    with pytest.raises(ValueError, match="'auto', 'synthetic', None or a"):
        pipe.fit(new, {"FE_H": np.zeros(8)}, rehearsal="pretraining", **kw)
    assert pipe._synthetic_rehearsal("auto", offgrid, 4, 0) is None  # the default then fits without rehearsal
    pipe.processor.continuum = None
    with pytest.raises(ValueError, match="instrument the package emulates"):
        pipe.fit(new, {"FE_H": np.zeros(8)}, rehearsal="synthetic", **kw)
    assert pipe._synthetic_rehearsal("auto", new, 4, 0) is None
    assert _same_weights(pipe.fit(new, {"FE_H": np.full(8, 0.4)}, **kw),
                         pipe.fit(new, {"FE_H": np.full(8, 0.4)}, rehearsal=None, **kw))


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_a_run_another_process_is_training_is_waited_for_not_trained_twice(tmp_path):
    """train_or_reuse under a held run lock (a second script side by side wanting the same shared pretraining)
    waits, then reuses the other process's final/ instead of training into the same folder."""
    import fcntl
    import threading
    import time

    from spectrafm_hf.training.run import train_or_reuse

    run_dir = tmp_path / "pretrain"
    run_dir.mkdir()
    messages, result = [], {}
    with open(run_dir / ".lock", "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # the other process, mid-training
        waiter = threading.Thread(target=lambda: result.update(
            final=train_or_reuse({"output_dir": str(run_dir), "max_steps": 1}, log=messages.append)))
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive() and any("waiting" in m for m in messages), messages
        (run_dir / "final").mkdir()
        (run_dir / "final" / "config.json").write_text("{}")  # the other process finishes
        fcntl.flock(other, fcntl.LOCK_UN)
    waiter.join(30)
    assert not waiter.is_alive() and result["final"] == run_dir / "final"
    assert "trained by another process" in messages[-1] and not any("training (" in m for m in messages)


def test_label_loss_weights_scale_each_labels_training_loss(dsd, tmp_path):
    """label_loss_weights: a label weighted 0 gives its query no gradient (its embedding row stays where it
    started) while an unweighted run moves it; gaussian_nll's weights scale each term; bad weights are refused."""
    from safetensors.torch import load_file

    from spectrafm_hf.modeling_spectrafm import gaussian_nll
    from spectrafm_hf.training.run import loss_weights_for

    start = load_file(str(TINY / "model.safetensors"))["embedding_layer.embeddings"]
    rows = {"TEFF": 1, "FE_H": 5}  # row 0 is the flux token, then the model's labels in order
    moved = {}
    for name, weights in (("plain", {}), ("teff0", {"TEFF": 0.0})):
        margs = ModelArguments(model_name_or_path=str(TINY), target_labels=["TEFF", "FE_H"], use_helper_labels=False,
                               label_loss_weights=weights, calibrate_uncertainties=False)
        run_training(margs, DataArguments(), _args(tmp_path, name, max_steps=4, learning_rate=1e-2,
                                                   eval_strategy="no", save_strategy="no"),
                     splits=(dsd["train"], dsd["validation"], None))
        end = load_file(str(tmp_path / name / "final" / "model.safetensors"))["embedding_layer.embeddings"]
        moved[name] = {n: float((end[i] - start[i]).abs().max()) for n, i in rows.items()}
    assert moved["teff0"]["TEFF"] == 0.0 and moved["teff0"]["FE_H"] > 0
    assert moved["plain"]["TEFF"] > 0

    mean, logvar, target = torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([[1.0, 2.0], [0.0, float("nan")],
                                                                               [1.0, 1.0]])
    terms = 0.5 * torch.nan_to_num(target, nan=0.0) ** 2
    assert torch.isclose(gaussian_nll(mean, logvar, target, weights=torch.tensor([1.0, 3.0])),
                         (terms[:, 0].sum() + 3 * terms[:, 1].sum()) / 5)
    assert loss_weights_for({}, ["TEFF"]) is None and loss_weights_for({"FE_H": 2}, ["TEFF", "FE_H"]) == [1.0, 2.0]
    for bad, words in (({"MG_FE": 2.0}, "not trained"), ({"TEFF": -1.0}, ">= 0"), ({"TEFF": 0.0}, "not all 0")):
        with pytest.raises(ValueError, match=words):
            loss_weights_for(bad, ["TEFF"])


def test_nll_beta_weights_each_term_by_its_variance_without_gradient():
    """nll_beta: the training loss weights each label's NLL term by var**beta (var = exp(log_variance) +
    label_err**2), held fixed, so beta 1 gives the mean the gradient of a squared error, (mean - target) / 1, at
    any predicted variance; 0 keeps the plain NLL."""
    from types import SimpleNamespace

    from spectrafm_hf.modeling_spectrafm import gaussian_nll
    from spectrafm_hf.training.run import SpectraFMTrainer

    target = torch.tensor([[1.0, 2.0], [0.0, float("nan")]])
    err = torch.tensor([[0.0, 0.5], [0.0, 0.0]])
    grads = {}
    for beta in (0.0, 1.0):
        mean = torch.zeros(2, 2, requires_grad=True)
        log_variance = torch.tensor([[2.0, -1.0], [0.5, 0.0]], requires_grad=True)
        trainer = SimpleNamespace(label_loss_weights=torch.tensor([1.0, 3.0]), nll_beta=beta)
        outputs = SimpleNamespace(mean=mean, log_variance=log_variance)
        weights = SpectraFMTrainer.training_loss_weights(trainer, outputs, {"label_err": err})
        gaussian_nll(mean, log_variance, target, err, weights=weights).backward()
        grads[beta] = mean.grad
    var = torch.tensor([[2.0, -1.0], [0.5, 0.0]]).exp() + err**2
    residual = torch.nan_to_num(-target, nan=0.0) * torch.tensor([1.0, 3.0]) / 3  # three finite targets
    assert torch.allclose(grads[1.0], residual)
    assert torch.allclose(grads[0.0], residual / var)


def test_student_t_nll_is_the_t_likelihood_and_pulls_less_on_outliers():
    """student_t_dof: the training loss is the Student-t NLL (up to a constant) with scale^2 = exp(log_variance) +
    label_err^2; a residual of many scales pulls the mean far less than under the Gaussian NLL, a small one 6/5 as
    much."""
    from spectrafm_hf.modeling_spectrafm import gaussian_nll
    from spectrafm_hf.training.run import student_t_nll

    target = torch.tensor([0.3, -1.0, 2.5, 8.0])
    log_variance, err = torch.tensor([0.0, -1.0, 0.5, 0.2]), torch.tensor([0.0, 0.3, 0.0, 0.1])
    scale = (log_variance.exp() + err**2).sqrt()
    ours = torch.stack([student_t_nll(torch.zeros(1), log_variance[i:i + 1], target[i:i + 1], err[i:i + 1], dof=5.0)
                        for i in range(4)])
    exact = -torch.distributions.StudentT(5.0, torch.zeros(4), scale).log_prob(target)
    assert torch.allclose(ours - exact, (ours - exact)[0].expand(4), atol=1e-5)  # the same up to one constant
    for residual, ratio in ((0.1, (1.19, 1.2)), (10.0, (0.0, 0.1))):  # (dof + 1) / dof near the mean
        pulls = []
        for loss in (student_t_nll, gaussian_nll):
            mean = torch.zeros(1, requires_grad=True)
            loss(mean, torch.zeros(1), torch.tensor([residual])).backward()
            pulls.append(float(mean.grad.abs()))
        assert ratio[0] <= pulls[0] / pulls[1] <= ratio[1], (residual, pulls)


def test_student_t_also_scores_evaluations(dsd):
    """Under student_t_dof the evaluation loss (checkpoint choice, early stopping) is the Student-t NLL the model
    trains on, not the model's own Gaussian loss: a t-trained model's best checkpoint is the best t fit."""
    from types import SimpleNamespace

    from spectrafm_hf.modeling_spectrafm import SpectraFMModel
    from spectrafm_hf.training.run import SpectraFMTrainer, student_t_nll

    model = SpectraFMModel.from_pretrained(TINY).eval()
    batch = _collator(deterministic=True)([dsd["validation"][i] for i in range(6)])
    trainer = SimpleNamespace(label_loss_weights=None, nll_beta=0.0, student_t_dof=5.0, l2sp_start={})
    with torch.no_grad():
        out = model(**batch)
        loss = SpectraFMTrainer.compute_loss(trainer, model, batch)
    assert torch.isclose(loss, student_t_nll(out.mean, out.log_variance, batch["labels"], batch.get("label_err"),
                                             dof=5.0), atol=1e-5)
    assert not torch.isclose(loss, out.loss)


@pytest.mark.parametrize("option, good, bad, words", [("nll_beta", 0.5, 2.0, "nll_beta must lie in"),
                                                       ("student_t_dof", 5.0, 2.0, "student_t_dof must be above 2")])
def test_training_loss_options_reach_the_run_and_bad_values_are_refused(dsd, tmp_path, option, good, bad, words):
    """A run with nll_beta / student_t_dof ends at other weights than the same plain run (which repeats exactly), so
    the option reaches the trainer's loss; a value outside its range is refused."""
    from safetensors.torch import load_file

    weights = {}
    for name, kw in (("plain", {}), ("plain_again", {}), (option, {option: good})):
        run_training(ModelArguments(model_name_or_path=str(TINY), target_labels=["TEFF", "FE_H"],
                                    calibrate_uncertainties=False, **kw),
                     DataArguments(), _args(tmp_path, name, max_steps=3, eval_strategy="no", save_strategy="no"),
                     splits=(dsd["train"], dsd["validation"], None))
        weights[name] = load_file(str(tmp_path / name / "final" / "model.safetensors"))
    assert all(torch.equal(weights["plain"][k], weights["plain_again"][k]) for k in weights["plain"])
    assert not all(torch.equal(weights["plain"][k], weights[option][k]) for k in weights["plain"])
    with pytest.raises(ValueError, match=words):
        run_training(ModelArguments(model_name_or_path=str(TINY), **{option: bad}), DataArguments(),
                     _args(tmp_path, "bad", max_steps=1), splits=(dsd["train"], dsd["validation"], None))


def test_collator_masked_flux_holds_out_one_contiguous_run(dsd):
    """masked_flux_fraction: training rows lose one contiguous run (in wavelength) of their pixel subset from the
    input and get it back as flux queries with their normalised flux as targets; evaluation rows are never masked."""
    rows = [dsd["train"][i] for i in range(4)]
    batch = _collator(seed=0, masked_flux_fraction=0.25)(rows)
    assert batch["observed_mask"].sum(1).tolist() == [48] * 4  # 64 pixels, 16 held out
    for i in range(4):
        held = batch["flux_query_wavelength"][i]
        inputs = batch["wavelength"][i][batch["observed_mask"][i].bool()]
        assert torch.isfinite(batch["flux_targets"][i]).sum() == 16
        assert not torch.isin(held, inputs).any()
        # contiguous: no input pixel lies inside the held-out run
        assert not ((inputs > held.min()) & (inputs < held.max())).any()
    # the targets are the normalised flux the input would have had: the processor's values at those wavelengths
    proc = SpectraFMProcessor.from_pretrained(TINY)
    wl = np.asarray(rows[0]["wavelength"], np.float64)
    x, good = proc.normalize_arrays(wl, np.asarray(rows[0]["flux"], np.float64), np.isfinite(rows[0]["flux"]))
    idx = np.searchsorted(wl.astype(np.float32), batch["flux_query_wavelength"][0].numpy())
    np.testing.assert_allclose(batch["flux_targets"][0].numpy(), x[idx], rtol=1e-6)
    assert "flux_query_wavelength" not in _collator(deterministic=True, masked_flux_fraction=0.25)(rows)
    with pytest.raises(ValueError, match="masked_flux_fraction"):
        _collator(masked_flux_fraction=1.0)


def test_masked_flux_pretraining_learns_the_held_out_flux(dsd, tmp_path):
    """Trained with masked_flux_fraction, a fresh model predicts held-out flux far better than the same model
    trained on labels alone (whose flux queries were never trained); training_info records the option."""
    losses = {}
    for name, fraction in (("labels_only", 0.0), ("masked", 0.3)):
        run_training(ModelArguments(config_overrides=TINY_MODEL, calibrate_uncertainties=False),
                     DataArguments(masked_flux_fraction=fraction),
                     _args(tmp_path, name, max_steps=60, learning_rate=5e-3, eval_strategy="no", save_strategy="no"),
                     splits=(dsd["train"], dsd["validation"], None))
        final = tmp_path / name / "final"
        info = json.loads((final / "training_info.json").read_text())
        assert info["config"]["data"]["masked_flux_fraction"] == fraction
        pipe = SpectraFMPipeline.from_pretrained(final, device="cpu")
        collator = SpectraCollator(pipe.processor, LABELS, list(range(5)), seed=1, masked_flux_fraction=0.3)
        batch = collator([dsd["validation"][i] for i in range(len(dsd["validation"]))])
        with torch.no_grad():
            losses[name] = float(pipe.model.eval()(**batch).masked_flux_loss)
    assert losses["masked"] < losses["labels_only"] - 0.5, losses


def test_grow_token_table_adds_labels_and_inputs_and_keeps_what_was_learnt():
    """A trained model given a new label or a new input (xp_multimodal continues xp_full's model with the
    magnitudes): new token rows, every trained weight kept, and the same answers where the new rows are not read."""
    from spectrafm_hf import SpectraFMConfig, SpectraFMModel
    from spectrafm_hf.training.run import grow_token_table

    torch.manual_seed(0)
    cfg = SpectraFMConfig(label_names=["TEFF", "FE_H"], scalar_input_names=["PHOT_G"], hidden_size=8,
                          encoder_num_heads=[2, 2], encoder_ffn_dims=[8, 8], decoder_num_heads=[2, 2, 1],
                          decoder_ffn_dims=[8, 8, 8], head_dims=[8], context_length=16)
    model = SpectraFMModel(cfg).eval()
    grown = grow_token_table(model, label_names=["TEFF", "LOGG"], scalar_input_names=["PHOT_G", "PHOT_K"]).eval()
    assert grow_token_table(model, ["FE_H"], ["PHOT_G"]) is model  # nothing new: the model itself
    assert grown.config.label_names == ["TEFF", "FE_H", "LOGG"]
    assert grown.config.scalar_input_names == ["PHOT_G", "PHOT_K"]
    for name in ("embeddings", "bias"):
        old, new = getattr(model.embedding_layer, name), getattr(grown.embedding_layer, name)
        assert new.shape == (6, 8)  # flux, TEFF, FE_H, LOGG (new), PHOT_G (moved down), PHOT_K (new)
        assert torch.equal(new[:3], old[:3]) and torch.equal(new[4], old[3])
        assert not torch.equal(new[3], torch.zeros(8))  # initialised, not left empty
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith("embedding_layer.")}
    assert all(torch.equal(v, grown.state_dict()[k]) for k, v in rest.items())
    wavelength = torch.linspace(15200.0, 16900.0, 16).expand(3, -1)
    flux = torch.randn(3, 16)
    g = torch.randn(3, 1)
    with torch.no_grad():
        before = model(flux, wavelength, query_ids=torch.tensor([[0, 1]] * 3), input_values=g,
                       input_ids=torch.full((3, 1), 2)).mean
        after = grown(flux, wavelength, query_ids=torch.tensor([[0, 1]] * 3), input_values=g,
                      input_ids=torch.full((3, 1), 3)).mean  # PHOT_G's index moved past LOGG
        with_k = grown(flux, wavelength, query_ids=torch.tensor([[0, 1]] * 3),
                       input_values=torch.cat([g, torch.randn(3, 1)], 1), input_ids=torch.tensor([[3, 4]] * 3)).mean
    assert torch.allclose(before, after, atol=1e-6)
    assert not torch.allclose(after, with_k)  # the new input is read


def test_extrapolation_split_keeps_the_upper_fitting_stars_and_scores_the_validation_stars_below_them():
    from spectrafm_hf.training.run import extrapolation_split

    fit = np.linspace(-1.0, 0.5, 100)
    val = np.linspace(-0.95, 0.45, 50)
    cut, kept, scored = extrapolation_split(fit, val, 0.3)
    assert cut == pytest.approx(np.quantile(fit, 0.3))
    assert kept.sum() == 70 and (fit[kept] >= cut).all() and (fit[~kept] < cut).all()
    assert (val[scored] < cut).all() and (val[~scored] >= cut).all() and 10 < scored.sum() < 20
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        extrapolation_split(fit, val, 1.0)
    with pytest.raises(ValueError, match="finite values"):
        extrapolation_split(np.append(fit, np.nan), val)
    with pytest.raises(ValueError, match="2 validation rows below it; at least 5"):
        extrapolation_split(fit, np.array([-0.9, -0.8, 0.1, 0.2, 0.3, 0.4]), 0.3)
