"""The network: parameter count, config validation, invariances, attention paths, loss, save/load, Auto classes."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, TINY

from spectrafm_hf import SpectraFMConfig, SpectraFMModel
from spectrafm_hf.modeling_spectrafm import gaussian_nll, wavelength_encoding

SMALL = dict(hidden_size=32, encoder_num_heads=[4, 2], encoder_ffn_dims=[64, 32], decoder_num_heads=[4, 2, 1],
             decoder_ffn_dims=[64, 32, 16], head_dims=[64, 32], context_length=128)


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    return SpectraFMModel(SpectraFMConfig(**{**SMALL, **kw})).eval()


def random_batch(b=3, n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    flux = torch.randn(b, n, generator=g)
    wave = 15200 + 1700 * torch.rand(b, n, generator=g)
    return flux, wave


def test_default_config_is_the_paper_network():
    model = SpectraFMModel(SpectraFMConfig())
    n = model.num_parameters()
    # paper: 8,020,482 non-embedding parameters + 6 used embedding pairs of 256 (flux + 5 labels)
    assert n == 8_020_482 + 6 * 2 * 256
    assert model.config.label_names == ["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"]
    assert [b.attention.num_heads for b in model.encoder] == [16, 8]
    assert [b.attention.num_heads for b in model.decoder] == [16, 8, 4]
    assert model.embedding_layer.embeddings.shape == (6, 256)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_size=30, encoder_num_heads=[4, 2]), "not divisible"),
        (dict(encoder_ffn_dims=[2048]), "has 2 blocks"),
        (dict(hidden_dropout=1.5), "hidden_dropout"),
        (dict(label_names=[]), "at least one label"),
        (dict(label_names=["A", "A"]), "unique"),
        (dict(wavelength_range=0), "wavelength_range"),
        (dict(context_length=0), "context_length"),
        (dict(attention_dropout_mode="heads"), "attention_dropout_mode"),
    ],
)
def test_config_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpectraFMConfig(**kwargs)


def test_wavelength_encoding_matches_the_paper_formula():
    cfg = SpectraFMConfig()
    lam = torch.tensor([15500.0, 16800.0])
    pe = wavelength_encoding(lam, cfg)
    ln = (lam[:, None].double() - 15000) / 2000
    i = torch.arange(128, dtype=torch.float64)
    ang = 1000 * ln * 10000 ** (-2 * i / 256)
    assert torch.allclose(pe[:, 0::2].double(), ang.sin(), atol=2e-4)
    assert torch.allclose(pe[:, 1::2].double(), ang.cos(), atol=2e-4)


def test_mixed_length_batch_shapes(tiny_pipeline, rng):
    from conftest import fake_apogee_spectrum

    spectra = [fake_apogee_spectrum(rng, n=n) for n in (30, 64, 200)]
    batch = tiny_pipeline.processor(spectra, seed=0)
    assert batch["flux"].shape == (3, 64)
    assert batch["observed_mask"].sum(1).tolist() == [30, 64, 64]
    out = tiny_pipeline.model(**batch, query_ids=torch.tensor([[4, 0]] * 3))
    assert out.mean.shape == out.log_variance.shape == (3, 2)
    assert torch.isfinite(out.mean).all()


def test_pixel_order_does_not_matter():
    model = small_model()
    flux, wave = random_batch()
    perm = torch.randperm(flux.shape[1])
    with torch.no_grad():
        a, b = model(flux, wave), model(flux[:, perm], wave[:, perm])
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.log_variance, b.log_variance, rtol=1e-5, atol=1e-5)


def test_masked_padding_changes_nothing():
    model = small_model()
    flux, wave = random_batch()
    pad_flux = torch.cat([flux, 5 * torch.randn(3, 40)], 1)
    pad_wave = torch.cat([wave, 16000 + torch.rand(3, 40)], 1)
    mask = torch.cat([torch.ones(3, 100), torch.zeros(3, 40)], 1)
    with torch.no_grad():
        a, b = model(flux, wave), model(pad_flux, pad_wave, observed_mask=mask)
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-5, atol=1e-5)


def test_nan_flux_and_mask_zero_agree():
    model = small_model()
    flux, wave = random_batch()
    mask = torch.ones_like(flux)
    mask[:, ::3] = 0
    nan_flux = flux.clone()
    nan_flux[:, ::3] = float("nan")
    with torch.no_grad():
        a, b = model(flux, wave, observed_mask=mask), model(nan_flux, wave)
    torch.testing.assert_close(a.mean, b.mean)
    assert torch.isfinite(b.mean).all()


def test_fully_masked_spectrum_gives_finite_output():
    model = small_model()
    flux = torch.full((2, 10), float("nan"))
    wave = torch.full((2, 10), 16000.0)
    with torch.no_grad():
        out = model(flux, wave)
    assert torch.isfinite(out.mean).all() and torch.isfinite(out.log_variance).all()


def test_sdpa_and_eager_agree_and_eager_returns_attention():
    model = small_model()
    flux, wave = random_batch()
    flux[0, 50:] = float("nan")
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        fast = model(flux, wave)
        model.set_attn_implementation("eager")
        slow = model(flux, wave, output_attentions=True)
    torch.testing.assert_close(fast.mean, slow.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.log_variance, slow.log_variance, rtol=1e-4, atol=1e-5)
    assert len(slow.attentions) == 3 and len(slow.encoder_attentions) == 2
    last = slow.attentions[-1]
    assert last.shape == (3, 1, 5, 101)  # heads=1, 5 queries, 100 pixels + the bias slot
    torch.testing.assert_close(last.sum(-1), torch.ones(3, 1, 5))
    assert last[0, :, :, 50:100].abs().max() == 0  # masked pixels get exactly zero attention


def test_queries_are_independent():
    """Decoder queries do not attend to each other: asking one label or all gives the same number."""
    model = small_model()
    flux, wave = random_batch()
    with torch.no_grad():
        everything = model(flux, wave)
        just_feh = model(flux, wave, query_ids=torch.tensor([[4]] * 3))
    torch.testing.assert_close(everything.mean[:, 4:5], just_feh.mean)


def test_non_spectra_inputs_change_the_prediction():
    model = small_model()
    flux, wave = random_batch()
    with torch.no_grad():
        plain = model(flux, wave)
        with_logg = model(flux, wave, input_values=torch.full((3, 1), 1.5), input_ids=torch.ones(3, 1, dtype=torch.long))
        masked_logg = model(flux, wave, input_values=torch.full((3, 1), 1.5),
                            input_ids=torch.ones(3, 1, dtype=torch.long), input_mask=torch.zeros(3, 1))
    assert not torch.allclose(plain.mean, with_logg.mean)
    torch.testing.assert_close(plain.mean, masked_logg.mean)


def test_loss_ignores_nan_targets_and_adds_label_errors():
    mean = torch.tensor([[0.0, 1.0]])
    logvar = torch.zeros(1, 2)
    target = torch.tensor([[1.0, float("nan")]])
    assert gaussian_nll(mean, logvar, target).item() == pytest.approx(0.5)
    # variance 1 + 1^2 = 2: 0.5 * (1/2 + ln 2)
    assert gaussian_nll(mean, logvar, target, torch.ones(1, 2)).item() == pytest.approx(0.5 * (0.5 + np.log(2)))
    all_nan = gaussian_nll(mean.requires_grad_(), logvar, torch.full((1, 2), float("nan")))
    assert all_nan.item() == 0.0
    all_nan.backward()
    assert torch.isfinite(mean.grad).all()


def test_model_loss_and_backward():
    model = small_model().train()
    flux, wave = random_batch()
    labels = torch.randn(3, 5)
    labels[0, 2] = float("nan")
    out = model(flux, wave, labels=labels, label_err=torch.full((3, 5), 0.1))
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert torch.isfinite(out.loss) and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bad_tensor_shapes_are_reported():
    model = small_model()
    flux, wave = random_batch()
    with pytest.raises(ValueError, match="flux and wavelength"):
        model(flux, wave[:, :50])
    with pytest.raises(ValueError, match="query_ids"):
        model(flux, wave, query_ids=torch.tensor([[7]] * 3))
    with pytest.raises(ValueError, match="labels has shape"):
        model(flux, wave, labels=torch.zeros(3, 2))


def test_save_load_round_trip_is_exact(tmp_path):
    from transformers import AutoConfig, AutoModel

    model = small_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded, info = SpectraFMModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or info["missing_keys"] == []
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    auto = AutoModel.from_pretrained(tmp_path)
    assert isinstance(auto, SpectraFMModel)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SpectraFMConfig)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "spectrafm"
    assert cfg["auto_map"]["AutoModel"] == "modeling_spectrafm.SpectraFMModel"


def test_auto_classes_resolve_the_tiny_checkpoint():
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor

    from spectrafm_hf import SpectraFMProcessor

    assert isinstance(AutoConfig.from_pretrained(TINY), SpectraFMConfig)
    assert isinstance(AutoModel.from_pretrained(TINY), SpectraFMModel)
    assert isinstance(AutoFeatureExtractor.from_pretrained(TINY), SpectraFMProcessor)
    assert isinstance(AutoProcessor.from_pretrained(TINY), SpectraFMProcessor)


def test_saved_folder_loads_as_remote_code_without_the_package(tmp_path):
    """trust_remote_code=True must work where spectrafm_hf cannot be imported (it is blocked in the child)."""
    code = f"""
import sys, torch
sys.modules["spectrafm_hf"] = None  # the package is not installed here
from transformers import AutoModel
m = AutoModel.from_pretrained({str(TINY)!r}, trust_remote_code=True)
assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
out = m(torch.zeros(1, 10), torch.linspace(15200, 16900, 10)[None])
print("OK", tuple(out.mean.shape))
"""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "OK (1, 5)" in res.stdout


def test_code_shipped_with_checkpoints_matches_the_package():
    """Saved folders carry modeling/configuration files for trust_remote_code; they must not drift from src."""
    src = REPO / "src" / "spectrafm_hf"
    for folder in (TINY, src / "resources" / "models" / "spectrafm-base"):
        for name in ("configuration_spectrafm.py", "modeling_spectrafm.py"):
            assert (folder / name).read_text() == (src / name).read_text(), f"{folder.name}/{name} is stale"


def test_key_dropout_masks_keys_not_probabilities_and_keeps_the_extra_slot():
    model = small_model(attention_dropout=0.5)
    attn = model.encoder[0].attention
    mask = torch.ones(64, 1, 1, 21, dtype=torch.bool)
    mask[:, ..., 15:20] = False  # padding stays padding
    torch.manual_seed(0)
    dropped = attn._drop_keys(mask, 0.5)
    assert dropped.shape == (64, attn.num_heads, 1, 21)
    assert not dropped[..., 15:20].any() and dropped[..., -1].all()  # the bias key/value slot is never dropped
    frac = 1 - dropped[..., :15].float().mean().item()
    assert 0.4 < frac < 0.6  # about p of the real keys, drawn per spectrum and head
    assert (dropped[:, 0] != dropped[:, 1]).any()
    # training mode differs from eval (dropout acts), eval is deterministic; the paper's mode also runs
    flux, wave = random_batch(b=2, n=60)
    model.eval()
    with torch.no_grad():
        a, b = model(flux, wave).mean, model(flux, wave).mean
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        c = model(flux, wave).mean
    assert not torch.allclose(a, c)
    paper = small_model(attention_dropout=0.5, attention_dropout_mode="probabilities").train()
    with torch.no_grad():
        assert torch.isfinite(paper(flux, wave).mean).all()


def test_flux_queries_leave_the_label_answers_and_add_their_loss():
    """Masked-flux pretraining: flux queries ride along in the decoder without changing any label answer; their
    Gaussian NLL (NaN targets ignored) is added to the label loss and trains the flux token's embedding row."""
    model = small_model(hidden_dropout=0.0, attention_dropout=0.0).train()  # train mode: gradients, no dropout
    flux, wave = random_batch()
    held = torch.tensor([[15500.0, 15600.0], [16000.0, float("nan")], [15300.0, 15400.0]])
    targets = torch.tensor([[0.5, -0.5], [1.0, float("nan")], [0.0, 2.0]])
    labels = torch.randn(3, 5)
    plain = model(flux, wave, labels=labels)
    both = model(flux, wave, labels=labels, flux_query_wavelength=held, flux_targets=targets)
    torch.testing.assert_close(plain.mean, both.mean)
    assert both.masked_flux_mean.shape == (3, 2) and plain.masked_flux_loss is None
    expected = gaussian_nll(both.masked_flux_mean, both.masked_flux_log_variance, targets)
    torch.testing.assert_close(both.masked_flux_loss, expected)
    torch.testing.assert_close(both.loss, plain.loss + expected)
    both.masked_flux_loss.backward()
    assert model.embedding_layer.embeddings.grad[0].abs().max() > 0  # the flux row is the flux queries' base
    assert model.embedding_layer.embeddings.grad[1:].abs().max() == 0  # label rows get nothing from flux queries
    with pytest.raises(ValueError, match="needs flux_query_wavelength"):
        model(flux, wave, flux_targets=targets)
    with pytest.raises(ValueError, match="flux_targets has shape"):
        model(flux, wave, flux_query_wavelength=held, flux_targets=targets[:, :1])


def test_hidden_states_include_each_querys_last_decoder_state():
    """output_hidden_states also returns the last decoder block's state of each query (label queries, then flux
    queries), from which the head gives exactly the returned answers; without it none is returned."""
    model = small_model()
    flux, wave = random_batch(b=2, n=60)
    queries = torch.tensor([[0, 2], [0, 2]])
    out = model(flux, wave, query_ids=queries, output_hidden_states=True)
    assert out.decoder_last_hidden_state.shape == (2, 2, model.config.hidden_size)
    mean, log_variance = model.answer(out.decoder_last_hidden_state)
    torch.testing.assert_close(mean, out.mean)
    torch.testing.assert_close(log_variance, out.log_variance)
    torch.testing.assert_close(model.decode(out.encoder_last_hidden_state, out.observed_mask, queries)[0], out.mean)
    held = model(flux, wave, query_ids=queries, flux_query_wavelength=wave[:, :5], output_hidden_states=True)
    assert held.decoder_last_hidden_state.shape == (2, 7, model.config.hidden_size)
    torch.testing.assert_close(held.decoder_last_hidden_state[:, :2], out.decoder_last_hidden_state)
    assert model(flux, wave, query_ids=queries).decoder_last_hidden_state is None
