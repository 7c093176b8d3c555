"""Which parts of a SpectraFM model to train: the paper's freezing options."""

from __future__ import annotations

FREEZE_CHOICES = ("decoder", "encoder", "encoder_block_2", "embeddings")


def freeze(model, parts) -> int:
    """Set ``requires_grad=False`` on the named parts; returns the number of parameters still trainable.

    ``decoder``: the cross-attention blocks, the output MLP and both outputs (the paper's ``freeze_decoder``);
    ``encoder``: every encoder block; ``encoder_block_2``: the second encoder block only (the paper's stage-3
    ``freeze_encoder_second_layer``); ``embeddings``: the token embedding table.
    """
    parts = [parts] if isinstance(parts, str) else list(parts or [])
    bad = [p for p in parts if p not in FREEZE_CHOICES]
    if bad:
        raise ValueError(f"unknown freeze option(s) {bad}; choose from {FREEZE_CHOICES}")
    base = getattr(model, "base_model", model)
    groups = {
        "decoder": [base.decoder, base.head, base.mean_out, base.log_variance_out],
        "encoder": [base.encoder],
        "encoder_block_2": [base.encoder[1]] if len(base.encoder) > 1 else [],
        "embeddings": [base.embedding_layer],
    }
    for part in parts:
        for module in groups[part]:
            for p in module.parameters():
                p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
