"""Attention projections are separate q/k/v Linear layers in memory (so LoRA reaches them) and packed on disk
(``in_proj_weight``/``in_proj_bias``, the paper's layout and every checkpoint saved before the split)."""

import numpy as np
import pytest
import torch
from conftest import TINY
from safetensors import safe_open
from safetensors.torch import load_file

from spectrafm_hf import SpectraFMModel

ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _inputs(config, n=3, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        flux=1 + 0.05 * torch.randn(n, length, generator=g),
        wavelength=torch.linspace(15200, 16900, length).expand(n, length).clone(),
        query_ids=torch.arange(config.num_labels).expand(n, -1).clone(),
    )


def _outputs(model, inputs):
    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    return torch.cat([out.mean, out.log_variance], dim=-1)


def _saved_keys(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_packed_checkpoint_loads_into_split_projections():
    model = SpectraFMModel.from_pretrained(TINY)
    packed = load_file(TINY / "model.safetensors")
    d = model.config.hidden_size
    attn = model.encoder[0].attention
    w = packed["encoder.0.attention.in_proj_weight"]
    b = packed["encoder.0.attention.in_proj_bias"]
    assert torch.equal(attn.q_proj.weight, w[:d]) and torch.equal(attn.k_proj.weight, w[d:2 * d])
    assert torch.equal(attn.v_proj.weight, w[2 * d:]) and torch.equal(attn.v_proj.bias, b[2 * d:])
    # torch-level load_state_dict (the converter's path) splits the packed keys the same way
    fresh = SpectraFMModel(model.config)
    result = fresh.load_state_dict(packed, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    inputs = _inputs(model.config)
    assert torch.equal(_outputs(model, inputs), _outputs(fresh, inputs))


def test_save_keeps_the_packed_layout(tmp_path):
    model = SpectraFMModel.from_pretrained(TINY)
    model.save_pretrained(tmp_path)
    keys = _saved_keys(tmp_path)
    assert keys == _saved_keys(TINY)  # same file layout as before the split
    assert not any(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")) for k in keys)
    again = SpectraFMModel.from_pretrained(tmp_path)
    for (name, p), (name2, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert name == name2 and torch.equal(p, q), name


def test_lora_reaches_attention_and_merges_exactly(tmp_path):
    peft = pytest.importorskip("peft")
    model = SpectraFMModel.from_pretrained(TINY)
    inputs = _inputs(model.config)
    before = _outputs(model, inputs)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=list(ATTENTION_PARTS)))
    names = [n for n, _ in lora.named_parameters() if "lora_" in n]
    for part in ATTENTION_PARTS:  # every attention projection of every block got an adapter
        blocks = {n.split(".attention.")[0] for n in names if f".attention.{part}.lora_A" in n}
        assert len(blocks) == len(model.config.encoder_num_heads) + len(model.config.decoder_num_heads), part
    trainable = [p for _, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in lora.named_parameters() if p.requires_grad)
    with torch.no_grad():  # a trained adapter: LoRA B starts at zero, so move it
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    adapted = _outputs(lora, inputs)
    assert not torch.allclose(adapted, before, atol=1e-4)  # the adapters act on the output
    merged = lora.merge_and_unload()
    assert isinstance(merged, SpectraFMModel)
    torch.testing.assert_close(_outputs(merged, inputs), adapted, rtol=1e-5, atol=1e-5)
    merged.save_pretrained(tmp_path)  # a plain, packed SpectraFM folder with the adapted weights
    assert _saved_keys(tmp_path) == _saved_keys(TINY)
    torch.testing.assert_close(_outputs(SpectraFMModel.from_pretrained(tmp_path), inputs), adapted,
                               rtol=1e-5, atol=1e-5)


def test_fresh_init_matches_the_packed_xavier_scheme():
    torch.manual_seed(0)
    model = SpectraFMModel(SpectraFMModel.from_pretrained(TINY).config)
    attn = model.encoder[0].attention
    d = model.config.hidden_size
    w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
    bound = np.sqrt(6.0 / (d + 3 * d))  # Xavier-uniform over the packed (3d, d) matrix, as nn.MultiheadAttention
    assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound
    assert torch.count_nonzero(attn.q_proj.bias) == 0 and torch.count_nonzero(attn.v_proj.bias) == 0
