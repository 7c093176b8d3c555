"""The analytic FLOP count behind the benchmarks' MFU figures (benchmarks/bench_model.py), checked against torch's
own count of the matrix products a forward pass runs."""

import sys

import pytest
import torch
from conftest import REPO
from torch.utils.flop_counter import FlopCounterMode

from spectrafm_hf import SpectraFMConfig, SpectraFMModel

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_model import forward_macs  # noqa: E402


@pytest.mark.parametrize("n_tokens,n_queries", [(96, 1), (200, 5)])
def test_forward_flops_counted_analytically_match_torch(n_tokens, n_queries):
    cfg = SpectraFMConfig(hidden_size=64, encoder_num_heads=(4, 2), encoder_ffn_dims=(128, 64),
                          decoder_num_heads=(4, 2, 1), decoder_ffn_dims=(128, 64, 32), head_dims=[64, 32])
    model = SpectraFMModel(cfg).eval()
    model.set_attn_implementation("eager")  # torch's counter does not see inside the fused CPU attention kernel
    flux, wave = torch.randn(3, n_tokens), 15100 + 1800 * torch.rand(3, n_tokens)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(flux, wave, query_ids=torch.arange(n_queries).expand(3, -1))
    counted = counter.get_total_flops() / 3  # per spectrum: matrix products only
    analytic = 2 * forward_macs(cfg, n_tokens, n_queries)
    elementwise = 2 * 2 * n_tokens * cfg.hidden_size  # the embedding's scale and shift, which torch does not count
    assert counted == pytest.approx(analytic - elementwise, rel=1e-3)
