"""PyTorch SpectraFM: a Transformer that reads stellar spectra as pixel tokens and predicts labels with uncertainties.

The network is the paper's (Koblischke & Bovy 2024) with its faults fixed: a token-type embedding of a few rows,
explicit observed masks (also at inference), wavelength constants in the config, all queried labels decoded in
one pass, and fused scaled-dot-product attention (an eager path returns attention maps).

This file imports only torch, transformers and its sibling configuration file, so a saved folder works as remote
code (``trust_remote_code=True``) where the package is not installed.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_spectrafm import SpectraFMConfig

# On disk, attention keeps ``nn.MultiheadAttention``'s packed ``in_proj_weight``/``in_proj_bias`` (the paper's layout
# and every checkpoint saved so far); in memory it is three ``nn.Linear`` so that LoRA (peft) can reach q, k and v.
# transformers splits on load and packs again on save through this conversion.
_PACKED_PROJECTIONS = {
    "attention.in_proj_weight": ["attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight"],
    "attention.in_proj_bias": ["attention.q_proj.bias", "attention.k_proj.bias", "attention.v_proj.bias"],
}
try:
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.core_model_loading import Chunk, WeightConverter

    register_checkpoint_conversion_mapping(
        "spectrafm",
        [WeightConverter(source_patterns=k, target_patterns=v, operations=[Chunk(dim=0)])
         for k, v in _PACKED_PROJECTIONS.items()],
        overwrite=True,
    )
except ImportError as err:  # pragma: no cover - transformers without the v5 weight-conversion API
    raise ImportError("SpectraFM needs transformers' checkpoint conversion mapping (transformers >= 5.0)") from err


@dataclass
class SpectraFMOutput(ModelOutput):
    """
    Output of [`SpectraFMModel`]. Labels are in normalised units (the processor converts them to physical ones).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Gaussian negative log-likelihood (without the constant 0.5 log 2 pi), averaged over the finite targets,
            with variance ``exp(log_variance) + label_err**2``.
        mean (`torch.FloatTensor` of shape `(batch_size, num_queries)`):
            Predicted label means, one per query.
        log_variance (`torch.FloatTensor` of shape `(batch_size, num_queries)`):
            Predicted log-variance of each label (the model's own uncertainty, not including label errors).
        encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            Encoder output per token (pixels, then scalar inputs), returned when `output_hidden_states=True`.
        observed_mask (`torch.BoolTensor` of shape `(batch_size, sequence_length)`, *optional*):
            The key mask actually used (True = observed token), returned with `encoder_last_hidden_state`.
        decoder_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_queries, hidden_size)`, *optional*):
            The last decoder block's state of each label query (then of each flux query), before the head; returned
            with `encoder_last_hidden_state`. What the model knows about the star as it answers that label (a
            linear probe's ``features="embedding+queries"`` reads it).
        encoder_attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            One tensor per encoder block, shape `(batch_size, num_heads, sequence_length, sequence_length + 1)`;
            the last key is the learned bias key/value slot.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            Decoder cross-attention of each block, shape `(batch_size, num_heads, num_queries, sequence_length + 1)`:
            how much each label query looks at each pixel (the paper's attention maps use the last block).
        masked_flux_mean (`torch.FloatTensor` of shape `(batch_size, num_flux_queries)`, *optional*):
            Predicted normalised flux at each `flux_query_wavelength` (masked-flux pretraining).
        masked_flux_log_variance (`torch.FloatTensor` of shape `(batch_size, num_flux_queries)`, *optional*):
            Its predicted log-variance.
        masked_flux_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `flux_targets` is given):
            Gaussian NLL of the masked flux, averaged over its finite targets (already included in `loss`).
    """

    loss: torch.FloatTensor | None = None
    mean: torch.FloatTensor | None = None
    log_variance: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    observed_mask: torch.BoolTensor | None = None
    decoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    masked_flux_mean: torch.FloatTensor | None = None
    masked_flux_log_variance: torch.FloatTensor | None = None
    masked_flux_loss: torch.FloatTensor | None = None


def gaussian_nll(mean, log_variance, target, target_err=None, weights=None):
    """Mean Gaussian NLL over finite targets; variance = exp(log_variance) + target_err**2. NaN targets are ignored.
    ``weights`` (broadcast to the targets, e.g. one per query) scale each term; the mean still divides by the number
    of finite targets."""
    valid = torch.isfinite(target)
    var = log_variance.exp()
    if target_err is not None:
        err = torch.nan_to_num(target_err.to(var.dtype), nan=0.0, posinf=0.0)
        var = var + err**2
    target = torch.where(valid, target, mean.detach())
    nll = 0.5 * ((target - mean) ** 2 / var + torch.log(var))
    if weights is not None:
        nll = nll * weights
    n_valid = valid.sum()
    # No finite target at all: a zero that still carries the graph, never NaN.
    return torch.where(valid, nll, torch.zeros_like(nll)).sum() / n_valid.clamp_min(1)


def wavelength_encoding(wavelength, config):
    """Sinusoidal wavelength encoding, interleaved: PE[..., 2i] = sin(w_i * lambda_n), PE[..., 2i+1] = cos(...)."""
    half = config.hidden_size // 2
    exponent = torch.arange(half, device=wavelength.device, dtype=torch.float32) * (2.0 / config.hidden_size)
    freqs = config.wavelength_encoding_scale * torch.pow(config.wavelength_encoding_base, -exponent)
    lam = (wavelength.float() - config.wavelength_offset) / config.wavelength_range
    angle = lam[..., None] * freqs
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain attention that also returns the weights. attention_mask is boolean, True = may attend.
    Returns (output (B, Lq, heads, head_dim), weights (B, heads, Lq, Lk))."""
    scores = (query @ key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    out = F.dropout(weights, p=dropout, training=module.training) @ value
    return out.transpose(1, 2).contiguous(), weights


class SpectraFMEmbeddings(nn.Module):
    """Token-type embedding pairs: row 0 is the shared flux token, then one row per label and scalar input.

    An input token of type ``t`` with normalised value ``x`` becomes ``act(weight[t] * x + bias[t])`` (elementwise);
    a decoder query for label ``t`` is the raw row ``weight[t]``.
    """

    def __init__(self, config):
        super().__init__()
        n_types = len(config.token_type_names)
        self.embeddings = nn.Parameter(torch.empty(n_types, config.hidden_size))
        self.bias = nn.Parameter(torch.empty(n_types, config.hidden_size))
        self.act = ACT2FN[config.hidden_act]

    def tokens(self, values, type_ids):
        return self.act(self.embeddings[type_ids] * values[..., None] + self.bias[type_ids])

    def queries(self, type_ids):
        return self.embeddings[type_ids]


class SpectraFMAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections (saved packed, as ``nn.MultiheadAttention``'s
    ``in_proj_weight``/``in_proj_bias``) and one learned extra key/value slot appended after the keys
    (``add_bias_kv``)."""

    def __init__(self, config, num_heads):
        super().__init__()
        d = config.hidden_size
        self.num_heads, self.head_dim = num_heads, d // num_heads
        self.dropout = config.attention_dropout
        self.config = config  # read at call time: set_attn_implementation() switches eager/sdpa
        self.is_causal = False
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            proj._is_attention_projection = True  # initialised together, as one packed matrix (_init_weights)
        if config.add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, d))
            self.bias_v = nn.Parameter(torch.empty(1, 1, d))
        else:
            self.bias_k = self.bias_v = None
        self.out_proj = nn.Linear(d, d)
        self._register_load_state_dict_pre_hook(self._split_packed_projections)

    @staticmethod
    def _split_packed_projections(state_dict, prefix, *args):
        """``load_state_dict`` with the packed layout (the paper's state dicts, files saved by older versions)."""
        for kind in ("weight", "bias"):
            packed = state_dict.pop(f"{prefix}in_proj_{kind}", None)
            if packed is not None:
                for name, part in zip(("q_proj", "k_proj", "v_proj"), packed.chunk(3, dim=0)):
                    state_dict[f"{prefix}{name}.{kind}"] = part

    def _drop_keys(self, mask, p):
        """(B, 1, 1, Lk) key mask -> (B, heads, 1, Lk) with each key dropped with probability p (DropKey); the
        extra key/value slot stays, and a row left without any key keeps its original mask."""
        keep = torch.rand(mask.shape[0], self.num_heads, 1, mask.shape[-1], device=mask.device) >= p
        if self.bias_k is not None:
            keep[..., -1] = True
        dropped = mask & keep
        return torch.where(dropped.any(-1, keepdim=True), dropped, mask)

    def forward(self, query, context, key_mask, output_attentions=False):
        """query (B, Lq, d); context (B, Lk, d); key_mask (B, Lk) bool, True = may be attended to."""
        b, lq, d = query.shape
        q, k, v = self.q_proj(query), self.k_proj(context), self.v_proj(context)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(b, 1, d)], dim=1)
            v = torch.cat([v, self.bias_v.expand(b, 1, d)], dim=1)
            key_mask = torch.cat([key_mask, key_mask.new_ones(b, 1)], dim=1)
        lk = k.shape[1]
        q = q.view(b, lq, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, lk, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, lk, self.num_heads, self.head_dim).transpose(1, 2)
        mask = key_mask[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        if dropout > 0 and self.config.attention_dropout_mode == "keys":
            mask = self._drop_keys(mask, dropout)
            dropout = 0.0
        attention = eager_attention_forward
        if not output_attentions:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attention(self, q, k, v, mask, dropout=dropout, scaling=self.head_dim**-0.5)
        out = out.reshape(b, lq, d)
        return self.out_proj(out), weights


class SpectraFMBlock(GradientCheckpointingLayer):
    """Post-LN Transformer block: ``x = LN1(x + Drop(Attn(x, context)))``; ``x = LN2(x + Drop(W2 act(W1 x)))``.
    Encoder blocks attend to themselves (context = x); decoder blocks only cross-attend to the encoder output."""

    def __init__(self, config, num_heads, ffn_dim):
        super().__init__()
        self.attention = SpectraFMAttention(config, num_heads)
        self.dense_1 = nn.Linear(config.hidden_size, ffn_dim)
        self.dense_2 = nn.Linear(ffn_dim, config.hidden_size)
        self.layernorm_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, context, key_mask, output_attentions=False):
        context = hidden_states if context is None else context
        attn, weights = self.attention(hidden_states, context, key_mask, output_attentions)
        hidden_states = self.layernorm_1(hidden_states + self.dropout(attn))
        ffn = self.dense_2(self.act(self.dense_1(hidden_states)))
        return self.layernorm_2(hidden_states + self.dropout(ffn)), weights


class SpectraFMPreTrainedModel(PreTrainedModel):
    config_class = SpectraFMConfig
    config: SpectraFMConfig
    base_model_prefix = "spectrafm"
    main_input_name = "flux"
    input_modalities = "time"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SpectraFMBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    # The loss is a per-batch mean; Trainer must not rescale it by num_items_in_batch (HF_NOTES section 4).
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        # Torch's own defaults, as the paper used them: kaiming-uniform Linear, Xavier over the packed (3d, d)
        # attention projection with zero bias.
        if isinstance(module, SpectraFMAttention):
            packed = torch.empty(3 * module.q_proj.out_features, module.q_proj.in_features)
            init.xavier_uniform_(packed)
            for proj, part in zip((module.q_proj, module.k_proj, module.v_proj), packed.chunk(3, dim=0)):
                init.copy_(proj.weight, part)
                init.zeros_(proj.bias)
            if module.bias_k is not None:
                init.xavier_normal_(module.bias_k)
                init.xavier_normal_(module.bias_v)
        elif isinstance(module, nn.Linear) and not getattr(module, "_is_attention_projection", False):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, SpectraFMEmbeddings):
            bound = self.config.embedding_init_bound
            init.uniform_(module.embeddings, -bound, bound)
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class SpectraFMModel(SpectraFMPreTrainedModel):
    """
    The full SpectraFM network: token embedding + encoder + label decoder + mean/log-variance head.

    Missing-data rule (the only one in the package): a pixel is read iff ``observed_mask`` is 1 (or not given)
    **and** its flux and wavelength are finite. Missing pixels are masked keys everywhere, in training and at
    inference; their values never reach the output. Padding a batch is done the same way (mask 0 / NaN flux).
    """

    def __init__(self, config: SpectraFMConfig):
        super().__init__(config)
        self.embedding_layer = SpectraFMEmbeddings(config)
        self.encoder = nn.ModuleList(
            SpectraFMBlock(config, h, f) for h, f in zip(config.encoder_num_heads, config.encoder_ffn_dims)
        )
        self.decoder = nn.ModuleList(
            SpectraFMBlock(config, h, f) for h, f in zip(config.decoder_num_heads, config.decoder_ffn_dims)
        )
        dims = [config.hidden_size] + config.head_dims
        self.head = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head_act = ACT2FN[config.hidden_act]
        self.head_dropout = nn.Dropout(config.hidden_dropout)
        self.mean_out = nn.Linear(dims[-1], 1)
        self.log_variance_out = nn.Linear(dims[-1], 1)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding_layer

    def encode(self, flux, wavelength, observed_mask=None, input_values=None, input_ids=None, input_mask=None,
               output_attentions=False):
        """Run the embedding and the encoder. Returns (hidden (B, L[+S], d), key_mask (B, L[+S]), attentions)."""
        if flux.dim() != 2 or wavelength.shape != flux.shape:
            raise ValueError(
                f"flux and wavelength must both be (batch, pixels); got {tuple(flux.shape)} and {tuple(wavelength.shape)}"
            )
        flux = flux.to(self.embedding_layer.embeddings.dtype)
        mask = torch.isfinite(flux) & torch.isfinite(wavelength)
        if observed_mask is not None:
            if observed_mask.shape != flux.shape:
                raise ValueError(f"observed_mask has shape {tuple(observed_mask.shape)}, flux {tuple(flux.shape)}")
            mask = mask & observed_mask.bool()
        x = torch.where(mask, flux, torch.zeros_like(flux))
        lam = torch.where(mask, wavelength, torch.full_like(wavelength, self.config.wavelength_offset))
        flux_type = torch.zeros_like(mask, dtype=torch.long)
        hidden = self.embedding_layer.tokens(x, flux_type) + wavelength_encoding(lam, self.config).to(x.dtype)
        if input_values is not None:  # non-spectra inputs (known labels, photometry): no wavelength encoding
            if input_ids is None:
                raise ValueError("input_values needs input_ids (indices into label_names + scalar_input_names)")
            n_names = len(self.config.label_names) + len(self.config.scalar_input_names)
            if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= n_names):
                raise ValueError(f"input_ids must be in [0, {n_names}), got {input_ids.min()}..{input_ids.max()}")
            values = input_values.to(x.dtype)
            in_mask = torch.isfinite(values)
            if input_mask is not None:
                in_mask = in_mask & input_mask.bool()
            values = torch.where(in_mask, values, torch.zeros_like(values))
            hidden = torch.cat([hidden, self.embedding_layer.tokens(values, input_ids + 1)], dim=1)
            mask = torch.cat([mask, in_mask], dim=1)
        attentions = []
        for block in self.encoder:
            hidden, weights = block(hidden, None, mask, output_attentions)
            attentions.append(weights)
        return hidden, mask, tuple(attentions) if output_attentions else None

    def flux_queries(self, wavelength):
        """Decoder queries (B, M, d) asking for the flux at these wavelengths (masked-flux pretraining): the flux
        token's embedding row plus the wavelength encoding, as a pixel token is built. NaN wavelength = padding."""
        lam = torch.nan_to_num(wavelength, nan=self.config.wavelength_offset)
        row = self.embedding_layer.queries(torch.zeros_like(lam, dtype=torch.long))
        return row + wavelength_encoding(lam, self.config).to(row.dtype)

    def decode(self, encoded, key_mask, query_ids, output_attentions=False, extra_queries=None):
        """Answer label queries (B, Q) from the encoder output, then any ``extra_queries`` (B, M, d) appended after
        them (queries never attend to each other, so they do not change the label answers).
        Returns (mean, log_variance, attentions), each with Q (+ M) query columns."""
        hidden, attentions = self.decoder_states(encoded, key_mask, query_ids, output_attentions, extra_queries)
        mean, log_variance = self.answer(hidden)
        return mean, log_variance, attentions

    def decoder_states(self, encoded, key_mask, query_ids, output_attentions=False, extra_queries=None):
        """The decoder blocks of `decode`: (the last block's state of each query (B, Q (+ M), d), attentions)."""
        n_labels = len(self.config.label_names)
        if query_ids.numel() and (query_ids.min() < 0 or query_ids.max() >= n_labels):
            raise ValueError(f"query_ids must index label_names (0..{n_labels - 1}), got {query_ids.tolist()}")
        hidden = self.embedding_layer.queries(query_ids + 1)
        if extra_queries is not None:
            hidden = torch.cat([hidden, extra_queries.to(hidden.dtype)], dim=1)
        attentions = []
        for block in self.decoder:
            hidden, weights = block(hidden, encoded, key_mask, output_attentions)
            attentions.append(weights)
        return hidden, tuple(attentions) if output_attentions else None

    def answer(self, hidden):
        """The head of `decode`: (mean, log_variance) of each query from its decoder state."""
        for layer in self.head:
            hidden = self.head_dropout(self.head_act(layer(hidden)))
        mean = self.mean_out(hidden).squeeze(-1)
        lo, hi = self.config.log_variance_bounds
        return mean, self.log_variance_out(hidden).squeeze(-1).clamp(lo, hi)

    def forward(
        self,
        flux,
        wavelength,
        observed_mask=None,
        query_ids=None,
        labels=None,
        label_err=None,
        input_values=None,
        input_ids=None,
        input_mask=None,
        flux_query_wavelength=None,
        flux_targets=None,
        output_attentions=False,
        output_hidden_states=False,
        return_dict=None,
    ):
        r"""
        Args:
            flux (`torch.FloatTensor` of shape `(batch_size, num_pixels)`):
                Normalised flux of each pixel token (see [`SpectraFMProcessor`]). NaN = missing.
            wavelength (`torch.FloatTensor` of shape `(batch_size, num_pixels)`):
                Vacuum wavelength of each pixel in Angstrom. Pixel order does not matter.
            observed_mask (`torch.Tensor` of shape `(batch_size, num_pixels)`, *optional*):
                1 for observed pixels, 0 for missing ones and padding. When omitted, pixels with finite flux and
                wavelength are observed.
            query_ids (`torch.LongTensor` of shape `(batch_size, num_queries)`, *optional*):
                Indices into `config.label_names` of the labels to predict; default: all labels, in order.
            labels (`torch.FloatTensor` of shape `(batch_size, num_queries)`, *optional*):
                Normalised targets for the queries; NaN = unknown (ignored by the loss).
            label_err (`torch.FloatTensor` of shape `(batch_size, num_queries)`, *optional*):
                Normalised 1-sigma target errors, added in quadrature to the predicted variance in the loss.
            input_values (`torch.FloatTensor` of shape `(batch_size, num_inputs)`, *optional*):
                Normalised non-spectra inputs (a known label, photometry), read as extra tokens. NaN = missing.
            input_ids (`torch.LongTensor` of shape `(batch_size, num_inputs)`, *optional*):
                Indices into `config.label_names + config.scalar_input_names` naming each input value.
            input_mask (`torch.Tensor` of shape `(batch_size, num_inputs)`, *optional*):
                1 for given inputs, 0 for padding.
            flux_query_wavelength (`torch.FloatTensor` of shape `(batch_size, num_flux_queries)`, *optional*):
                Masked-flux pretraining: wavelengths (Angstrom) of pixels held out of the input whose normalised
                flux the decoder also predicts (NaN = padding). Label answers are unchanged by them.
            flux_targets (`torch.FloatTensor` of shape `(batch_size, num_flux_queries)`, *optional*):
                The held-out normalised flux (NaN = ignored); its Gaussian NLL is added to the loss.
            output_attentions (`bool`, *optional*):
                Return encoder and decoder attention maps (runs the eager attention path).
            output_hidden_states (`bool`, *optional*):
                Return the encoder output, the key mask used and the decoder's last query states.
        """
        return_dict = True if return_dict is None else return_dict
        encoded, key_mask, enc_attn = self.encode(
            flux, wavelength, observed_mask, input_values, input_ids, input_mask, output_attentions
        )
        if query_ids is None:
            query_ids = torch.arange(len(self.config.label_names), device=flux.device).expand(flux.shape[0], -1)
        extra = None
        if flux_query_wavelength is not None:
            if flux_query_wavelength.dim() != 2 or flux_query_wavelength.shape[0] != flux.shape[0]:
                raise ValueError(f"flux_query_wavelength must be (batch, queries); got {tuple(flux_query_wavelength.shape)}")
            extra = self.flux_queries(flux_query_wavelength)
        states, dec_attn = self.decoder_states(encoded, key_mask, query_ids.long(), output_attentions, extra)
        mean, log_variance = self.answer(states)
        flux_mean = flux_log_variance = flux_loss = None
        if extra is not None:
            n_labels = query_ids.shape[1]
            mean, flux_mean = mean[:, :n_labels], mean[:, n_labels:]
            log_variance, flux_log_variance = log_variance[:, :n_labels], log_variance[:, n_labels:]
            if flux_targets is not None:
                if flux_targets.shape != flux_mean.shape:
                    raise ValueError(f"flux_targets has shape {tuple(flux_targets.shape)}, the flux queries "
                                     f"{tuple(flux_mean.shape)}")
                flux_loss = gaussian_nll(flux_mean, flux_log_variance, flux_targets.to(flux_mean.dtype))
        elif flux_targets is not None:
            raise ValueError("flux_targets needs flux_query_wavelength")
        loss = None
        if labels is not None:
            if labels.shape != mean.shape:
                raise ValueError(f"labels has shape {tuple(labels.shape)} but the queries give {tuple(mean.shape)}")
            loss = gaussian_nll(mean, log_variance, labels.to(mean.dtype), label_err)
        if flux_loss is not None:
            loss = flux_loss if loss is None else loss + flux_loss
        out = SpectraFMOutput(
            loss=loss,
            mean=mean,
            log_variance=log_variance,
            encoder_last_hidden_state=encoded if output_hidden_states else None,
            observed_mask=key_mask if output_hidden_states else None,
            decoder_last_hidden_state=states if output_hidden_states else None,
            encoder_attentions=enc_attn,
            attentions=dec_attn,
            masked_flux_mean=flux_mean,
            masked_flux_log_variance=flux_log_variance,
            masked_flux_loss=flux_loss,
        )
        return out if return_dict else out.to_tuple()


__all__ = ["SpectraFMPreTrainedModel", "SpectraFMModel", "SpectraFMOutput", "gaussian_nll", "wavelength_encoding"]
