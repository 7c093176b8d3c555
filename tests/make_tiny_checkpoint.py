"""Regenerate tests/fixtures/tiny-spectrafm (a ~10 kB random-weight pipeline for the offline suite).

    python tests/make_tiny_checkpoint.py
    python benchmarks/reliability_stats.py tests/fixtures/tiny-spectrafm --n-fit 400 --n-test 400

(the second line stores the S/N range and embedding statistics that tests/test_data_safety_labels.py needs)
"""

from pathlib import Path

import torch

from spectrafm_hf import SpectraFMConfig, SpectraFMModel, SpectraFMPipeline, SpectraFMProcessor

TINY_CONFIG = dict(
    hidden_size=8,
    encoder_num_heads=[2, 2],
    encoder_ffn_dims=[16, 8],
    decoder_num_heads=[2, 2, 1],
    decoder_ffn_dims=[16, 8, 8],
    head_dims=[16, 8],
    context_length=64,
)
# DR17 label medians / MAD-stds of the paper's sample (PAPER_FACTS section 2), in label order.
LABEL_CENTERS = [4702.521, 2.478376, 0.0876477, 0.0670321, -0.158940]
LABEL_SCALES = [544.0086, 1.307946, 0.0836237, 0.0848680, 0.287299]


def make_tiny_pipeline(seed: int = 0) -> SpectraFMPipeline:
    torch.manual_seed(seed)
    model = SpectraFMModel(SpectraFMConfig(**TINY_CONFIG))
    processor = SpectraFMProcessor(
        label_centers=LABEL_CENTERS,
        label_scales=LABEL_SCALES,
        flux_center=0.95,
        flux_scale=0.05,
        context_length=TINY_CONFIG["context_length"],
        wavelength_coverage=[[15100.0, 17000.0]],
    )
    return SpectraFMPipeline(model, processor, device="cpu")


if __name__ == "__main__":
    out = Path(__file__).parent / "fixtures" / "tiny-spectrafm"
    make_tiny_pipeline().save_pretrained(out)
    print("wrote", out, sorted(p.name for p in out.iterdir()))
