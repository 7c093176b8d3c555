"""Post-hoc recalibration of the predicted uncertainties (issue 14 item 5): fitted on validation spectra, stored in
preprocessor_config.json, applied by every predict; run_training fits it on the validation split."""

import json

import numpy as np
import pytest

from conftest import TINY, fake_apogee_spectrum
from spectrafm_hf import SpectraFMPipeline, SpectraFMProcessor


def test_fit_uncertainty_scale_recovers_an_overconfidence_factor(rng):
    proc = SpectraFMProcessor(label_names=["TEFF", "FE_H"])
    n = 4000
    true = np.column_stack([rng.uniform(4000, 6000, n), rng.uniform(-2, 0.5, n)])
    real_sigma = np.column_stack([np.full(n, 100.0), rng.uniform(0.05, 0.2, n)])
    pred = true + rng.normal(size=(n, 2)) * real_sigma
    claimed = real_sigma / np.array([3.0, 0.5])  # TEFF three times overconfident, FE_H twice underconfident
    scales = proc.fit_uncertainty_scale(["TEFF", "FE_H"], pred, claimed, true)
    assert scales["TEFF"] == pytest.approx(3.0, rel=0.06) and scales["FE_H"] == pytest.approx(0.5, rel=0.06)
    z = np.abs(pred - true) / (claimed * proc.sigma_scales(["TEFF", "FE_H"]))
    assert np.mean(z < 1, axis=0) == pytest.approx([0.6827, 0.6827], abs=0.002)
    # a catalogue error on the truth is part of the residual, not the model's fault
    both = proc.fit_uncertainty_scale(["TEFF"], pred[:, 0], real_sigma[:, 0], true[:, 0], np.full(n, 100.0))
    assert both["TEFF"] < 0.8


def test_fit_uncertainty_scale_covers_new_stars_from_a_small_validation_set(rng):
    """42 validation stars (the MILES few-shot split): the fitted sigma must still cover 68 % of NEW stars on average
    (a plain 68th percentile of 42 values covers ~67.4 %, the conformal order statistic 30/43 = 69.8 %)."""
    proc = SpectraFMProcessor(label_names=["FE_H"])
    coverages = []
    for _ in range(3000):
        scale = proc.fit_uncertainty_scale(["FE_H"], rng.normal(size=42), np.ones(42), np.zeros(42))["FE_H"]
        coverages.append(np.mean(np.abs(rng.normal(size=400)) < scale))
    assert 0.690 < np.mean(coverages) < 0.705


def test_fit_uncertainty_scale_refuses_too_few_rows_and_bad_values():
    proc = SpectraFMProcessor(label_names=["FE_H"])
    with pytest.raises(ValueError, match="FE_H has 5 usable"):
        proc.fit_uncertainty_scale(["FE_H"], np.zeros(5), np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match="must be positive"):
        SpectraFMProcessor(label_names=["FE_H"], uncertainty_scale={"FE_H": 0.0})
    with pytest.raises(ValueError, match="shape"):
        proc.fit_uncertainty_scale(["FE_H", "TEFF"], np.zeros(50), np.ones(50), np.ones(50))


def test_pipeline_calibration_is_applied_saved_and_reloaded(rng, tmp_path):
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    spectra = [fake_apogee_spectrum(rng, n=400) for _ in range(40)]
    before = pipe.predict(spectra, labels=["TEFF", "FE_H"])
    truth = {"TEFF": rng.uniform(4000, 6000, 40), "FE_H": rng.uniform(-1, 0.3, 40)}
    scales = pipe.calibrate_uncertainties(spectra, truth)
    assert set(scales) == {"TEFF", "FE_H"} and all(v > 0 for v in scales.values())
    after = pipe.predict(spectra, labels=["TEFF", "FE_H"])
    for name in ("TEFF", "FE_H"):
        np.testing.assert_allclose(after[name], before[name])  # the means do not move
        np.testing.assert_allclose(after[f"{name}_err"], before[f"{name}_err"] * scales[name], rtol=1e-6)
        covered = np.abs(after[name] - truth[name]) <= after[f"{name}_err"]
        assert covered.mean() == pytest.approx(0.68, abs=0.05)
    # refitting starts from the model's own sigma, not from the previous calibration
    assert pipe.calibrate_uncertainties(spectra, truth) == pytest.approx(scales)
    pipe.save_pretrained(tmp_path / "calibrated")
    stored = json.loads((tmp_path / "calibrated" / "preprocessor_config.json").read_text())["uncertainty_scale"]
    assert stored == pytest.approx(scales)
    again = SpectraFMPipeline.from_pretrained(tmp_path / "calibrated", device="cpu").predict(spectra, ["TEFF", "FE_H"])
    np.testing.assert_allclose(again["FE_H_err"], after["FE_H_err"], rtol=1e-6)


def test_failed_calibration_leaves_the_previous_factors(rng):
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    pipe.processor.uncertainty_scale = {"FE_H": 1.7}
    spectra = [fake_apogee_spectrum(rng, n=400) for _ in range(5)]
    with pytest.raises(ValueError, match="usable validation rows"):
        pipe.calibrate_uncertainties(spectra, {"FE_H": np.zeros(5)})
    assert pipe.processor.uncertainty_scale == {"FE_H": 1.7}


@pytest.mark.parametrize("calibrate", [True, False])
def test_run_training_fits_the_calibration_on_the_validation_split(tmp_path, calibrate):
    from transformers import TrainingArguments

    from conftest import fake_dataset_dict
    from spectrafm_hf.training.run import DataArguments, ModelArguments, run_training

    dsd = fake_dataset_dict(n_train=16, n_eval=24)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=8,
                             eval_strategy="no", save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             dataloader_num_workers=0)
    margs = ModelArguments(model_name_or_path=str(TINY), calibrate_uncertainties=calibrate)
    _, metrics = run_training(margs, DataArguments(), args, splits=(dsd["train"], dsd["validation"], None))
    stored = json.loads((tmp_path / "run" / "final" / "preprocessor_config.json").read_text())
    # the starting model's embedding statistics describe other weights: dropped, not carried into the fine-tune
    assert json.loads((TINY / "preprocessor_config.json").read_text())["embedding_mean"]
    assert stored["embedding_mean"] is None and stored["embedding_threshold"] is None
    if calibrate:
        assert set(stored["uncertainty_scale"]) == {"TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"}
        assert stored["uncertainty_scale"] == pytest.approx(metrics["uncertainty_scale"])
        pipe = SpectraFMPipeline.from_pretrained(tmp_path / "run" / "final", device="cpu")
        from spectrafm_hf.data import row_to_spectrum

        table = pipe.predict([row_to_spectrum(r) for r in dsd["validation"]], labels=["FE_H"])
        covered = np.abs(table["FE_H"] - np.asarray(dsd["validation"]["FE_H"])) <= table["FE_H_err"]
        assert covered.mean() == pytest.approx(0.68, abs=0.1)
    else:
        assert not stored.get("uncertainty_scale") and "uncertainty_scale" not in metrics


def test_the_factor_fades_for_spectra_read_as_fewer_subsets():
    """The model's sigma is calibrated for one pixel subset (training); the factor fitted on long spectra (k_fit
    subsets) applies in full from k_fit on, not at all to a single window, log-interpolated between."""
    proc = SpectraFMProcessor(label_names=["TEFF", "FE_H"], uncertainty_scale={"TEFF": 0.5, "FE_H": 2.0},
                              uncertainty_scale_subsets=16)
    f = proc.sigma_scales(["TEFF", "FE_H"], n_subsets=[1, 4, 16, 40])
    np.testing.assert_allclose(f[:, 0], [1.0, 0.5**0.5, 0.5, 0.5])
    np.testing.assert_allclose(f[:, 1], [1.0, 2.0**0.5, 2.0, 2.0])
    np.testing.assert_allclose(proc.sigma_scales(["FE_H", "LOGG"]), [2.0, 1.0])
    # fitted from a table with the subset counts: their median is stored
    rng = np.random.default_rng(0)
    proc.fit_uncertainty_scale(["FE_H"], rng.normal(size=50), np.ones(50), np.zeros(50), n_subsets=[30] * 50)
    assert proc.uncertainty_scale_subsets == 30
    with pytest.raises(ValueError, match="uncertainty_scale_subsets"):
        SpectraFMProcessor(label_names=["FE_H"], uncertainty_scale_subsets=0)


def test_a_single_window_keeps_the_models_own_sigma(rng):
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    spectra = [fake_apogee_spectrum(rng, n=600) for _ in range(30)]
    truth = {"FE_H": rng.uniform(-1, 0.3, 30)}
    window = [s.crop(float(s.wavelength[0]), float(s.wavelength[40])) for s in spectra]  # one subset each
    before = pipe.predict(window, labels=["FE_H"])
    scales = pipe.calibrate_uncertainties(spectra, truth)
    assert pipe.processor.uncertainty_scale_subsets > 1 and scales["FE_H"] != pytest.approx(1.0, abs=1e-3)
    after = pipe.predict(window, labels=["FE_H"])
    assert (after["n_subsets"] == 1).all()
    np.testing.assert_allclose(after["FE_H_err"], before["FE_H_err"])


def test_full_spectra_normalised_elsewhere_are_renormalised_to_the_training_continuum():
    """One normalisation for the model (issue 15): an observed-domain spectrum normalised by its TRUE continuum
    reaches the model like the same star pseudo-continuum normalised (the training data); windows and processors
    without renormalize_coverage take normalised flux as given."""
    from spectrafm_hf import synth

    cont = {"method": "continuum_pixels", "instrument": "apogee", "degree": 2}
    proc = SpectraFMProcessor(label_names=["FE_H"], continuum=cont, renormalize_coverage=0.5)
    true_norm = synth.generate(3, observed=True, seed=4, continuum="true", as_spectra=True)
    pseudo = synth.generate(3, observed=True, seed=4, continuum="pseudo", as_spectra=True)
    for a, b in zip(true_norm, pseudo):
        p = proc.prepare(a)
        assert p.meta["normalization"] == "renormalized:metadata"
        g = p.good & b.good
        before = np.median(np.abs(a.flux[g] - b.flux[g]))
        after = np.median(np.abs(p.flux[g] - b.flux[g]))
        assert after < 0.3 * before
        assert proc.prepare(b).meta["normalization"] == "renormalized:metadata"
        assert np.median(np.abs(proc.prepare(b).flux[g] - b.flux[g])) < 0.002  # ~idempotent on training-like data
        window = a.crop(16100.0, 16250.0)
        assert proc.prepare(window).meta["normalization"] == "as_given:metadata"
    plain = SpectraFMProcessor(label_names=["FE_H"], continuum=cont)
    assert plain.prepare(true_norm[0]).meta["normalization"] == "as_given:metadata"


def test_calibration_ignores_the_training_snr_range_and_never_loses_a_training_run(rng, tmp_path):
    """Validation spectra below the parent's training S/N (a new instrument, noisier data) are calibrated on the
    model's own sigma (the low-S/N inflation stays for predict); too few labelled validation stars give a warning,
    not a lost run (a Gaia RVS fine-tune of beyond_paper.py hit both)."""
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    pipe.processor.snr_range = [1e6, 2e6]  # every spectrum is "below the training S/N"
    spectra = [fake_apogee_spectrum(rng, n=400) for _ in range(25)]
    scales = pipe.calibrate_uncertainties(spectra, {"FE_H": rng.uniform(-1, 0.3, 25)})
    assert "FE_H" in scales and pipe.processor.snr_range == [1e6, 2e6]

    from transformers import TrainingArguments

    from conftest import fake_dataset_dict
    from spectrafm_hf.training.run import DataArguments, ModelArguments, run_training

    dsd = fake_dataset_dict(n_train=16, n_eval=24)
    few = dsd["validation"].map(lambda r, i: {"FE_H": r["FE_H"] if i < 5 else float("nan")}, with_indices=True)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=8,
                             eval_strategy="no", save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             dataloader_num_workers=0)
    margs = ModelArguments(model_name_or_path=str(TINY), target_labels=["FE_H"], use_helper_labels=False)
    _, metrics = run_training(margs, DataArguments(), args, splits=(dsd["train"], few, None))
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file() and "uncertainty_scale" not in metrics
