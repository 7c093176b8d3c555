"""The real-data experiments (scripts/real_data.py) at toy scale on the committed 200-star Gaia XP subset, and the
pieces they added: gradient-boosted trees, photometry as input tokens, a fresh per-pixel model of median-divided
spectra, run reuse."""

import contextlib
import hashlib
import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from datasets import Dataset

from spectrafm_hf import SpectraFMProcessor
from spectrafm_hf.baselines import GradientBoostingBaseline
from spectrafm_hf.data import load_spectra_dataset
from spectrafm_hf.training.collator import SpectraCollator
from spectrafm_hf.training.run import build_model, ModelArguments

XP_DIR = REPO / "tests" / "fixtures" / "real_labelled" / "gaia_xp_apogee_dr17"
LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_M"]
PHOT = ["PHOT_G", "PHOT_BP", "PHOT_RP", "PHOT_J", "PHOT_H", "PHOT_K"]
COLUMNS = ["experiment", "model", "label", "split", "n", "bias", "rmse", "robust_scatter", "coverage68"]


def _script(path="scripts/real_data.py"):
    """A script of the repository (default: scripts/real_data.py) as a module."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_xp")
    buffer = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(buffer):
            assert _script().main([str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--output_dir",
                                   str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out, buffer.getvalue()


@pytest.fixture(scope="module")
def xp(tmp_path_factory):
    return load_spectra_dataset("gaia_xp_apogee", cache_dir=str(tmp_path_factory.mktemp("xp")), data_dir=str(XP_DIR),
                                label_names=LABELS + PHOT)


def test_tiny_preset_writes_every_experiment_model_label_and_split(tiny):
    out, log = tiny
    table = pd.read_csv(out / "results" / "real_data.csv")
    assert list(table.columns[: len(COLUMNS)]) == COLUMNS
    models = {e: set(g.model) for e, g in table.groupby("experiment")}
    assert models == {"xp_full": {"spectrafm", "mlp", "gbt", "ridge"},
                      "xp_fewshot": {"spectrafm_no_pretraining", "spectrafm", "spectrafm_decoder_l2sp",
                                     "spectrafm_no_l2sp", "spectrafm_lora", "spectrafm_all_weights",
                                     "spectrafm_helpers_only", "spectrafm_ridge_probe",
                                     "spectrafm_generative_shrink0.2", "scratch_nn", "ridge"},
                      "xp_multimodal": {"spectrafm", "spectrafm_photometry"}}
    assert set(table.split) == {"all", "feh_lt_-1", "feh_ge_-1", "giants", "dwarfs"}
    full = table[table.experiment == "xp_full"]
    assert set(full.label) == set(LABELS) and sorted(full.n_train.unique()) == [40, 155]
    few = table[table.experiment == "xp_fewshot"]
    assert set(few.label) == {"FE_H"} and sorted(few.draw.unique()) == [77, 78]
    filled = table[table.n > 0]
    assert np.isfinite(filled[["bias", "rmse", "robust_scatter", "coverage68"]].to_numpy(float)).all()
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert set(summary) >= {"xp_full", "xp_fewshot", "xp_multimodal", "data", "figures"}
    for path in summary["figures"].values():
        assert (out / "results" / path.split("/")[-1]).stat().st_size > 10_000
    # the test split sizes are the test stars inside the domain
    n_all = table[(table.split == "all") & (table.label == "FE_H")].n.unique()
    assert list(n_all) == [summary["data"]["test"]]


def test_fewshot_sees_no_metal_poor_star_and_no_test_star(tiny, xp):
    out, _ = tiny
    test_ids = set(xp["test"]["object_id"])
    for run in (out / "xp_fewshot").iterdir():
        if not run.name.startswith("spectrafm_no_pretraining"):
            continue
        info = json.loads((run / "final" / "training_info.json").read_text())
        assert info["data"]["train"] == 20 and info["data"]["labels"] == ["FE_H"]
    # the decoder fine-tune rehearses pretraining rows that carry Teff and logg only, never a star's [Fe/H]
    import datasets

    rehearsal = datasets.load_from_disk(str(out / "xp_fewshot" / "rehearsal_teff_logg"))
    assert len(rehearsal) == 8 and {"TEFF", "LOGG"} <= set(rehearsal.column_names)
    assert not {"FE_H", "ALPHA_M"} & set(rehearsal.column_names)
    run = out / "xp_fewshot" / "spectrafm_decoder_l2sp_draw77_masked_flux"
    info = json.loads((run / "final" / "training_info.json").read_text())
    assert info["data"]["train"] == 20 + 8 and info["data"]["helper_labels"] == ["TEFF", "LOGG"]
    # the script's selection rule, replayed: only stars with [Fe/H] > -1 from the train split
    script = _script()
    cfg = {"dataset": {"config": "gaia_xp_apogee", "data_dir": str(XP_DIR)}, "labels": LABELS, "photometry": PHOT,
           "domain": {"TEFF": [3000, 7000]}}
    train, val, test = script.load_splits(cfg)
    assert not set(train["object_id"]) & test_ids and not set(val["object_id"]) & test_ids
    assert (np.asarray(train["TEFF"]) < 7000).all() and np.isfinite(np.asarray(train["ALPHA_M"])).all()


def test_fewshot_recipe_keeps_the_pretrained_encoder(tiny):
    """The decoder fine-tune freezes encoder and embeddings and pulls the decoder toward its pretrained weights
    (L2-SP); the all-weights ablation trains the encoder, the no-L2-SP one has no penalty."""
    from spectrafm_hf import SpectraFMModel

    out, _ = tiny
    runs = out / "xp_fewshot"
    pretrained = SpectraFMModel.from_pretrained(runs / "pretrain_teff_logg_masked_flux" / "final").state_dict()
    for model, encoder_kept in (("spectrafm_decoder_l2sp", True), ("spectrafm_all_weights", False)):
        tuned = SpectraFMModel.from_pretrained(runs / f"{model}_draw77_masked_flux" / "final").state_dict()
        encoder = [k for k in pretrained if k.startswith("encoder.")]
        decoder = [k for k in pretrained if k.startswith("decoder.")]
        assert encoder and decoder
        same = [torch.equal(pretrained[k], tuned[k]) for k in encoder]
        assert all(same) if encoder_kept else not all(same), model
        assert not all(torch.equal(pretrained[k], tuned[k]) for k in decoder), model
    alpha = {m: json.loads((runs / f"{m}_draw77_masked_flux" / "final" / "training_info.json").read_text())
             ["config"]["model"]["l2sp_alpha"] for m in ("spectrafm_decoder_l2sp", "spectrafm_no_l2sp")}
    assert alpha == {"spectrafm_decoder_l2sp": 0.1, "spectrafm_no_l2sp": 0.0}


def test_fewshot_recommended_recipe_is_a_linear_probe_of_the_untouched_pretrained_model(tiny):
    """Row spectrafm of xp_fewshot (recipe v10's read-out on v11's pixels): the pretrained network, every weight
    unchanged, with a generative linear probe of [Fe/H] fitted on the draw's 20 stars that reads the embedding and the
    Teff and logg queries' decoder states (v9's read-out of the embedding alone is row spectrafm_generative_shrink0.2);
    every pretrained model's extrapolation check and validation [Fe/H] NLL are in the summary."""
    from spectrafm_hf import SpectraFMModel, SpectraFMPipeline

    out, _ = tiny
    runs = out / "xp_fewshot"
    pretrained = SpectraFMModel.from_pretrained(runs / "pretrain_teff_logg_masked_flux" / "final").state_dict()
    for draw in (77, 78):
        folder = runs / f"spectrafm_draw{draw}_masked_flux"
        pipe = SpectraFMPipeline.from_pretrained(folder / "final", device="cpu")
        assert all(torch.equal(v, pretrained[k]) for k, v in pipe.model.state_dict().items())
        assert pipe.label_names == ["TEFF", "LOGG", "FE_H"] and list(pipe.processor.linear_probes) == ["FE_H"]
        record = json.loads((folder / "linear_probe.json").read_text())
        assert record["probes"]["FE_H"]["n_fit"] == 20 and record["probes"]["FE_H"]["inputs"] == ["TEFF", "LOGG"]
        assert record["probes"]["FE_H"]["method"] == "generative" and record["probes"]["FE_H"]["alpha"] == 0.2
        assert record["probes"]["FE_H"]["features"] == "embedding+queries"
        assert len(pipe.processor.linear_probes["FE_H"]["weights"]) == 3 * pipe.model.config.hidden_size + 2
        v9 = json.loads((runs / f"spectrafm_generative_shrink0.2_draw{draw}_masked_flux" / "linear_probe.json")
                        .read_text())["probes"]["FE_H"]
        assert v9["features"] == "embedding" and v9["method"] == "generative" and v9["alpha"] == 0.2
        ridge = json.loads((runs / f"spectrafm_ridge_probe_draw{draw}_masked_flux" / "linear_probe.json").read_text())
        assert ridge["probes"]["FE_H"]["method"] == "ridge" and ridge["probes"]["FE_H"]["n_fit"] == 20
    selection = json.loads((out / "results" / "summary.json").read_text())["recipe_selection"]["xp_fewshot"]
    models = {"spectrafm", "spectrafm_decoder_l2sp", "spectrafm_no_l2sp", "spectrafm_lora", "spectrafm_all_weights",
              "spectrafm_helpers_only", "spectrafm_ridge_probe", "spectrafm_generative_shrink0.2"}
    nll = selection["validation_nll_rule"]["validation_fe_h_nll"]
    assert set(nll) == models and all(np.isfinite(v) for v in nll.values())
    # the extrapolation check: every recipe fitted again above the draw's cut, scored below it
    rmse = selection["extrapolation_fe_h_rmse"]
    assert set(rmse) == models and all(v > 0 for v in rmse.values())
    assert selection["lowest_extrapolation_rmse"] == min(rmse, key=rmse.get)
    for draw in (77, 78):
        cut = selection["cut_feh"][str(draw)]
        for model in ("spectrafm", "spectrafm_helpers_only"):
            folder = runs / f"{model}_draw{draw}_masked_flux_extrapolation_q0.3"
            if model == "spectrafm":  # the probe refitted on the 14 stars at or above the cut (30 % of 20 below)
                n_fit = json.loads((folder / "linear_probe.json").read_text())["probes"]["FE_H"]["n_fit"]
            else:
                n_fit = json.loads((folder / "final" / "training_info.json").read_text())["data"]["train"]
            assert n_fit == 14, (model, draw, n_fit)
        below = pd.read_csv(out / "predictions" /
                            f"xp_fewshot_spectrafm_draw{draw}_masked_flux_extrapolation_q0.3_validation_below_cut.csv")
        val = json.loads((runs / f"spectrafm_draw{draw}_masked_flux" / "linear_probe.json").read_text())
        assert 3 <= len(below) < val["validation_stars"] and np.isfinite(cut)


def test_each_experiment_reads_its_own_pixels(tiny):
    """xp_full reads the whole 343-pixel grid in interleaved subsets (every 3rd pixel at a random phase), its far-out
    flux softened at every star only (``xp_full.spectrafm``'s per-size keys); xp_fewshot's own ``spectrafm`` keys
    (recipe v11: the same interleaved pixels) reach its pretraining and fine-tunes, and a ``pixel_stride`` there would
    cut its rows to every k-th pixel."""
    out, _ = tiny
    full = SpectraFMProcessor.from_pretrained(out / "xp_full" / "n40" / "final")
    pre = SpectraFMProcessor.from_pretrained(out / "xp_fewshot" / "pretrain_teff_logg_masked_flux" / "final")
    tuned = SpectraFMProcessor.from_pretrained(out / "xp_fewshot" / "spectrafm_draw77_masked_flux" / "final")
    assert (full.pixel_subset_rule, len(full.reference_wavelength)) == ("interleaved", 343)
    assert (pre.pixel_subset_rule, len(pre.reference_wavelength)) == ("interleaved", 343)
    assert tuned.reference_wavelength == pre.reference_wavelength == full.reference_wavelength
    real_data = _script()
    cfg = real_data.load_preset(REPO / "scripts" / "configs" / "real_xp_tiny.yaml",
                                ["xp_fewshot.spectrafm={pixel_stride: 3, pixel_subset_rule: random}"])
    fewshot = real_data.experiment_cfg(cfg, "xp_fewshot")
    rules = (fewshot["spectrafm"]["pixel_subset_rule"], cfg["spectrafm"]["pixel_subset_rule"])
    assert rules == ("random", "interleaved")
    rows = Dataset.from_dict({"wavelength": [np.arange(343.0)], "flux": [np.ones(343)],
                              "ivar": [np.ones(343)]})
    assert len(real_data.fm_data(fewshot, rows)["wavelength"][0]) == 115
    assert len(real_data.fm_data(cfg, rows)["wavelength"][0]) == 343
    every = [SpectraFMProcessor.from_pretrained(r / "final") for r in (out / "xp_full").iterdir() if r.name != "n40"]
    assert [(p.flux_softening, p.clip_sigma, p.pixel_subset_rule) for p in every] == [(3.0, 20.0, "interleaved")]
    assert (full.flux_softening, full.clip_sigma) == (pre.flux_softening, pre.clip_sigma) == (None, 10.0)
    assert (tuned.flux_softening, tuned.clip_sigma) == (None, 10.0)


def test_all_stars_run_can_continue_the_teff_logg_pretraining(tmp_path):
    """--set xp_full.continue_pretraining=true: the every-star run starts from xp_fewshot's pretraining (which saw
    the Teff and logg of those same stars); a smaller size never does (it would learn from stars outside its subset)."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert _script().main([str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--output_dir", str(tmp_path),
                               "--experiments", "xp_full", "--set", "xp_full.continue_pretraining=true"]) == 0
    start = {}
    for run in (tmp_path / "xp_full").iterdir():
        info = json.loads((run / "final" / "training_info.json").read_text())
        start[run.name] = info["config"]["model"]["model_name_or_path"]
    pretraining = os.path.normpath(tmp_path / "xp_fewshot" / "pretrain_teff_logg_masked_flux" / "final")
    recorded = f"final#{hashlib.sha256(pretraining.encode()).hexdigest()[:8]}"  # training_info hides local paths
    n_train = int(pd.read_csv(tmp_path / "results" / "real_data.csv").n_train.max())
    assert start == {"n40": None, f"n{n_train}_from_teff_logg": recorded}


def test_multimodal_runs_continue_the_every_star_model_with_and_without_magnitudes(tiny):
    """xp_multimodal.continue_xp_full: both runs start from xp_full's every-star model (the comparison made at
    convergence); the photometry run's model gains the magnitudes as scalar inputs, the other does not."""
    out, _ = tiny
    n_train = int(pd.read_csv(out / "results" / "real_data.csv").n_train.max())
    start = os.path.normpath(out / "xp_full" / f"n{n_train}" / "final")
    recorded = f"final#{hashlib.sha256(start.encode()).hexdigest()[:8]}"  # training_info hides local paths
    inputs = {}
    for run in ("spectrafm", "spectrafm_photometry"):
        final = out / "xp_multimodal" / f"{run}_from_xp_full" / "final"
        info = json.loads((final / "training_info.json").read_text())
        assert info["config"]["model"]["model_name_or_path"] == recorded
        inputs[run] = json.loads((final / "config.json").read_text())["scalar_input_names"]
    assert inputs == {"spectrafm": [], "spectrafm_photometry": PHOT}


def test_reruns_reuse_trained_models(tiny):
    out, _ = tiny
    summary = (out / "results" / "summary.json").read_text()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        _script().main([str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--output_dir", str(out),
                        "--experiments", "xp_full"])
    log = buffer.getvalue()
    assert "training (" not in log and log.count("exists, skipped") == 2
    # the rows kept from the table (xp_fewshot's) and the re-made ones summarise to the same digits as a whole run
    assert (out / "results" / "summary.json").read_text() == summary
    with contextlib.redirect_stdout(io.StringIO()):  # a few-shot-only re-run keeps xp_full's figures in the summary
        _script().main([str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--output_dir", str(out),
                        "--experiments", "xp_fewshot"])
    assert (out / "results" / "summary.json").read_text() == summary
    # no draws: the pretraining alone (cached here), no rows, and the table and summary are left as they were
    table = (out / "results" / "real_data.csv").read_bytes()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert _script().main([str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--output_dir", str(out),
                               "--experiments", "xp_fewshot", "--set", "xp_fewshot.draws=[]"]) == 0
    assert "training (" not in buffer.getvalue() and "no result rows" in buffer.getvalue()
    assert (out / "results" / "real_data.csv").read_bytes() == table
    assert (out / "results" / "summary.json").read_text() == summary
    # a partial run replaces its own rows and keeps the others, and the largest run's figures
    before = pd.read_csv(out / "results" / "real_data.csv")
    largest_run_figures = {name: (out / "results" / name).read_bytes()
                           for name in ("xp_predicted_vs_apogee.png", "xp_calibration.png")}
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        _script().main([str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--output_dir", str(out),
                        "--experiments", "xp_full", "--sizes", "40"])
    assert buffer.getvalue().count("exists, skipped") == 1
    after = pd.read_csv(out / "results" / "real_data.csv")
    assert "recipe" in after.columns and len(after) == len(before)
    key = ["experiment", "model", "label", "split", "n_train", "draw"]
    assert after.sort_values(key)[key].astype(str).values.tolist() == \
        before.sort_values(key)[key].astype(str).values.tolist()
    for name, data in largest_run_figures.items():
        assert (out / "results" / name).read_bytes() == data, f"{name} redrawn from the 40-star run"


def test_jobs_run_the_preset_in_worker_processes_to_the_same_digits(tiny, tmp_path):
    """--jobs 2: each xp_full size's SpectraFM run and baselines, xp_fewshot and xp_multimodal run in worker
    processes (one torch thread each) and the table is then assembled from their caches: the same file as the
    one-process run's, with each unit's time in logs/jobs.json."""
    out, _ = tiny
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert _script().main([str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--output_dir",
                               str(tmp_path), "--jobs", "2"]) == 0
    assert (tmp_path / "results" / "real_data.csv").read_bytes() == (out / "results" / "real_data.csv").read_bytes()
    jobs = json.loads((tmp_path / "logs" / "jobs.json").read_text())
    assert jobs["jobs"] == 2 and set(jobs["units"]) == {
        "xp_full_40_spectrafm", "xp_full_40_baselines", "xp_full_all_spectrafm+xp_multimodal",
        "xp_full_all_baselines", "xp_fewshot"}  # xp_multimodal continues the every-star model: its worker makes it next
    assert all(u["exit_code"] == 0 for u in jobs["units"].values())
    # every unit trained in a worker: the assembling pass found each run and prediction cached
    # 18 runs and the 10 fine-tunes of the extrapolation check
    assert "training (" not in buffer.getvalue() and buffer.getvalue().count("exists, skipped") == 28


def test_a_failed_job_names_itself_and_writes_no_table(tmp_path):
    args = [str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--output_dir", str(tmp_path), "--jobs", "2",
            "--experiments", "xp_fewshot", "--set", "xp_fewshot.pretrain.labels=[NO_SUCH_LABEL]"]
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit, match="xp_fewshot failed"):
        _script().main(args)
    assert not (tmp_path / "results" / "real_data.csv").exists()
    assert "NO_SUCH_LABEL" in (tmp_path / "logs" / "xp_fewshot.log").read_text()


def test_baseline_parameters_can_differ_by_training_set_size():
    pick = _script().per_size_params
    params = {"hidden": [16], "epochs_by_size": [3, 2], "ema_decay_by_size": [0, 0.999]}
    assert pick(params, 1) == {"hidden": [16], "epochs": 2, "ema_decay": 0.999}
    assert pick(params, 0) == {"hidden": [16], "epochs": 3, "ema_decay": 0}
    assert params["epochs_by_size"] == [3, 2]  # the preset's own dict is left as it was


def test_seed_mixture_benchmark_scores_run_folders_on_the_validation_split(tiny, tmp_path):
    """benchmarks/xp_seed_mixture.py --split validation with a run's final/ folder: the validation stars are predicted
    once and cached beside the run, a run mixed with itself scores as itself, and each label's NLL is the Gaussian
    NLL of the cached predictions (how an equal-compute ensemble was weighed against one longer run)."""
    import shutil

    from scipy.stats import norm

    out, _ = tiny
    n_train = int(pd.read_csv(out / "results" / "real_data.csv").n_train.max())
    final = tmp_path / "run" / "final"
    shutil.copytree(out / "xp_full" / f"n{n_train}" / "final", final)
    preset = REPO / "scripts" / "configs" / "real_xp_tiny.yaml"
    bench = _script("benchmarks/xp_seed_mixture.py")
    with contextlib.redirect_stdout(io.StringIO()):
        assert bench.main(["--config", str(preset), "--split", "validation", "--runs", f"spectrafm={final},{final}",
                           "--out", str(tmp_path / "scores.json")]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    cached = pd.read_csv(tmp_path / "run" / "validation_predictions.csv")
    real_data = _script()
    _, val, _ = real_data.load_splits(real_data.load_preset(preset, []))
    assert scores["split"] == "validation" and scores["n_validation"] == len(val) == len(cached)
    assert cached.object_id.astype(str).tolist() == [str(i) for i in val["object_id"]]
    seed, mixture = scores["models"]["spectrafm"]["seeds"], scores["models"]["spectrafm"]["mixture"]
    assert seed[0] == seed[1] == mixture
    truth = np.asarray(val["FE_H"], float)
    nll = -norm.logpdf(truth, cached.FE_H_pred, cached.FE_H_sigma).mean()
    assert seed[0]["FE_H"]["nll"] == pytest.approx(nll, abs=1e-4)
    assert seed[0]["mean_nll"] == pytest.approx(np.mean([seed[0][n]["nll"] for n in LABELS]), abs=1e-4)


def test_fewshot_seeds_benchmark_scores_row_spectrafm_as_the_table_does(tiny, tmp_path):
    """benchmarks/xp_fewshot_seeds.py on the tiny preset's run given twice: each "seed" is scored as the table scores
    row spectrafm, and a mixture of a run with itself is that run."""
    out, _ = tiny
    bench = _script("benchmarks/xp_fewshot_seeds.py")
    with contextlib.redirect_stdout(io.StringIO()):
        assert bench.main(["--config", str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--runs", str(out),
                           str(out), "--scratch", str(out / "results" / "real_data.csv"), "--summaries",
                           str(out / "results" / "summary.json"), str(out / "results" / "summary.json"),
                           "--out", str(tmp_path / "seeds.json")]) == 0
    result = json.loads((tmp_path / "seeds.json").read_text())["mean_of_draws"]
    table = pd.read_csv(out / "results" / "real_data.csv")
    poor = table[(table.experiment == "xp_fewshot") & (table.label == "FE_H") & (table.split == "feh_lt_-1")]
    poor = poor.groupby("model").rmse.mean()
    assert result["metal_poor_rmse_seeds"] == [pytest.approx(poor["spectrafm"], abs=1e-4)] * 2
    assert result["metal_poor_rmse_mixture"] == result["metal_poor_rmse_seeds"][0]
    assert result["scratch_nn_metal_poor_rmse"] == pytest.approx(poor["scratch_nn"], abs=1e-4)
    assert result["ratio_seeds"][0] == pytest.approx(poor["scratch_nn"] / poor["spectrafm"], rel=1e-3)
    summary = json.loads((out / "results" / "summary.json").read_text())
    check = summary["recipe_selection"]["xp_fewshot"]["extrapolation_fe_h_rmse"]["spectrafm"]
    assert result["check_seeds"] == [pytest.approx(check, abs=1e-4)] * 2   # the rule's score, read per seed


def test_readouts_benchmark_scores_the_presets_read_outs_as_the_table_and_the_check_do(tiny, tmp_path):
    """benchmarks/xp_fewshot_readouts.py on the tiny preset's run given twice: its embedding+queries read-out at
    shrink 0.2 is row spectrafm and its embedding read-out row spectrafm_generative_shrink0.2, scored on the test
    split as the table scores them and on the check as the summary does; the choice follows the check alone."""
    out, _ = tiny
    bench = _script("benchmarks/xp_fewshot_readouts.py")
    with contextlib.redirect_stdout(io.StringIO()):
        assert bench.main(["--config", str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--runs", str(out),
                           str(out), "--scratch", str(out / "results" / "real_data.csv"), "--shrinks", "0.2", "1",
                           "--out", str(tmp_path / "readouts.json")]) == 0
    result = json.loads((tmp_path / "readouts.json").read_text())
    table = pd.read_csv(out / "results" / "real_data.csv")
    poor = table[(table.experiment == "xp_fewshot") & (table.label == "FE_H") & (table.split == "feh_lt_-1")]
    poor = poor.groupby("model").rmse.mean()
    check = json.loads((out / "results" / "summary.json").read_text())["recipe_selection"]["xp_fewshot"]
    check = check["extrapolation_fe_h_rmse"]
    assert set(result["candidates"]) == {"embedding_shrink0.2", "embedding_shrink1", "embedding+queries_shrink0.2",
                                         "embedding+queries_shrink1"}
    for name, row in (("embedding+queries_shrink0.2", "spectrafm"),
                      ("embedding_shrink0.2", "spectrafm_generative_shrink0.2")):
        got = result["candidates"][name]
        assert got["test_feh_lt_-1"] == [pytest.approx(poor[row], abs=2e-3)] * 2, name
        assert got["check"] == [pytest.approx(check[row], abs=2e-3)] * 2, name
        assert got["ratio"][0] == pytest.approx(poor["scratch_nn"] / got["test_feh_lt_-1"][0], rel=2e-3)
    means = {k: v["check_mean"] for k, v in result["candidates"].items()}
    assert result["chosen"] == min(means, key=means.get)
    # the seed mean of one run given twice is that run's read-out, scored the same way
    mean = result["seed_mean"]["candidates"]
    assert set(mean) == set(result["candidates"])
    for name, got in mean.items():
        single = result["candidates"][name]
        assert got["check"] == pytest.approx(single["check"][0], abs=1e-4), name
        assert got["test_feh_lt_-1"] == pytest.approx(single["test_feh_lt_-1"][0], abs=1e-4), name
        assert got["test_all"] == pytest.approx(single["test_all"][0], abs=1e-4), name
    assert result["seed_mean"]["lowest_check"] == min(mean, key=lambda k: mean[k]["check"])


def test_seed_mixture_keeps_the_spread_between_runs():
    mix = _script().seed_mixture
    a = pd.DataFrame({"FE_H_pred": [0.0, 1.0], "FE_H_sigma": [0.1, 0.3]})
    b = pd.DataFrame({"FE_H_pred": [0.2, 1.0], "FE_H_sigma": [0.1, 0.4]})
    m = mix([a, b], ["FE_H"])
    assert m["FE_H_pred"].tolist() == pytest.approx([0.1, 1.0])
    # within-run variance (0.1^2; mean of 0.09 and 0.16) + between-run variance (0.1^2; 0)
    assert m["FE_H_sigma"].tolist() == pytest.approx([np.sqrt(0.02), np.sqrt(0.125)])


def test_gradient_boosting_learns_a_known_function_and_picks_trees_on_validation(rng):
    X = rng.normal(size=(600, 5))
    y = 2 * X[:, 0] + np.sin(X[:, 1]) + rng.normal(0, 0.1, 600)
    X[rng.random(X.shape) < 0.05] = np.nan  # missing pixels are handled natively
    model = GradientBoostingBaseline(max_iter=200).fit(X[:400], y[:400], X[400:500], y[400:500])
    mean, sigma = model.predict(X[500:])
    rmse = np.sqrt(np.mean((mean - y[500:]) ** 2))
    assert rmse < 0.6 * np.std(y) and 1 <= model.n_trees_ <= 200
    assert np.allclose(sigma, model.sigma_) and 0.05 < model.sigma_ < 1.0
    # a model told to stop at 1 tree is much worse: the chosen count matters
    one = GradientBoostingBaseline(max_iter=1).fit(X[:400], y[:400])
    assert np.sqrt(np.mean((one.predict(X[500:])[0] - y[500:]) ** 2)) > 1.5 * rmse


def test_clip_sigma_reaches_a_fresh_processor(xp):
    """`clip_sigma` (a training argument) sets which normalised pixels a fresh model treats as missing."""
    train = xp["train"].with_format("numpy")
    row = train[0]
    lost = {}
    for clip in (10.0, 0.5):
        args = ModelArguments(config_overrides={"hidden_size": 8, "encoder_num_heads": [2, 2],
                                                "decoder_num_heads": [2, 2, 1], "context_length": 343},
                              clip_sigma=clip,
                              flux_normalization="per_pixel", divide_by_median=True)
        _, proc = build_model(args, train, LABELS)
        assert proc.clip_sigma == clip
        lost[clip] = int((~proc.normalize_arrays(row["wavelength"], row["flux"], np.isfinite(row["flux"]))[1]).sum())
    assert lost[0.5] > lost[10.0]


def test_flux_softening_keeps_far_out_pixels_readable(xp, tmp_path):
    """`flux_softening` s compresses normalised flux as s*asinh(x/s) before the clip: pixels tens of sigma out (the
    red end of cool stars' XP spectra under per-pixel scaling) are read, not lost; flux near the centre is unchanged."""
    train = xp["train"].with_format("numpy")
    procs = {}
    for soft, clip in ((None, 10.0), (3.0, 20.0)):
        args = ModelArguments(config_overrides={"hidden_size": 8, "encoder_num_heads": [2, 2],
                                                "decoder_num_heads": [2, 2, 1], "context_length": 343},
                              flux_softening=soft, clip_sigma=clip, flux_normalization="per_pixel",
                              divide_by_median=True)
        procs[soft] = build_model(args, train, LABELS)[1]
    linear, soft = procs[None], procs[3.0]
    assert soft.flux_softening == 3.0 and linear.flux_softening is None
    rows = [train[i] for i in range(len(train))]
    read = {k: [p.normalize_arrays(r["wavelength"], r["flux"], np.isfinite(r["flux"])) for r in rows]
            for k, p in procs.items()}
    lost = {k: sum(int((~g).sum()) for _, g in v) for k, v in read.items()}
    assert lost[None] > 0 and lost[3.0] < lost[None] / 10
    x, x_soft = (np.concatenate([x for x, _ in read[k]]) for k in (None, 3.0))
    both = np.isfinite(x) & np.isfinite(x_soft)
    assert np.allclose(x_soft[both], 3.0 * np.arcsinh(x[both] / 3.0), atol=1e-5)
    near = both & (np.abs(x) < 0.5)
    assert near.any() and np.allclose(x_soft[near], x[near], atol=0.01)
    assert 3.0 * np.arcsinh(10.0 / 3.0) < np.nanmax(np.abs(x_soft)) <= 20.0  # pixels beyond the old clip are read
    soft.save_pretrained(tmp_path)
    from spectrafm_hf import SpectraFMProcessor

    assert SpectraFMProcessor.from_pretrained(tmp_path).flux_softening == 3.0
    with pytest.raises(ValueError, match="flux_softening"):
        SpectraFMProcessor(flux_softening=0.0)


def test_photometry_tokens_reach_the_model(xp):
    train = xp["train"].with_format("numpy")
    model_args = ModelArguments(config_overrides={"hidden_size": 8, "encoder_num_heads": [2, 2],
                                                  "encoder_ffn_dims": [8, 8], "decoder_num_heads": [2, 2, 1],
                                                  "decoder_ffn_dims": [8, 8, 8], "head_dims": [8],
                                                  "context_length": 343, "scalar_input_names": PHOT},
                                flux_normalization="per_pixel", divide_by_median=True)
    model, proc = build_model(model_args, train, LABELS)
    g = np.asarray(train["PHOT_G"], float)
    assert proc.scalar_centers["PHOT_G"] == pytest.approx(np.nanmedian(g)) and proc.scalar_scales["PHOT_G"] > 0
    assert proc.flux_normalization == "per_pixel" and len(proc.pixel_centers) == 343
    assert proc.divide_by_median
    ids = [(model.config.label_names + model.config.scalar_input_names).index(n) for n in PHOT]
    coll = SpectraCollator(proc, LABELS, list(range(4)), input_label_names=PHOT, input_label_prob=1.0,
                           input_ids=ids, deterministic=True)
    batch = coll([train[i] for i in range(8)])
    assert batch["input_values"].shape == (8, 6) and batch["input_mask"].all()
    expected = (np.asarray(train["PHOT_K"][:8], float) - proc.scalar_centers["PHOT_K"]) / proc.scalar_scales["PHOT_K"]
    assert np.allclose(batch["input_values"][:, 5].numpy(), expected, atol=1e-5)
    model.eval()
    with torch.no_grad():
        a = model(**{k: v for k, v in batch.items() if k not in ("labels", "label_err")}).mean
        shifted = dict(batch, input_values=batch["input_values"] + 3.0)
        b = model(**{k: v for k, v in shifted.items() if k not in ("labels", "label_err")}).mean
    assert not torch.allclose(a, b)  # the magnitudes change the prediction
    with pytest.raises(ValueError, match="PHOT_X"):
        build_model(ModelArguments(config_overrides={"scalar_input_names": ["PHOT_X"]}), train, LABELS)


def test_fewshot_pretraining_masked_flux_is_an_option_with_its_own_runs(tmp_path):
    """xp_fewshot.pretrain.masked_flux_fraction: the pretraining also predicts held-out flux. It and the fine-tunes
    started from it have their own run names, so flipping the option in one output folder never reuses a run (or
    cached predictions) of the other kind; 0 gives the plain pretraining."""
    for fraction in (0.25, 0):
        with contextlib.redirect_stdout(io.StringIO()):
            assert _script().main([str(REPO / "scripts" / "configs" / "real_xp_tiny.yaml"), "--output_dir",
                                   str(tmp_path), "--experiments", "xp_fewshot", "--set",
                                   f"xp_fewshot.pretrain.masked_flux_fraction={fraction}", "--set",
                                   "xp_fewshot.ablations={spectrafm_no_l2sp: {learning_rate: 0.003}}", "--set",
                                   "xp_fewshot.draws=[77]"]) == 0
    runs = tmp_path / "xp_fewshot"
    for suffix, fraction in (("_masked_flux", 0.25), ("", 0)):
        info = json.loads((runs / f"pretrain_teff_logg{suffix}" / "final" / "training_info.json").read_text())
        assert info["config"]["data"]["masked_flux_fraction"] == fraction
        tuned = json.loads((runs / f"spectrafm_no_l2sp_draw77{suffix}" / "final" / "training_info.json").read_text())
        assert tuned["config"]["data"]["masked_flux_fraction"] == 0  # fine-tunes are not masked
        start = os.path.normpath(runs / f"pretrain_teff_logg{suffix}" / "final")
        recorded = f"final#{hashlib.sha256(start.encode()).hexdigest()[:8]}"  # local paths are hidden
        assert tuned["config"]["model"]["model_name_or_path"] == recorded
        probe = json.loads((runs / f"spectrafm_draw77{suffix}" / "linear_probe.json").read_text())
        assert probe["start"] == recorded  # the recommended recipe: a probe of the same pretraining
        assert (tmp_path / "predictions" / f"xp_fewshot_spectrafm_draw77{suffix}.csv").is_file()
