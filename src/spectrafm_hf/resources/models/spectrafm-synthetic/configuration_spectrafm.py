"""SpectraFM model configuration."""

from transformers import PretrainedConfig

DEFAULT_LABEL_NAMES = ["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"]


class SpectraFMConfig(PretrainedConfig):
    r"""
    Configuration of a SpectraFM model (Koblischke & Bovy 2024). The defaults are the paper's network.

    A spectrum is a set of pixel tokens: each observed pixel becomes ``act(e * x + b) + PE(wavelength)`` where ``x``
    is its normalised flux, ``e``/``b`` one shared learned "flux" embedding pair and ``PE`` a sinusoidal encoding
    of the wavelength. A post-LN Transformer encoder reads the tokens; a decoder of cross-attention-only blocks
    answers one query per requested label (queries never attend to each other) with a mean and a log-variance.

    Args:
        hidden_size (`int`, *optional*, defaults to 256):
            Width of every token embedding and attention block.
        encoder_num_heads (`list[int]`, *optional*, defaults to `[16, 8]`):
            Attention heads of each encoder (self-attention) block; one entry per block.
        encoder_ffn_dims (`list[int]`, *optional*, defaults to `[2048, 1024]`):
            Feed-forward width of each encoder block.
        decoder_num_heads (`list[int]`, *optional*, defaults to `[16, 8, 4]`):
            Attention heads of each decoder (cross-attention-only) block.
        decoder_ffn_dims (`list[int]`, *optional*, defaults to `[2048, 1024, 512]`):
            Feed-forward width of each decoder block.
        head_dims (`list[int]`, *optional*, defaults to `[2048, 1024, 512, 256]`):
            Widths of the output MLP between the decoder and the mean / log-variance outputs.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the token embedding, feed-forward layers and output MLP.
        hidden_dropout (`float`, *optional*, defaults to 0.05):
            Dropout on the residual branches (attention output, feed-forward output) and in the output MLP.
        attention_dropout (`float`, *optional*, defaults to 0.05):
            Attention dropout rate in training; where it acts is set by `attention_dropout_mode`.
        attention_dropout_mode (`str`, *optional*, defaults to `"keys"`):
            ``"keys"``: each key (per spectrum and head, shared by all queries) is masked out before the softmax with
            probability `attention_dropout` (DropKey, Li et al. 2023); the learned extra key/value slot is never
            dropped. It only changes the key mask, so the fused attention kernels still run (2.5x faster training
            steps on CPU than ``"probabilities"``). ``"probabilities"``: dropout on the attention probabilities
            after the softmax, as the paper's ``nn.MultiheadAttention(dropout=...)``; it forces the unfused
            attention path that materialises every attention map. Both are off in evaluation.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            LayerNorm epsilon (post-LN blocks).
        add_bias_kv (`bool`, *optional*, defaults to `True`):
            Append one learned key and value to every attention (the paper's ``add_bias_kv``): every query can
            always attend somewhere, so a fully masked spectrum gives finite outputs.
        context_length (`int`, *optional*, defaults to 512):
            Number of pixel tokens the model reads at once. Longer spectra are covered by several pixel subsets.
        label_names (`list[str]`, *optional*, defaults to `["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"]`):
            The labels the decoder can be queried for (``query_ids`` index this list). Each also has an input-token
            embedding, so known labels can be given as non-spectra inputs.
        scalar_input_names (`list[str]`, *optional*, defaults to `[]`):
            Extra non-spectra inputs (e.g. photometry ``["G", "BP_RP"]``) that can be given as input tokens but
            are never predicted. ``input_ids`` index ``label_names + scalar_input_names``.
        wavelength_offset (`float`, *optional*, defaults to 15000.0):
            Angstrom subtracted from the (vacuum) wavelength before encoding.
        wavelength_range (`float`, *optional*, defaults to 2000.0):
            Angstrom the offset wavelength is divided by: ``lambda_n = (lambda - offset) / range``.
        wavelength_encoding_scale (`float`, *optional*, defaults to 1000.0):
            Highest angular frequency of the encoding per unit ``lambda_n`` (the paper's 1000: shortest period
            2*pi*range/scale = 12.6 A).
        wavelength_encoding_base (`float`, *optional*, defaults to 10000.0):
            Geometric base of the frequencies: ``PE[2i] = sin(scale * lambda_n * base**(-2i/hidden_size))``,
            ``PE[2i+1] = cos(...)``.
        log_variance_bounds (`list[float]`, *optional*, defaults to `[-15.0, 10.0]`):
            Clamp of the predicted log-variance (normalised label units), for numerical safety.
        embedding_init_bound (`float`, *optional*, defaults to 0.02778):
            Token embeddings are initialised U(-bound, bound). The default equals the paper's Xavier bound on its
            7520-row table, so a fresh model starts like the paper's.

    Example:
        >>> from spectrafm_hf import SpectraFMConfig, SpectraFMModel
        >>> config = SpectraFMConfig()  # the paper's network
        >>> model = SpectraFMModel(config)
        >>> round(model.num_parameters() / 1e6, 2)
        8.02
    """

    model_type = "spectrafm"

    def __init__(
        self,
        # transformer
        hidden_size=256,
        encoder_num_heads=(16, 8),
        encoder_ffn_dims=(2048, 1024),
        decoder_num_heads=(16, 8, 4),
        decoder_ffn_dims=(2048, 1024, 512),
        head_dims=(2048, 1024, 512, 256),
        hidden_act="gelu",
        hidden_dropout=0.05,
        attention_dropout=0.05,
        attention_dropout_mode="keys",
        layer_norm_eps=1e-5,
        add_bias_kv=True,
        context_length=512,
        # what the model reads and answers
        label_names=None,
        scalar_input_names=None,
        # wavelength encoding (Angstrom, vacuum)
        wavelength_offset=15000.0,
        wavelength_range=2000.0,
        wavelength_encoding_scale=1000.0,
        wavelength_encoding_base=10000.0,
        # output and init
        log_variance_bounds=(-15.0, 10.0),
        embedding_init_bound=0.02778,
        **kwargs,
    ):
        found = kwargs.pop("model_type", self.model_type)
        if found != self.model_type:
            raise ValueError(f"SpectraFMConfig: this config is for model_type {found!r}, not {self.model_type!r}")
        self.hidden_size = int(hidden_size)
        self.encoder_num_heads = [int(h) for h in encoder_num_heads]
        self.encoder_ffn_dims = [int(d) for d in encoder_ffn_dims]
        self.decoder_num_heads = [int(h) for h in decoder_num_heads]
        self.decoder_ffn_dims = [int(d) for d in decoder_ffn_dims]
        self.head_dims = [int(d) for d in head_dims]
        self.hidden_act = hidden_act
        self.hidden_dropout = float(hidden_dropout)
        self.attention_dropout = float(attention_dropout)
        self.attention_dropout_mode = str(attention_dropout_mode)
        self.layer_norm_eps = float(layer_norm_eps)
        self.add_bias_kv = bool(add_bias_kv)
        self.context_length = int(context_length)
        self.label_names = list(DEFAULT_LABEL_NAMES if label_names is None else label_names)
        self.scalar_input_names = list(scalar_input_names or [])
        self.wavelength_offset = float(wavelength_offset)
        self.wavelength_range = float(wavelength_range)
        self.wavelength_encoding_scale = float(wavelength_encoding_scale)
        self.wavelength_encoding_base = float(wavelength_encoding_base)
        self.log_variance_bounds = [float(b) for b in log_variance_bounds]
        self.embedding_init_bound = float(embedding_init_bound)
        super().__init__(**kwargs)
        self._validate()

    def _validate(self):
        def fail(msg):
            raise ValueError(f"SpectraFMConfig: {msg}")

        if self.hidden_size <= 0 or self.hidden_size % 2:
            fail(f"hidden_size must be a positive even number (sin/cos pairs), got {self.hidden_size}")
        for part in ("encoder", "decoder"):
            heads, ffn = getattr(self, f"{part}_num_heads"), getattr(self, f"{part}_ffn_dims")
            if not heads:
                fail(f"{part}_num_heads needs at least one block")
            if len(heads) != len(ffn):
                fail(f"{part}_num_heads has {len(heads)} blocks but {part}_ffn_dims has {len(ffn)}")
            for h in heads:
                if h <= 0 or self.hidden_size % h:
                    fail(f"hidden_size {self.hidden_size} is not divisible by {part} head count {h}")
            if any(d <= 0 for d in ffn):
                fail(f"{part}_ffn_dims must be positive, got {ffn}")
        if any(d <= 0 for d in self.head_dims):
            fail(f"head_dims must be positive, got {self.head_dims}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.attention_dropout_mode not in ("keys", "probabilities"):
            fail(f"attention_dropout_mode must be 'keys' or 'probabilities', got {self.attention_dropout_mode!r}")
        if self.context_length <= 0:
            fail(f"context_length must be positive, got {self.context_length}")
        if not self.label_names:
            fail("label_names must name at least one label")
        names = self.label_names + self.scalar_input_names
        if len(set(names)) != len(names):
            fail(f"label_names + scalar_input_names must be unique, got {names}")
        if self.wavelength_range <= 0:
            fail(f"wavelength_range must be positive (Angstrom), got {self.wavelength_range}")
        lo, hi = self.log_variance_bounds
        if not lo < hi:
            fail(f"log_variance_bounds must be increasing, got {self.log_variance_bounds}")

    @property
    def token_type_names(self):
        """Rows of the token embedding table: the shared flux token, then every label, then scalar inputs."""
        return ["[flux]"] + self.label_names + self.scalar_input_names


__all__ = ["SpectraFMConfig"]
