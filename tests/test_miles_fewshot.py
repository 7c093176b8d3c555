"""The MILES few-shot experiment (scripts/miles_fewshot.py) at toy scale, and the optical generator behind it
(spectrafm_hf.synth.optical): evaluator, degradation, normalisation, the converter's input checks. Nothing here
downloads: the emulator is built from random weights; the test of the real converted file skips without it."""

import contextlib
import importlib.util
import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from spectrafm_hf.data.real import load_miles_arrays
from spectrafm_hf.synth import optical
from spectrafm_hf.synth.optical import (LABEL_NAMES, convert_bossbrain, degrade, load_optical_emulator,
                                        pseudo_continuum_normalize, random_optical_emulator, save_optical_emulator,
                                        synthetic_miles_dataset)

MILES_DIR = REPO / "tests" / "fixtures" / "real_labelled" / "miles"
COLUMNS = ["experiment", "model", "label", "split", "n", "bias", "rmse", "robust_scatter", "coverage68", "mae",
           "coverage95", "draw"]


def _script():
    spec = importlib.util.spec_from_file_location("miles_fewshot", REPO / "scripts" / "miles_fewshot.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture(scope="module")
def miles():
    return load_miles_arrays(MILES_DIR)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("miles_tiny")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert _script().main([str(REPO / "scripts" / "configs" / "miles_fewshot_tiny.yaml"), "--output_dir",
                                   str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


# ------------------------------------------------------------------------------------------------ the experiment
def test_tiny_preset_writes_every_model_split_and_draw(tiny):
    table = pd.read_csv(tiny / "results" / "real_data_miles.csv")
    assert list(table.columns) == COLUMNS
    assert set(table.experiment) == {"miles_fewshot"} and set(table.label) == {"FE_H"}
    assert set(table.model) == {"spectrafm", "spectrafm_no_pretraining", "scratch_nn", "ridge",
                                "spectrafm_synthetic_only", "spectrafm_paper_recipe", "spectrafm_affine",
                                "spectrafm_linear_probe", "spectrafm_generative_probe", "spectrafm_inverse_affine",
                                "spectrafm_finetuned_inverse_affine"}
    assert set(table.split) == {"all", "feh_lt_-1", "feh_ge_-1", "giants", "dwarfs"}
    assert set(table.draw) == {77, 78}
    assert len(table) == 10 * 5 * 2 + 5  # the paper-recipe ablation runs on draw 77 only
    summary = json.loads((tiny / "results" / "miles_summary.json").read_text())
    assert {"fe_h", "result", "data", "figure", "goal"} <= set(summary)
    assert summary["fe_h"]["spectrafm"]["feh_lt_-1"]["draws"] == 2
    assert np.isfinite(summary["result"]["metal_poor_rmse_ratio"])
    assert (tiny / "results" / "miles_fewshot_fe_h.png").stat().st_size > 1000
    assert (tiny / "pretrain_synthetic" / "final" / "config.json").is_file()
    info = {m: json.loads((tiny / f"{m}_draw77" / "final" / "training_info.json").read_text())
            for m in ("spectrafm", "spectrafm_no_pretraining")}
    # the pretrained model is fine-tuned with the decoder and second encoder block frozen, the fresh one fully
    assert info["spectrafm"]["trainable_parameters"] < info["spectrafm"]["total_parameters"]
    # the recommended recipe: helper labels, and rehearsal on the experiment's own synthetic spectra (8 + 8 rows)
    assert info["spectrafm"]["config"]["model"]["target_labels"] == ["TEFF", "LOGG", "FE_H"]
    assert info["spectrafm"]["config"]["data"]["rehearsal"]["data_dir"].startswith("train")  # local paths hashed
    assert info["spectrafm"]["data"]["train"] == 16
    # a recipe's own budget (the recommended one's `steps`) beats the experiment's, which the others keep
    assert info["spectrafm"]["config"]["training"]["max_steps"] == 3
    assert info["spectrafm_no_pretraining"]["config"]["training"]["max_steps"] == 2
    paper = json.loads((tiny / "spectrafm_paper_recipe_draw77" / "final" / "training_info.json").read_text())
    assert paper["data"]["labels"] == ["FE_H"] and not paper["data"]["helper_labels"]
    assert not paper["config"]["data"]["rehearsal"]
    # spectrafm_affine: the pretrained network itself, with a [Fe/H] slope and zero point fitted on the draw's stars
    affine = json.loads((tiny / "spectrafm_affine_draw77" / "preprocessor_config.json").read_text())["label_affine"]
    assert set(affine) == {"FE_H"} and affine["FE_H"][0] != 1.0
    assert not (tiny / "spectrafm_affine_draw77" / "final").exists()
    assert set(summary["pretrained_synthetic_validation"]) == {"TEFF", "LOGG", "FE_H"}
    sel = summary["recipe_selection"]["validation_loss_by_labels"]  # recipes compared on validation loss
    assert set(sel["TEFF LOGG FE_H"]) == {"spectrafm"} and set(sel["FE_H"]) == {"spectrafm_paper_recipe"}
    # the linear probe (no training loss) is compared with them on the validation [Fe/H] NLL
    models = {"spectrafm", "spectrafm_paper_recipe", "spectrafm_linear_probe", "spectrafm_generative_probe",
              "spectrafm_affine", "spectrafm_inverse_affine", "spectrafm_finetuned_inverse_affine"}
    nll = summary["recipe_selection"]["validation_nll_rule"]["validation_fe_h_nll"]
    assert set(nll) == models
    # the extrapolation check (the rule of the recommended recipe): every recipe refitted above the draw's cut
    rmse = summary["recipe_selection"]["extrapolation_fe_h_rmse"]
    assert set(rmse) == models and summary["recipe_selection"]["lowest_extrapolation_rmse"] == min(rmse, key=rmse.get)
    assert set(summary["recipe_selection"]["cut_feh"]) == {"77", "78"}
    for draw in (77, 78):  # the 0.3 quantile of 8 stars lies between the 3rd and the 4th: 5 stars at or above it
        refit = json.loads((tiny / f"spectrafm_linear_probe_draw{draw}_extrapolation_q0.3" / "linear_probe.json")
                           .read_text())
        assert refit["probes"]["FE_H"]["n_fit"] == 5
        assert (tiny / f"spectrafm_draw{draw}_extrapolation_q0.3" / "final" / "config.json").is_file()
    probe = json.loads((tiny / "spectrafm_linear_probe_draw78" / "linear_probe.json").read_text())
    assert probe["probes"]["FE_H"]["n_fit"] == 8 and probe["probes"]["FE_H"]["inputs"] == ["TEFF", "LOGG", "FE_H"]
    # the inverse affine lines: on the pretrained network, and on row spectrafm's own fine-tunes (not trained again)
    for model, network in (("spectrafm_inverse_affine", "pretrain_synthetic/final"),
                           ("spectrafm_finetuned_inverse_affine", "spectrafm_draw77/final")):
        folder = tiny / f"{model}_draw77"
        assert not (folder / "final").exists()
        line = json.loads((folder / "preprocessor_config.json").read_text())["label_affine"]["FE_H"]
        weights, trained = (load_file(str(f / "model.safetensors")) for f in (folder, tiny / network))
        assert weights.keys() == trained.keys() and all(torch.equal(weights[k], trained[k]) for k in weights)
        assert line[0] > 0 and line != affine["FE_H"]
    assert (tiny / "spectrafm_draw78_extrapolation_q0.3" / "final").is_dir()
    assert not (tiny / "spectrafm_finetuned_inverse_affine_draw78_extrapolation_q0.3" / "final").exists()
    fresh = info["spectrafm_no_pretraining"]
    assert fresh["trainable_parameters"] == fresh["total_parameters"]


def test_tiny_preset_reuses_its_runs(tiny):
    before = {p: p.stat().st_mtime_ns for p in (tiny / "predictions").glob("*.csv")}
    with contextlib.redirect_stdout(io.StringIO()):
        assert _script().main([str(REPO / "scripts" / "configs" / "miles_fewshot_tiny.yaml"), "--output_dir",
                               str(tiny)]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_the_old_label_affine_switch_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match=r"spectrafm_affine: \{calibrate: direct\}"):
        _script().main([str(REPO / "scripts" / "configs" / "miles_fewshot_tiny.yaml"), "--output_dir", str(tmp_path),
                        "--set", "fewshot.label_affine=true"])
    assert not any(tmp_path.iterdir())  # no run folder, no table


def test_fewshot_sets_keep_metal_poor_and_test_stars_out_of_selection(miles):
    import yaml

    cfg = yaml.safe_load((REPO / "scripts" / "configs" / "miles_fewshot_tiny.yaml").read_text())
    cfg["dataset"]["data_dir"] = str(MILES_DIR)
    sets = _script().miles_sets(cfg, [77, 78])
    val = sets["val"]
    split = {o: s for s, idx in miles.splits.items() for o in miles.object_id[idx]}
    assert len(val) >= 1 and all(split[o] == "validation" for o in val["object_id"])
    assert (np.asarray(val["FE_H"]) > -1).all()
    for draw in (77, 78):
        few, test = sets[draw]
        assert (np.asarray(few["FE_H"]) > -1).all() and all(split[o] == "train" for o in few["object_id"])
        assert not set(few["object_id"]) & set(test["object_id"])
        assert not set(val["object_id"]) & set(test["object_id"])
        assert (np.asarray(test["FE_H"]) < -1).any()  # the metal-poor stars are tested
        f = np.asarray(test.with_format("numpy")["flux"][0])
        assert f.shape == (4300,) and 0.8 < np.median(f) < 1.1  # MILES is pseudo-continuum normalised


def test_wavelength_range_cuts_miles_and_synthetic_pixels_alike(miles):
    import yaml

    script = _script()
    cfg = yaml.safe_load((REPO / "scripts" / "configs" / "miles_fewshot_tiny.yaml").read_text())
    cfg["dataset"]["data_dir"] = str(MILES_DIR)
    whole = script.synthetic_spec(cfg)
    assert whole == cfg["synthetic"]  # caches made without a range stay valid
    cfg["dataset"]["wavelength_range"] = [4000, 5800]
    a, flux, good, keep = script.miles_tables(cfg)
    cols = (miles.wavelength >= 4000) & (miles.wavelength <= 5800)
    np.testing.assert_array_equal(a.wavelength, miles.wavelength[cols])
    assert flux.shape == (len(miles), cols.sum()) == good.shape
    # normalised over the range itself, as the synthetic spectra made on that grid are
    ok = miles.mask[:, cols] & (miles.flux[:, cols] != 0)
    expected, _ = pseudo_continuum_normalize(miles.flux[:, cols], ok, **cfg["normalize"])
    np.testing.assert_allclose(np.where(good, flux, 0), np.where(good, expected, 0))
    assert np.array_equal(script.miles_sets(cfg, [77])["wavelength"], a.wavelength)
    assert script.synthetic_spec(cfg) == {**whole, "wavelength_range": [4000, 5800]}  # a new range: new spectra
    cfg["dataset"]["wavelength_range"] = [8000, 9000]
    with pytest.raises(ValueError, match="holds no MILES pixel"):
        script.miles_tables(cfg)


# ------------------------------------------------------------------------------------------------ the generator
def test_evaluator_matches_the_mlp_formula_and_switches_networks_by_teff():
    em = random_optical_emulator(hidden=8, seed=3)
    a = em.arrays
    labels = optical.sample_optical_labels(5, seed=1)
    labels[:, 0] = [3600.0, 4099.0, 4100.0, 4949.0, 5800.0]
    flux = em(labels)
    assert list(em.model_index(labels[:, 0])) == [0, 0, 1, 1, 2]

    def lrelu(z):
        return np.where(z > 0, z, 0.01 * z)

    for i, m in enumerate(em.model_index(labels[:, 0])):
        s = (labels[i] - a["x_min"][m]) / (a["x_max"][m] - a["x_min"][m]) - 0.5
        h = lrelu(a["W1"][m] @ lrelu(a["W0"][m] @ s + a["b0"][m]) + a["b1"][m])
        np.testing.assert_allclose(flux[i], a["W2"][m] @ h + a["b2"][m], atol=2e-5)
    with pytest.raises(ValueError, match="22 columns"):
        em(labels[:, :3])


def test_sampled_labels_stay_in_the_emulator_box():
    lab = optical.sample_optical_labels(2000, seed=0)
    assert lab.shape == (2000, len(LABEL_NAMES))
    assert lab[:, 0].min() >= 3500 and lab[:, 0].max() <= 6000 and lab[:, 1].max() <= 3.5
    assert lab[:, 2].min() >= -2.5 and lab[:, 2].max() <= 0.5 and np.abs(lab[:, 3:]).max() <= 0.6
    poor, rich = lab[:, 2] < -1.5, lab[:, 2] > 0
    mg = LABEL_NAMES.index("mgm")
    assert lab[poor, mg].mean() > lab[rich, mg].mean() + 0.2  # the alpha trend


def test_abundance_offsets_shift_one_element_and_reject_unknown_names():
    base = optical.sample_optical_labels(2000, seed=0)
    shifted = optical.sample_optical_labels(2000, seed=0, abundance_offsets={"nm": 0.5})
    n = LABEL_NAMES.index("nm")
    assert abs(shifted[:, n].mean() - 0.5) < 0.05 and abs(base[:, n].mean()) < 0.02  # giants' dredged-up nitrogen
    assert shifted[:, n].max() <= 0.6  # still clipped to the emulator box
    others = [j for j in range(len(LABEL_NAMES)) if j != n]
    np.testing.assert_array_equal(shifted[:, others], base[:, others])  # the same draws for everything else
    with pytest.raises(ValueError, match="unknown.*'feh'"):
        optical.sample_optical_labels(3, abundance_offsets={"feh": 0.1})


def test_giant_branch_prior_puts_teff_on_the_rgb_relation_and_keeps_everything_else():
    from spectrafm_hf.synth.priors import DEFAULT_PRIOR

    box = optical.sample_optical_labels(4000, seed=0)
    lab = optical.sample_optical_labels(4000, seed=0, giant_branch={"teff_sigma": 200.0, "box_fraction": 0.25})
    np.testing.assert_array_equal(lab[:, 2:], box[:, 2:])  # [M/H] and every abundance drawn as before
    kept = (lab[:, :2] == box[:, :2]).all(axis=1)
    assert 0.2 < kept.mean() < 0.3  # the box's rows
    assert lab[:, 0].min() >= 3500 and lab[:, 0].max() <= 6000 and lab[:, 1].min() >= 0 and lab[:, 1].max() <= 3.5
    a, b, c, d = DEFAULT_PRIOR.rgb_teff
    g, mh = lab[~kept, 1], lab[~kept, 2]
    offset = lab[~kept, 0] - (a + b * g + c * np.maximum(g - 2.0, 0.0) ** 2 + d * mh)  # written out: the test's own
    mid = (offset > -400) & (offset < 400)  # the box truncates the tails
    assert abs(np.median(offset)) < 30 and 150 < 1.4826 * np.median(np.abs(offset[mid])) < 250
    poor = mh < -1.5  # metal-poor giants are hotter at the same logg, as on real branches
    assert np.median(lab[~kept][poor, 0] - (a + b * g[poor])) > 400
    box_offset = box[:, 0] - (a + b * box[:, 1] + c * np.maximum(box[:, 1] - 2.0, 0.0) ** 2 + d * box[:, 2])
    assert np.mean(np.abs(box_offset) < 400) < 0.5 < np.mean(np.abs(offset) < 400)
    np.testing.assert_array_equal(optical.sample_optical_labels(4000, seed=0, giant_branch=None), box)
    for bad in ({"teff_sigma": 0.0}, {"teff_sigma": 200.0, "box_fraction": 1.0}, {"sigma": 200.0}):
        with pytest.raises(ValueError, match="giant_branch needs teff_sigma"):
            optical.sample_optical_labels(3, giant_branch=bad)


def test_degrade_moves_air_to_vacuum_and_broadens_to_the_target_fwhm(miles):
    wave_air = np.arange(3500.0, 7600.0, 0.5)
    line_air = 5500.0
    flux = 1.0 - 0.8 * np.exp(-0.5 * ((wave_air - line_air) / 0.01) ** 2)  # a delta-like line
    target = np.arange(5480.0, 5520.0, 0.05)  # vacuum, fine sampling to measure the profile
    out = degrade(flux, wave_air, target, fwhm=2.5, model_fwhm=0.0, snr=None)[0]
    from spectrafm_hf.spectrum import air_to_vacuum

    depth = 1 - out
    centre = np.sum(target * depth) / np.sum(depth)
    assert abs(centre - air_to_vacuum(line_air)) < 0.05  # ~1.5 A redder than in air
    half = target[depth > depth.max() / 2]
    assert abs((half[-1] - half[0]) - 2.5) < 0.6  # FWHM 2.5 A (within the 0.5 A model sampling)
    noisy = degrade(np.ones((200, wave_air.size)), wave_air, miles.wavelength, snr=50, seed=1)
    assert noisy.shape == (200, 4300)
    assert 0.015 < noisy.std() < 0.025  # S/N 50 per pixel
    with pytest.raises(ValueError, match="outside"):
        degrade(flux, wave_air, np.array([3400.0, 3600.0]))


def test_pseudo_continuum_removes_a_flux_calibrated_sed(miles):
    wl = miles.wavelength
    rng = np.random.default_rng(0)
    lines = np.ones(wl.size)
    for c in rng.uniform(wl[0], wl[-1], 150):
        lines *= 1 - 0.5 * np.exp(-0.5 * ((wl - c) / 1.1) ** 2)
    sed = 3e-15 * (wl / 5000.0) ** -2.0 * np.exp(-((wl - 6000) / 3000) ** 2)
    norm, cont = pseudo_continuum_normalize(np.stack([sed * lines, lines]))
    # the same result with and without the SED, to 3 % inside and 6 % within half a window of the ends
    np.testing.assert_allclose(norm[0, 75:-75], norm[1, 75:-75], rtol=0.03)
    np.testing.assert_allclose(norm[0], norm[1], rtol=0.06)
    assert 0.97 < np.median(norm[1]) < 1.03
    good = np.ones(wl.size, bool)
    good[-300:] = False
    masked, _ = pseudo_continuum_normalize((sed * lines)[None], good[None])
    assert np.isfinite(masked).all() and np.abs(masked[0, :-400] - norm[0, :-400]).max() < 0.05


def test_synthetic_dataset_has_the_miles_grid_and_schema(miles):
    em = random_optical_emulator(seed=0)
    ds = synthetic_miles_dataset(6, miles.wavelength, em, seed=2)
    assert len(ds) == 6 and set(ds.column_names) >= {"object_id", "wavelength", "flux", "TEFF", "LOGG", "FE_H"}
    row = ds.with_format("numpy")[0]
    np.testing.assert_allclose(row["wavelength"], miles.wavelength, atol=1e-3)
    assert row["flux"].shape == (4300,) and 0.9 < np.median(row["flux"]) < 1.1
    feh = np.asarray(ds["FE_H"])
    assert ((feh >= -2.5) & (feh <= 0.5)).all()


def test_saved_emulator_round_trips(tmp_path):
    em = random_optical_emulator(hidden=4, wmin=5000, wmax=5100)
    path = save_optical_emulator(tmp_path / "em.npz", em.arrays)
    again = load_optical_emulator(path)
    lab = optical.sample_optical_labels(3, seed=0)
    np.testing.assert_array_equal(again(lab), em(lab))


# ------------------------------------------------------------------------------------------------ the converter
def _never(*args, **kwargs):
    raise AssertionError("pip must not run for a wrong input")


def test_converter_refuses_wrong_files_before_installing_anything(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a wheel")
    with pytest.raises(ValueError, match="neither a bossbrain wheel"):
        convert_bossbrain(text, tmp_path / "out.npz", runner=_never)
    wheel = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(ValueError, match="not a bossbrain wheel"):
        convert_bossbrain(wheel, tmp_path / "out.npz", runner=_never)
    fake = tmp_path / "fake" / "bossbrain" / "data"
    fake.mkdir(parents=True)
    for name in optical.BOSSBRAIN_FILES:
        (fake / name).write_bytes(b"PK not a pickle")
    with pytest.raises(ValueError, match="not a pickle"):
        convert_bossbrain(tmp_path / "fake", tmp_path / "out.npz", runner=_never)
    assert not (tmp_path / "out.npz").exists()


def test_loader_refuses_a_file_that_is_not_a_converted_emulator(tmp_path):
    np.savez(tmp_path / "other.npz", W0=np.zeros(3))
    with pytest.raises(ValueError, match="not a converted optical emulator"):
        load_optical_emulator(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(ValueError, match="not a converted optical emulator"):
        load_optical_emulator(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="convert_bossbrain"):
        load_optical_emulator(tmp_path / "absent.npz")


def test_the_real_converted_emulator_if_present(miles):
    path = optical.default_emulator_path()
    if not path.is_file():
        pytest.skip(f"no converted bossbrain emulator at {path} (python scripts/convert_bossbrain.py)")
    em = load_optical_emulator(path)
    assert em.label_names == LABEL_NAMES and em.n_models == 3
    assert em.wave_air[0] <= 3500.0 and em.wave_air[-1] >= 7500.0 and np.allclose(np.diff(em.wave_air), 0.5)
    assert em.label_hi[1] <= 3.5 + 1e-3 and em.label_lo[2] <= -2.49
    lab = np.zeros((2, 22))
    lab[:, :3] = [[4700, 2.4, -0.3], [4700, 2.4, -2.0]]
    flux = degrade(em(lab), em.wave_air, miles.wavelength, snr=None)
    norm, _ = pseudo_continuum_normalize(flux)
    assert 0.85 < np.median(norm) < 1.05
    assert (1 - norm[0]).sum() > 1.3 * (1 - norm[1]).sum()  # metal-rich lines are stronger


def test_band_colours_are_the_same_from_any_instruments_sampling():
    """A flux-calibrated spectrum read on MILES's fine grid and on Gaia XP's 2 nm samples gives the same colours
    (what lets a Teff learnt on XP read MILES), whatever its overall brightness; bad pixels are left out."""
    script = _script()

    def flux(w):   # a smooth red continuum with a broad dip, in any units
        return (w / 5000.0) ** 2 * (1 - 0.3 * np.exp(-0.5 * ((w - 4300.0) / 150.0) ** 2))

    fine, coarse = np.arange(3540.0, 7410.0, 0.9), np.arange(3360.0, 10200.0, 20.0)
    good = np.ones((2, fine.size), bool)
    good[1, ::7] = False   # a few bad pixels, filled with junk
    fine_flux = np.stack([flux(fine), 7.0 * flux(fine)])
    fine_flux[1, ::7] = -1e6
    a = script.band_colours(fine, fine_flux, good, 3540.0, 7410.0, 8)
    b = script.band_colours(coarse, flux(coarse)[None], np.ones((1, coarse.size), bool), 3540.0, 7410.0, 8)
    assert a.shape == (2, 8) and np.allclose(a.sum(1), 0.0)
    assert np.allclose(a[0], a[1], atol=1e-3) and np.allclose(a[0], b[0], atol=0.01)
    assert a[0, -1] - a[0, 0] > 0.5   # the red end is brighter: colours survive


def test_xp_colour_teff_learns_on_xp_alone_and_refuses_an_empty_cut():
    script = _script()
    fixture = REPO / "tests" / "fixtures" / "real_labelled" / "gaia_xp_apogee_dr17"
    predict, fit = script.xp_colour_teff(3540.0, 7410.0, 8, 10.0, fixture)
    assert fit["n_train"] >= 50 and np.isfinite(fit["validation_rmse"])
    assert predict(np.zeros((1, 8))).shape == (1,)
    with pytest.raises(ValueError, match="A_K below 0"):
        script.xp_colour_teff(3540.0, 7410.0, 8, 0.0, fixture)
