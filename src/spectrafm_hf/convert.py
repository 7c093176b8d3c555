"""Convert a checkpoint folder of the paper's code (Koblischke & Bovy 2024) into a `SpectraFMPipeline` folder.

The original folder holds ``weights.pt`` (a torch pickle with ``model_state_dict``, possibly with DDP's ``module.``
prefix), ``config.json`` (``nn_config``, ``tokenizer_config``, ``norm_config``) and ``embed_map.npz``. Only 7 of
its 7520 embedding rows are used (pad, the shared flux row and the labels); we keep the flux row and the label rows.
Pixel token ``syn_apogee{i}`` is pixel ``i`` of the 7514-pixel APOGEE grid; its per-pixel median / MAD-std become
the processor's ``per_pixel`` normalisation, so the converted pipeline reproduces the paper's forward exactly.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from .configuration_spectrafm import SpectraFMConfig
from .grids import apogee_wavelength_7514
from .safe_write import atomic_directory
from .modeling_spectrafm import SpectraFMModel
from .processing_spectrafm import SpectraFMProcessor

__all__ = ["convert_original_checkpoint", "load_original_folder"]

_PIXEL_TOKEN = re.compile(r"^syn_apogee(\d+)$")


def load_original_folder(original_dir):
    """Read the three files of an original checkpoint folder. Weights are loaded with ``weights_only=True``."""
    original_dir = Path(original_dir)
    for name in ("weights.pt", "config.json", "embed_map.npz"):
        if not (original_dir / name).is_file():
            raise FileNotFoundError(f"{original_dir}: missing {name}; not an original SpectraFM checkpoint folder")
    blob = torch.load(original_dir / "weights.pt", map_location="cpu", weights_only=True)
    state = blob.get("model_state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{original_dir / 'weights.pt'}: no model_state_dict inside")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    config = json.loads((original_dir / "config.json").read_text())
    emap = np.load(original_dir / "embed_map.npz")
    embed_map = dict(zip(emap["keys"].astype(int).tolist(), emap["values"].astype(int).tolist()))
    return state, config, embed_map


def _map_key(key: str) -> str | None:
    rules = [
        (r"^torch_encoder\.encoder_transformer_block_(\d+)\.(.+)$", lambda m: f"encoder.{int(m[1]) - 1}.{m[2]}"),
        (r"^torch_decoder\.decoder_transformer_block_(\d+)\.(.+)$", lambda m: f"decoder.{int(m[1]) - 1}.{m[2]}"),
        (r"^torch_decoder\.decoder_dense_(\d+)\.(weight|bias)$", lambda m: f"head.{int(m[1]) - 3}.{m[2]}"),
        (r"^torch_decoder\.decoder_out\.(weight|bias)$", lambda m: f"mean_out.{m[1]}"),
        (r"^torch_decoder\.decoder_logvar_out\.(weight|bias)$", lambda m: f"log_variance_out.{m[1]}"),
    ]
    for pattern, target in rules:
        m = re.match(pattern, key)
        if m:
            return target(m)
    return None


def _check_output(original_dir, output_dir):
    """The output must not be the original folder (its config.json would be replaced by ours)."""
    src, out = Path(original_dir).expanduser().resolve(), Path(output_dir).expanduser().resolve()
    same = src == out or (out.is_dir() and src.is_dir() and os.path.samefile(src, out))
    if same:
        raise ValueError(f"output folder {output_dir} is the original checkpoint folder {original_dir}: converting "
                         "in place would replace its config.json; choose another output folder")
    for name in ("weights.pt", "config.json", "embed_map.npz"):  # the same files reached through links
        a, b = src / name, out / name
        if a.exists() and b.exists() and os.path.samefile(a, b):
            raise ValueError(f"{b} is the original checkpoint's {name} ({a}); choose another output folder")


def convert_original_checkpoint(original_dir, output_dir, overwrite: bool = False) -> SpectraFMModel:
    """Convert ``original_dir`` (the paper's format) into ``output_dir`` (config.json, model.safetensors,
    preprocessor_config.json). Returns the converted model.

    ``output_dir`` may not be ``original_dir`` (`ValueError`). It is written like
    `SpectraFMPipeline.save_pretrained`: a folder holding other files is refused (`FileExistsError`) unless
    ``overwrite=True``, which replaces only the converted checkpoint's files and nothing else."""
    _check_output(original_dir, output_dir)
    state, config, embed_map = load_original_folder(original_dir)
    nn_cfg, tok_cfg, norm = config["nn_config"], config["tokenizer_config"], config["norm_config"]
    vocab = list(tok_cfg["vocabs"])
    tokens = [int(t) for t in tok_cfg.get("vocab_tokens", range(1, len(vocab) + 1))]
    pixel_index, pixel_tokens, label_names, label_tokens = [], [], [], []
    for name, tok in zip(vocab, tokens):
        m = _PIXEL_TOKEN.match(name)
        if m:
            pixel_index.append(int(m[1]))
            pixel_tokens.append(tok)
        else:
            label_names.append(name)
            label_tokens.append(tok)
    if not pixel_index:
        raise ValueError(f"{original_dir}: no 'syn_apogee<i>' pixel tokens in the vocabulary")
    flux_rows = {embed_map[t] for t in pixel_tokens}
    if len(flux_rows) != 1:
        raise ValueError(f"{original_dir}: pixel tokens use {len(flux_rows)} embedding rows; expected one shared row")

    d = int(nn_cfg["embedding_dim"])
    heads, dense = int(nn_cfg["encoder_head_num"]), int(nn_cfg["encoder_dense_num"])
    dec_heads, dec_dense = int(nn_cfg["decoder_head_num"]), int(nn_cfg["decoder_dense_num"])
    n_dec = sum(1 for k in state if re.match(r"torch_decoder\.decoder_transformer_block_\d+\.dense_1\.weight", k))
    head_dims = [state[f"torch_decoder.decoder_dense_{i}.weight"].shape[0] for i in range(3, 7)
                 if f"torch_decoder.decoder_dense_{i}.weight" in state]
    cfg = SpectraFMConfig(
        hidden_size=d,
        encoder_num_heads=[heads, heads // 2],
        encoder_ffn_dims=[dense, dense // 2],
        decoder_num_heads=[dec_heads // 2**i for i in range(n_dec)],
        decoder_ffn_dims=[dec_dense // 2**i for i in range(n_dec)],
        head_dims=head_dims,
        hidden_dropout=float(nn_cfg.get("encoder_dropout_rate", 0.05)),
        attention_dropout=float(nn_cfg.get("encoder_dropout_rate", 0.05)),
        attention_dropout_mode="probabilities",  # the paper's nn.MultiheadAttention semantics
        context_length=int(nn_cfg.get("context_length", 512)),
        label_names=label_names,
        log_variance_bounds=[-80.0, 80.0],  # no clamp in the original: keep its outputs untouched
    )
    model = SpectraFMModel(cfg)

    new_state = {}
    rows = [next(iter(flux_rows))] + [embed_map[t] for t in label_tokens]
    new_state["embedding_layer.embeddings"] = state["embedding_layer.embeddings"][rows].clone()
    new_state["embedding_layer.bias"] = state["embedding_layer.bias"][rows].clone()
    unused = []
    for key, value in state.items():
        if key.startswith("embedding_layer."):
            continue
        target = _map_key(key)
        if target is None:
            unused.append(key)
        else:
            new_state[target] = value
    if unused:
        raise ValueError(f"{original_dir}: unexpected keys in the original state dict: {unused[:5]}")
    result = model.load_state_dict(new_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    mean = np.asarray(norm["_input_mean"], dtype=np.float64)
    std = np.asarray(norm["_input_std"], dtype=np.float64)
    grid = apogee_wavelength_7514()
    order = np.argsort(pixel_index)
    pix = np.asarray(pixel_index)[order]
    ptok = np.asarray(pixel_tokens)[order]
    processor = SpectraFMProcessor(
        label_names=label_names,
        label_centers=[mean[t] for t in label_tokens],
        label_scales=[std[t] for t in label_tokens],
        flux_normalization="per_pixel",
        reference_wavelength=grid[pix].tolist(),
        pixel_centers=mean[ptok].tolist(),
        pixel_scales=std[ptok].tolist(),
        clip_sigma=10.0,
        context_length=cfg.context_length,
        wavelength_coverage=[[float(grid[pix].min()), float(grid[pix].max())]],
        converted_from=str(Path(original_dir).name),
    )
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return model
