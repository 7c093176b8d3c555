"""scripts/gpu/xp_full_gpu.py as a CPU dry run: packed splits -> variants side by side -> predictions -> summary."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_M"]
TINY = {"hidden_size": 8, "encoder_num_heads": [2, 2], "encoder_ffn_dims": [16, 16], "decoder_num_heads": [2, 2, 1],
        "decoder_ffn_dims": [16, 16, 8], "head_dims": [16, 8]}


def packed_splits(path, sizes=(64, 16, 12), pixels=115):
    """A file in pack's format (what `xp_full_gpu.py pack` writes from the real XP splits), from random spectra."""
    rng = np.random.default_rng(0)
    out = {"labels": np.array(LABELS)}
    for name, n in zip(("train", "validation", "test"), sizes):
        labels = np.stack([rng.uniform(4000, 6500, n), rng.uniform(1, 5, n), rng.uniform(-2, 0.4, n),
                           rng.uniform(-0.1, 0.4, n)], 1).astype(np.float32)
        out[f"{name}_wavelength"] = np.linspace(3360, 10200, pixels, dtype=np.float32)
        out[f"{name}_flux"] = (1 + 0.1 * rng.standard_normal((n, pixels)) + labels[:, 2:3] * 0.05).astype(np.float32)
        out[f"{name}_ivar"] = np.full((n, pixels), 1e4, np.float32)
        out[f"{name}_object_id"] = np.array([f"{name}{i}" for i in range(n)])
        out[f"{name}_labels"] = labels
        out[f"{name}_label_err"] = np.full_like(labels, 0.01)
    np.savez_compressed(path, **out)
    return path


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    import yaml

    tmp = tmp_path_factory.mktemp("xp_gpu")
    data = packed_splits(tmp / "xp.npz")
    cfg = {"base_preset": "scripts/configs/real_xp_cpu.yaml", "budget_s": 30, "predict_reserve_s": 5,
           "probe_steps": 12, "step_safety": 0.85, "min_steps": 1, "threads_per_variant": 1,
           "variants": {"a": {"config_overrides": TINY}, "b": {"config_overrides": TINY, "training": {"seed": 1}}},
           "ensembles": {"a+b": ["a", "b"]}}
    config = tmp / "gpu.yaml"
    config.write_text(yaml.safe_dump(cfg))
    script = str(REPO / "scripts/gpu/xp_full_gpu.py")
    proc = subprocess.run([sys.executable, script, "launch", str(config), "--data", str(data),
                           "--out", str(tmp / "out")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = tmp / "summary.json"
    proc = subprocess.run([sys.executable, script, "summarise", str(config), "--data", str(data), "--out",
                           str(tmp / "out"), "--summary", str(summary)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "out", json.loads(summary.read_text())


def test_every_variant_trains_inside_its_budget_and_predicts_both_splits(launched):
    import yaml

    out, _ = launched
    budget = yaml.safe_load((REPO / "scripts/configs/real_xp_cpu.yaml").read_text())["xp_full"]["steps"][-1]
    assert json.loads((out / "launch.json").read_text())["exit"] == {"a": 0, "b": 0}
    for name in ("a", "b"):
        info = json.loads((out / name / "run.json").read_text())
        assert 1 <= info["steps_done"] <= info["max_steps"] <= budget  # the preset's budget caps the schedule
        assert info["total_seconds"] < 30 + 30  # the deadline holds (a margin for the last evaluation and saving)
        assert info["parameters"] < 20000  # the variant's architecture, not the preset's
        for split, n in (("validation", 16), ("test", 12)):
            pred = pd.read_csv(out / name / f"predictions_{split}.csv")
            assert len(pred) == n and (pred[[f"{k}_sigma" for k in LABELS]] > 0).all().all()
    # the two seeds are two models
    a, b = (pd.read_csv(out / n / "predictions_test.csv") for n in ("a", "b"))
    assert not np.allclose(a["TEFF_pred"], b["TEFF_pred"])


def test_summary_scores_the_test_split_and_the_seed_mixture(launched):
    out, summary = launched
    assert set(summary["variants"]) == {"a", "b"} and summary["ensembles"]["a+b"]["members"] == ["a", "b"]
    for entry in (*summary["variants"].values(), summary["ensembles"]["a+b"]):
        for name in LABELS:
            assert entry["test"][name]["robust_scatter"] > 0 and 0 <= entry["test"][name]["coverage68"] <= 1
