"""ema_decay: the Trainer evaluates, chooses checkpoints with, and saves the running average of the weights, and a
resumed run continues the same average."""

import json

import pytest
import torch
from conftest import fake_dataset_dict
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

from spectrafm_hf import SpectraFMModel
from spectrafm_hf.training.run import DataArguments, ModelArguments, run_training
from spectrafm_hf.training.weight_average import WEIGHT_AVERAGE_FILE, WeightAverage

TINY_MODEL = dict(hidden_size=8, encoder_num_heads=[2, 2], encoder_ffn_dims=[16, 8], decoder_num_heads=[2, 2, 1],
                  decoder_ffn_dims=[16, 8, 8], head_dims=[16, 8], context_length=64)


@pytest.fixture(scope="module")
def dsd():
    return fake_dataset_dict()


def _args(out, **kw):
    base = dict(output_dir=str(out), max_steps=6, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                learning_rate=3e-3, logging_steps=2, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                save_steps=2, report_to=[], use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
                load_best_model_at_end=True, metric_for_best_model="eval_loss", save_total_limit=1)
    base.update(kw)
    return TrainingArguments(**base)


def _train(dsd, out, callbacks=(), **kw):
    margs = ModelArguments(config_overrides=TINY_MODEL, ema_decay=0.9, calibrate_uncertainties=False,
                           collapse_min_spread=0.0)
    return run_training(margs, DataArguments(), _args(out, **kw), callbacks=callbacks,
                        splits=(dsd["train"], dsd["validation"], None))


def test_the_average_follows_its_formula_and_is_swapped_in_and_out():
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    avg = WeightAverage(layer, decay=0.5)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    avg.update()  # warm-up decay min(0.5, 1/10) = 0.1: 0.1 * 0 + 0.9 * 1
    assert torch.allclose(avg.average["weight"], torch.full((1, 2), 0.9))
    with torch.no_grad():
        layer.weight.fill_(2.0)
    avg.update()  # min(0.5, 2/11)
    d = 2 / 11
    assert torch.allclose(avg.average["weight"], torch.full((1, 2), d * 0.9 + (1 - d) * 2.0))
    with avg.applied():
        assert torch.equal(layer.weight, avg.average["weight"])
    assert torch.equal(layer.weight, torch.full((1, 2), 2.0))  # the raw weights come back
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="ema_decay"):
            WeightAverage(layer, bad)


def test_training_evaluates_chooses_and_saves_the_average(dsd, tmp_path):
    _, metrics = _train(dsd, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    best = tmp_path / "run" / f"checkpoint-{state['best_global_step']}"
    average = load_file(str(best / WEIGHT_AVERAGE_FILE))
    raw = dict(SpectraFMModel.from_pretrained(best).named_parameters())
    final = dict(SpectraFMModel.from_pretrained(tmp_path / "run" / "final").named_parameters())
    assert set(average) == set(final)
    for name, value in average.items():  # the final model is the best checkpoint's average, not its raw weights
        torch.testing.assert_close(final[name].detach(), value, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(raw[n], average[n]) for n in average)
    # the evaluation that chose the checkpoint scored the average: re-scoring the final model gives its loss
    assert metrics["eval_loss"] == pytest.approx(state["best_metric"], rel=1e-5)


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_a_resumed_run_continues_the_same_average(dsd, tmp_path):
    kw = dict(eval_strategy="no", load_best_model_at_end=False, save_total_limit=None)
    _train(dsd, tmp_path / "straight", **kw)
    _train(dsd, tmp_path / "killed", callbacks=[_StopAt(4)], **kw)  # stops after checkpoint-4
    for step in (6,):
        assert not (tmp_path / "killed" / f"checkpoint-{step}").exists()
    ckpt = tmp_path / "killed" / "checkpoint-4"
    _train(dsd, tmp_path / "killed", resume_from_checkpoint=str(ckpt), **kw)
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    (ckpt / WEIGHT_AVERAGE_FILE).unlink()  # a checkpoint saved without the average cannot continue one
    with pytest.raises(ValueError, match=WEIGHT_AVERAGE_FILE):
        _train(dsd, tmp_path / "killed", resume_from_checkpoint=str(ckpt), **kw)


def test_pipe_fit_returns_the_average(dsd):
    """pipe.fit(ema_decay=...): after one step the average is 0.1 x start + 0.9 x the stepped weights (the warm-up
    decay of the first update), the same step as the plain fit."""
    from conftest import TINY

    from spectrafm_hf import SpectraFMPipeline
    from spectrafm_hf.data import row_to_spectrum

    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    spectra = [row_to_spectrum(r) for r in dsd["train"]]
    labels = {"FE_H": dsd["train"]["FE_H"]}
    kw = dict(steps=1, learning_rate=1e-2, helper_labels=None, rehearsal=None)
    start = dict(pipe.model.named_parameters())
    plain = dict(pipe.fit(spectra, labels, **kw).model.named_parameters())
    averaged = dict(pipe.fit(spectra, labels, ema_decay=0.99, **kw).model.named_parameters())
    moved = [n for n in start if not torch.equal(start[n], plain[n])]
    assert moved
    for n in moved:
        torch.testing.assert_close(averaged[n], 0.1 * start[n] + 0.9 * plain[n], rtol=1e-5, atol=1e-7)
