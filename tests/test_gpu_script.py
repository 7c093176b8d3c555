"""The GPU run (scripts/gpu/paper_scale.py) as a CPU dry run at toy scale, and its output contract."""

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts" / "gpu"))
import paper_scale  # noqa: E402

COLUMNS = ["model", "split", "n", "bias", "mae", "rmse", "robust_scatter", "coverage68", "coverage95"]
MB = 1_000_000  # transformers' "15MB" is 15 * 10**6 bytes


def run_tiny(out, *flags):
    """The tiny preset in a fresh interpreter where datasets, astropy and scipy cannot be imported (the GPU image
    has no datasets or astropy; scipy is not promised either)."""
    args = [str(REPO / "scripts/configs/paper_scale_tiny.yaml"), "--output_dir", str(out), *flags]
    code = ("import sys, runpy\n"
            "for m in ('datasets', 'astropy', 'scipy'): sys.modules[m] = None\n"
            f"sys.argv = ['paper_scale.py', *{args!r}]\n"
            f"runpy.run_path({str(REPO / 'scripts/gpu/paper_scale.py')!r}, run_name='__main__')\n")
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, time.time() - t, proc.stdout


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    return run_tiny(tmp_path_factory.mktemp("gpu") / "paper_scale_tiny")


def test_dry_run_writes_one_complete_folder(dry_run):
    out, seconds, stdout = dry_run
    for name in ("config.json", "preprocessor_config.json", "training_info.json", "results.csv", "results.json",
                 "predictions.csv", "run.log", "paper_scale_config.yaml", "modeling_spectrafm.py"):
        assert (out / name).is_file(), name
    shards = list(out.glob("*.safetensors"))
    assert shards and all(p.stat().st_size <= 15 * MB for p in shards)
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))  # the atomic write left nothing behind
    record = json.loads((out / "results.json").read_text())
    for stage in ("stage1", "stage2", "stage3"):
        assert record["stages"][stage]["steps"] > 0 and record["stages"][stage]["spectra_per_s"] > 0, stage
    assert record["stages"]["scratch_nn"]["steps"] > 0 and record["errors"] == {}
    assert record["total_seconds"] < record["budget_s"]
    assert record["data"]["validation_feh_min"] > -1.0 and record["data"]["stage3_feh_min"] > -1.0
    # the window is <= context_length, so the in-run evaluation reads what the pipeline reads
    assert record["pipeline_check"]["max_abs_diff_feh"] < 1e-3
    info = json.loads((out / "training_info.json").read_text())
    assert info["recipe"] == "scripts/gpu/paper_scale.py" and info["stages"]["stage1"]["steps"] > 0
    assert "wrote" in stdout and "pipeline check" in (out / "run.log").read_text()


def test_dry_run_results_table(dry_run):
    out = dry_run[0]
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == COLUMNS
    assert {"spectrafm_stage1", "spectrafm_stage2", "spectrafm_stage3", "scratch_nn"} <= set(table.model)
    mp = table[(table.model == "spectrafm_stage3") & (table.split == "feh_lt_-1")]
    assert int(mp.n.iloc[0]) > 10 and np.isfinite(mp.rmse.iloc[0])
    record = json.loads((out / "results.json").read_text())
    ratio = record["goals"]["metal_poor_rmse_ratio_scratch_over_stage3"]["value"]
    scratch = table[(table.model == "scratch_nn") & (table.split == "feh_lt_-1")].rmse.iloc[0]
    assert ratio == pytest.approx(scratch / mp.rmse.iloc[0], rel=1e-4)  # the CSV keeps 6 digits
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == record["data"]["test"] and "spectrafm_stage3_FE_H_pred" in preds


def test_a_spent_budget_still_writes_every_output(tmp_path):
    # 1 s: every stage's time box is already over when it starts; each stops at once and the folder is complete
    out = run_tiny(tmp_path / "spent", "--budget_s", "1")[0]
    record = json.loads((out / "results.json").read_text())
    assert all(record["stages"][s]["stopped_by"] == "time" for s in ("stage1", "stage2", "stage3"))
    assert record["test_subsampled"]["reason"] == "evaluation time box"
    assert list(pd.read_csv(out / "results.csv").columns) == COLUMNS and list(out.glob("*.safetensors"))


def test_dry_run_checkpoint_loads_with_the_pipeline(dry_run):
    from spectrafm_hf import SpectraFMPipeline, Spectrum, synth

    pipe = SpectraFMPipeline.from_pretrained(dry_run[0], device="cpu")
    wl = synth.get_instrument("apogee").wavelength
    flux = synth.emulate(synth.sample_labels(2, seed=3))
    table = pipe.predict([Spectrum(wavelength=wl, flux=f) for f in flux])
    assert np.isfinite(table["FE_H"]).all() and pipe.label_names == list(synth.LABEL_NAMES)


def test_paper_size_network_saves_in_15_mb_shards(tmp_path):
    import torch

    from spectrafm_hf import SpectraFMConfig, SpectraFMModel

    model = SpectraFMModel(SpectraFMConfig())  # the paper's network, as the GPU preset trains it
    model.save_pretrained(tmp_path, max_shard_size="15MB")
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert len(shards) >= 2 and all(p.stat().st_size <= 15 * MB for p in shards)
    back = SpectraFMModel.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))


def test_clock_shares_the_time_left():
    t0 = time.time()
    clock = paper_scale.Clock(100, 10, {"stage1": 2, "stage2": 1, "stage3": 1, "scratch_nn": 0, "evaluation": 0},
                              t0=t0)
    d1 = clock.deadline("stage1")
    assert d1 - t0 == pytest.approx(45, abs=1)  # half of the 90 s left
    d2 = clock.deadline("stage2")
    assert d2 - time.time() == pytest.approx(0.5 * (t0 + 90 - time.time()), abs=1)
    with pytest.raises(ValueError, match="missing stages"):
        paper_scale.Clock(100, 10, {"stage1": 1})
    with pytest.raises(ValueError, match="positive sum"):
        paper_scale.Clock(100, 10, dict.fromkeys(paper_scale.STAGES, 0))


def test_bad_config_is_named(tmp_path):
    with pytest.raises(SystemExit, match="config file not found"):
        paper_scale.main([str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\nbudget_s: 10\n")
    with pytest.raises(SystemExit, match="missing keys"):
        paper_scale.main([str(bad)])


def test_gpu_preset_is_the_paper_network_within_the_budget():
    import yaml

    cfg = yaml.safe_load((REPO / "scripts/configs/paper_scale_gpu.yaml").read_text())
    assert cfg["model"]["config_overrides"] == {} and cfg["budget_s"] <= 540 and cfg["bf16"] is True
    assert cfg["fe_pixel_range"] == [4107, 4619] and cfg["stage3"]["n_stars"] == 100
    assert "FE_H" in cfg["stage3"]["labels"] and {"TEFF", "LOGG"} <= set(cfg["stage3"]["labels"])
    assert set(cfg["fractions"]) == set(paper_scale.STAGES)
