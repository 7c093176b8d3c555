"""The `spectrafm` command on the committed fixtures (run in-process through cli.main, and once as a real
console script)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TESTS, TINY

from hub_fixtures import fake_hub, hub_cache  # noqa: F401

from spectrafm_hf.cli import main

FIXTURES = TESTS / "fixtures" / "apogee"


def test_predict_a_folder_with_a_broken_file_among_good_ones(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    (data / "broken.fits").write_bytes((FIXTURES / "apStar-dr17-2M19485057+5005279.fits").read_bytes()[:5000])
    out = tmp_path / "labels.csv"
    code = main(["predict", str(data), "--model", str(TINY), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1  # partial success: the table is written, the failure reported
    assert "FAILED" in err and "broken.fits" in err and "1 files failed" in err
    table = pd.read_csv(out)
    assert set(table["source"].map(lambda p: Path(p).name)) == {p.name for p in FIXTURES.iterdir()}
    for col in ("TEFF", "TEFF_err", "FE_H", "FE_H_err", "n_pixels", "flag", "hdu", "row", "object_id"):
        assert col in table.columns
    assert table["TEFF"].notna().all() and (table["n_pixels"] > 1000).all()


def test_predict_resume_skips_done_files(tmp_path, capsys):
    out = tmp_path / "labels.parquet"
    first = FIXTURES / "apVisit-r13-5095-55844-128.fits"
    assert main(["predict", str(first), "--model", str(TINY), "-o", str(out)]) == 0
    assert main(["predict", str(FIXTURES), "--model", str(TINY), "-o", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "1 already done" in err
    table = pd.read_parquet(out)
    assert table["source"].nunique() == 4 and (table["source"] == str(first)).sum() == 1


def test_predict_files_sharing_forward_passes_match_each_file_alone(tmp_path):
    """Files are predicted together (their spectra share forward passes); every row must equal that file's own."""
    together = tmp_path / "together.csv"
    assert main(["predict", str(FIXTURES), "--model", str(TINY), "-o", str(together), "--quiet"]) == 0
    table = pd.read_csv(together)
    for path in sorted(FIXTURES.iterdir()):
        alone = tmp_path / f"{path.stem}.csv"
        assert main(["predict", str(path), "--model", str(TINY), "-o", str(alone), "--quiet"]) == 0
        mine, theirs = table[table["source"] == str(path)].reset_index(drop=True), pd.read_csv(alone)
        assert len(mine) == len(theirs) >= 1
        for col in ("TEFF", "LOGG", "FE_H", "FE_H_err", "n_pixels"):
            assert np.allclose(mine[col], theirs[col], rtol=1e-5, atol=1e-6), (path.name, col)


def test_resume_knows_a_file_done_under_another_spelling_of_its_path(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data)
    out = tmp_path / "labels.csv"
    first = sorted(data.iterdir())[0]
    assert main(["predict", str(first), "--model", str(TINY), "-o", str(out), "--quiet"]) == 0  # absolute path
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "./data/", "--model", str(TINY), "-o", str(out), "--resume", "--quiet"]) == 0
    assert "1 already done" in capsys.readouterr().err
    table = pd.read_csv(out)
    assert len(table) == len(list(data.iterdir())) and table["source"].map(lambda p: Path(p).resolve()).is_unique


def test_predict_fits_output_has_units(tmp_path):
    from astropy.io import fits

    out = tmp_path / "labels.fits"
    assert main(["predict", str(FIXTURES / "apVisit-r13-9518-57729-104.fits"), "--model", str(TINY),
                 "-o", str(out), "--labels", "TEFF", "FE_H"]) == 0
    with fits.open(out) as hdul:
        cols = hdul[1].columns
        units = dict(zip(cols.names, cols.units))
        assert units["TEFF"] == "K" and units["TEFF_err"] == "K" and units["FE_H"] == "dex"
        assert "LOGG" not in cols.names and len(hdul[1].data) == 1


def test_nothing_readable_or_no_model_is_exit_code_two(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope*.fits"), "--model", str(TINY)]) == 2
    assert main(["predict", str(FIXTURES), "--model", str(tmp_path / "no-model")]) == 2
    assert "cannot load model" in capsys.readouterr().err


def test_attention_plot_and_info(tmp_path, capsys):
    png = tmp_path / "att.png"
    assert main(["attention", str(FIXTURES / "apVisit-r13-5095-55844-128.fits"), "--model", str(TINY),
                 "--label", "FE_H", "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["info", str(TINY)]) == 0
    out = capsys.readouterr().out
    assert "TEFF, LOGG, O_FE, MG_FE, FE_H" in out and "parameters:" in out


def test_console_script_help_reads_well():
    exe = Path(sys.executable).with_name("spectrafm")
    if not exe.exists():
        pytest.skip("console script not installed")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for command in ("predict", "attention", "synth", "finetune", "evaluate", "info", "push", "install"):
        assert command in res.stdout
    res = subprocess.run([str(exe), "predict", "--help"], capture_output=True, text=True, timeout=120)
    assert "--resume" in res.stdout and "exit" not in res.stderr.lower()
    res = subprocess.run([str(exe), "frobnicate"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2


def test_synth_then_evaluate(tmp_path, capsys):
    import json

    out = tmp_path / "obs.parquet"
    assert main(["synth", "--instrument", "apogee", "--n", "12", "--observed", "--seed", "3", "-o", str(out)]) == 0
    table = pd.read_parquet(out)
    assert len(table) == 12 and len(table["flux"].iloc[0]) == 7514 and table["FE_H_err"].gt(0).all()
    rvs = tmp_path / "rvs.parquet"
    assert main(["synth", "--instrument", "gaia_rvs", "--n", "5", "--snr", "100", "-o", str(rvs)]) == 0
    assert len(pd.read_parquet(rvs)["flux"].iloc[0]) == 2401
    capsys.readouterr()
    assert main(["evaluate", "--model", str(TINY), "--data", str(out), "--labels", "TEFF", "FE_H",
                 "-o", str(tmp_path / "pred.csv")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["FE_H"]["n"] == 12 and metrics["TEFF"]["rmse"] > 0
    assert "FE_H_true" in pd.read_csv(tmp_path / "pred.csv").columns


def test_install_the_default_model_then_automodel_finds_it_offline(hub_cache, capsys):  # noqa: F811
    from transformers import AutoModel

    from spectrafm_hf import SpectraFMModel

    assert main(["install"]) == 0  # the embedded spectrafm-base -> the (temporary) HF cache
    assert "installed" in capsys.readouterr().out
    assert any(hub_cache.glob("models--spectrafm-base/snapshots/*/model.safetensors"))
    model = AutoModel.from_pretrained("spectrafm-base")
    assert isinstance(model, SpectraFMModel) and model.config.hidden_size == 128


def test_push_a_model_folder(fake_hub, capsys):  # noqa: F811
    assert main(["push", str(TINY), "astro/tiny"]) == 0
    assert "pushed" in capsys.readouterr().out
    assert "model.safetensors" in fake_hub.files("astro/tiny") and "README.md" in fake_hub.files("astro/tiny")


def test_finetune_command_from_a_yaml(tmp_path, capsys):
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(f"""output_dir: {tmp_path / 'ft'}
model_name_or_path: {TINY}
target_labels: [FE_H]
freeze: [decoder, encoder_block_2]
dataset_config: observed_apogee
dataset_kwargs: {{n_train: 12, n_validation: 4, n_test: 4, seed: 2}}
dataset_cache_dir: {tmp_path / 'data'}
pixel_range: [4107, 4619]
max_steps: 2
per_device_train_batch_size: 4
eval_strategy: "no"
save_strategy: "no"
use_cpu: true
report_to: []
""")
    assert main(["finetune", str(cfg)]) == 0
    assert (tmp_path / "ft" / "final" / "model.safetensors").is_file()
    assert "FE_H" in capsys.readouterr().out
