"""Build a checkpoint folder in the paper's original format with random weights, and evaluate the paper's forward
on it with torch's own nn.MultiheadAttention, following the semantics in shared/design/original_checkpoint_format.md.
This is an independent reference for the converter test (it shares no code with spectrafm_hf's model)."""

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LABELS = ["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"]
N_PIX = 7514
LABEL_MEAN = [4702.521, 2.478376, 0.0876477, 0.0670321, -0.158940]
LABEL_STD = [544.0086, 1.307946, 0.0836237, 0.0848680, 0.287299]


def _shapes(d=256, heads=16, dense=2048):
    shapes = {"embedding_layer.embeddings": (N_PIX + 6, d), "embedding_layer.bias": (N_PIX + 6, d)}

    def block(prefix, dense_n):
        shapes.update({
            f"{prefix}.attention.in_proj_weight": (3 * d, d), f"{prefix}.attention.in_proj_bias": (3 * d,),
            f"{prefix}.attention.bias_k": (1, 1, d), f"{prefix}.attention.bias_v": (1, 1, d),
            f"{prefix}.attention.out_proj.weight": (d, d), f"{prefix}.attention.out_proj.bias": (d,),
            f"{prefix}.dense_1.weight": (dense_n, d), f"{prefix}.dense_1.bias": (dense_n,),
            f"{prefix}.dense_2.weight": (d, dense_n), f"{prefix}.dense_2.bias": (d,),
            f"{prefix}.layernorm_1.weight": (d,), f"{prefix}.layernorm_1.bias": (d,),
            f"{prefix}.layernorm_2.weight": (d,), f"{prefix}.layernorm_2.bias": (d,),
        })

    block("torch_encoder.encoder_transformer_block_1", dense)
    block("torch_encoder.encoder_transformer_block_2", dense // 2)
    for i in range(3):
        block(f"torch_decoder.decoder_transformer_block_{i + 1}", dense // 2**i)
    dims = [d, 2048, 1024, 512, 256]
    for i in range(4):
        shapes[f"torch_decoder.decoder_dense_{i + 3}.weight"] = (dims[i + 1], dims[i])
        shapes[f"torch_decoder.decoder_dense_{i + 3}.bias"] = (dims[i + 1],)
    for name in ("decoder_out", "decoder_logvar_out"):
        shapes[f"torch_decoder.{name}.weight"] = (1, 256)
        shapes[f"torch_decoder.{name}.bias"] = (1,)
    return shapes


def make_original_folder(path, seed=0, ddp_prefix=True):
    """Write weights.pt / config.json / embed_map.npz like the paper's released epoch folders."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in _shapes().items():
        scale = 1.0 if "layernorm" in k and k.endswith("weight") else 0.0
        t = torch.randn(shape, generator=g) * (0.1 if "layernorm" not in k else 0.05) + scale
        if k.endswith("in_proj_weight") or k.endswith("dense_1.weight") or k.endswith("dense_2.weight"):
            t = t / math.sqrt(shape[1]) * 3
        state[("module." if ddp_prefix else "") + k] = t
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}, "optimizer": "AdamW", "epoch": 120},
               path / "weights.pt")
    rng = np.random.default_rng(seed)
    pix_mean = rng.uniform(0.53, 1.12, N_PIX)
    pix_std = rng.uniform(0.002, 0.145, N_PIX)
    mean = np.concatenate([[0.0], pix_mean, LABEL_MEAN]).tolist()
    std = np.concatenate([[1.0], pix_std, LABEL_STD]).tolist()
    config = {
        "nn_config": {"backend_framework": "torch-2.3.1", "context_length": 512, "embedding_dim": 256,
                      "embedding_activation": "gelu", "encoder_head_num": 16, "encoder_dense_num": 2048,
                      "encoder_dropout_rate": 0.05, "encoder_activation": "gelu", "decoder_head_num": 16,
                      "decoder_dense_num": 2048, "decoder_dropout_rate": 0.05, "decoder_activation": "gelu"},
        "tokenizer_config": {"vocabs": [f"syn_apogee{i}" for i in range(N_PIX)] + LABELS,
                             "vocab_tokens": list(range(1, N_PIX + 6))},
        "norm_config": {"_input_mean": mean, "_input_std": std, "_input_standardized": [True] * (N_PIX + 6)},
    }
    (path / "config.json").write_text(json.dumps(config))
    keys = np.arange(N_PIX + 6)
    values = np.where((keys >= 1) & (keys <= N_PIX), 1, keys)
    np.savez(path / "embed_map.npz", keys=keys, values=values)
    return path


class _Block(nn.Module):
    def __init__(self, heads, dense):
        super().__init__()
        self.attention = nn.MultiheadAttention(256, heads, batch_first=True, add_bias_kv=True)
        self.dense_1, self.dense_2 = nn.Linear(256, dense), nn.Linear(dense, 256)
        self.layernorm_1, self.layernorm_2 = nn.LayerNorm(256), nn.LayerNorm(256)

    def forward(self, q, kv, pad):
        a, _ = self.attention(q, kv, kv, key_padding_mask=pad)
        x = self.layernorm_1(q + a)
        return self.layernorm_2(x + self.dense_2(F.gelu(self.dense_1(x))))


def reference_predict(folder, pixel_index, flux, label):
    """The paper's eval-mode forward for one star: pixels (indices into the 7514 grid) with their raw flux."""
    blob = torch.load(Path(folder) / "weights.pt", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in blob["model_state_dict"].items()}
    cfg = json.loads((Path(folder) / "config.json").read_text())
    mean = np.asarray(cfg["norm_config"]["_input_mean"])
    std = np.asarray(cfg["norm_config"]["_input_std"])
    from spectrafm_hf.grids import apogee_wavelength_7514  # only the wavelength grid, not model code

    tok = np.asarray(pixel_index) + 1
    x = torch.tensor((np.asarray(flux) - mean[tok]) / std[tok], dtype=torch.float32)
    lam = torch.tensor(apogee_wavelength_7514()[pixel_index], dtype=torch.float64)
    E, B = sd["embedding_layer.embeddings"], sd["embedding_layer.bias"]
    emb = F.gelu(E[1] * x[:, None] + B[1])
    i = torch.arange(128, dtype=torch.float64)
    ang = (1000 * (lam[:, None] - 15000) / 2000 * torch.exp(-2 * i * math.log(10000) / 256)).float()
    pe = torch.zeros(len(tok), 256)
    pe[:, 0::2], pe[:, 1::2] = ang.sin(), ang.cos()
    h = (emb + pe)[None]
    enc = [_Block(16, 2048), _Block(8, 1024)]
    dec = [_Block(16, 2048), _Block(8, 1024), _Block(4, 512)]
    for j, blk in enumerate(enc):
        blk.load_state_dict({k.split(".", 2)[2]: v for k, v in sd.items()
                             if k.startswith(f"torch_encoder.encoder_transformer_block_{j + 1}.")})
    for j, blk in enumerate(dec):
        blk.load_state_dict({k.split(".", 2)[2]: v for k, v in sd.items()
                             if k.startswith(f"torch_decoder.decoder_transformer_block_{j + 1}.")})
    pad = torch.zeros(1, len(tok), dtype=torch.bool)
    lab_tok = N_PIX + 1 + LABELS.index(label)
    with torch.no_grad():
        for blk in enc:
            blk.eval()
            h = blk(h, h, pad)
        q = E[lab_tok][None, None]
        for blk in dec:
            blk.eval()
            q = blk(q, h, pad)
        for n in range(3, 7):
            q = F.gelu(F.linear(q, sd[f"torch_decoder.decoder_dense_{n}.weight"], sd[f"torch_decoder.decoder_dense_{n}.bias"]))
        m = F.linear(q, sd["torch_decoder.decoder_out.weight"], sd["torch_decoder.decoder_out.bias"]).item()
        v = F.linear(q, sd["torch_decoder.decoder_logvar_out.weight"], sd["torch_decoder.decoder_logvar_out.bias"]).item()
    return m * std[lab_tok] + mean[lab_tok], math.sqrt(math.exp(v)) * std[lab_tok]
