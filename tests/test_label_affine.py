"""The per-label affine correction (`SpectraFMPipeline.calibrate_labels`, processor ``label_affine``): the cheapest
few-shot transfer, compared with fine-tuning in the README's few-shot tables."""

import json

import numpy as np
import pytest

from conftest import TINY, fake_apogee_spectrum
from spectrafm_hf import SpectraFMPipeline, SpectraFMProcessor


def test_fit_label_affine_recovers_a_scale_and_zero_point(rng):
    proc = SpectraFMProcessor(label_names=["FE_H", "TEFF"])
    pred = np.column_stack([rng.uniform(-1, 0.4, 200), rng.uniform(4000, 5500, 200)])
    true = np.column_stack([1.3 * pred[:, 0] - 0.2, 0.9 * pred[:, 1] + 500]) + rng.normal(0, 1e-3, (200, 2))
    fitted = proc.fit_label_affine(["FE_H", "TEFF"], pred, true)
    assert fitted["FE_H"] == pytest.approx([1.3, -0.2], abs=1e-2)
    assert fitted["TEFF"] == pytest.approx([0.9, 500], rel=1e-3)
    mean, err = proc.apply_label_affine(["TEFF", "LOGG", "FE_H"], [[5000.0, 2.0, 0.0]], [[50.0, 0.1, 0.1]])
    np.testing.assert_allclose(mean, [[0.9 * 5000 + 500, 2.0, -0.2]], atol=5)  # LOGG has no correction
    np.testing.assert_allclose(err, [[45.0, 0.1, 0.13]], rtol=2e-2)


def test_inverse_affine_stretches_a_compressed_scale_that_the_direct_fit_compresses_further(rng):
    """A model that reads [Fe/H] at 0.7x its scale, with noise: regressing the labels on its predictions flattens
    the line (regression dilution) and extrapolates metal-poor stars too high; the calibration curve, predictions on
    labels, inverted, recovers the scale."""
    true = rng.uniform(-1.0, 0.4, 400)  # metal-rich fitting stars only
    pred = 0.7 * true - 0.05 + rng.normal(0, 0.15, true.size)
    direct = SpectraFMProcessor(label_names=["FE_H"]).fit_label_affine(["FE_H"], pred, true)["FE_H"]
    inverse = SpectraFMProcessor(label_names=["FE_H"]).fit_label_affine(["FE_H"], pred, true, method="inverse")
    assert inverse["FE_H"] == pytest.approx([1 / 0.7, 0.05 / 0.7], abs=0.06)
    assert direct[0] < 0.85 * inverse["FE_H"][0]  # diluted by var(signal) / var(prediction), ~0.78 here
    metal_poor_pred = 0.7 * -2.0 - 0.05  # a star at [Fe/H] = -2, read without noise
    assert abs(np.polyval(inverse["FE_H"], metal_poor_pred) + 2.0) < 0.1
    assert np.polyval(direct, metal_poor_pred) > -1.9 + 0.2  # pulled towards the fitting stars
    with pytest.raises(ValueError, match="method must be 'direct' or 'inverse'"):
        SpectraFMProcessor(label_names=["FE_H"]).fit_label_affine(["FE_H"], pred, true, method="deming")
    with pytest.raises(ValueError, match="do not grow with the label"):
        SpectraFMProcessor(label_names=["FE_H"]).fit_label_affine(["FE_H"], -pred, true, method="inverse")
    with pytest.raises(ValueError, match="labels of FE_H are constant"):
        SpectraFMProcessor(label_names=["FE_H"]).fit_label_affine(["FE_H"], pred, np.zeros_like(true),
                                                                  method="inverse")


def test_bad_affine_input_is_refused_by_name():
    proc = SpectraFMProcessor(label_names=["FE_H"])
    with pytest.raises(ValueError, match="FE_H has 4 usable rows"):
        proc.fit_label_affine(["FE_H"], np.arange(5.0), [0, 1, 2, np.nan, 4])
    with pytest.raises(ValueError, match="predictions of FE_H are constant"):
        proc.fit_label_affine(["FE_H"], np.zeros(30), np.arange(30.0))
    with pytest.raises(ValueError, match="non-zero slope"):
        SpectraFMProcessor(label_names=["FE_H"], label_affine={"FE_H": [0.0, 1.0]})
    assert proc.label_affine == {}  # nothing half-fitted


def test_calibrate_labels_is_applied_saved_reloaded_and_dropped_by_fit(rng, tmp_path):
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    spectra = [fake_apogee_spectrum(rng, n=400) for _ in range(30)]
    before = pipe.predict(spectra, labels=["TEFF", "FE_H"])
    truth = {"FE_H": 2.0 * before["FE_H"].to_numpy() + 0.3}  # a domain whose [Fe/H] scale is twice the model's
    fitted = pipe.calibrate_labels(spectra, truth)
    assert fitted["FE_H"] == pytest.approx([2.0, 0.3], abs=1e-4)
    after = pipe.predict(spectra, labels=["TEFF", "FE_H"])
    np.testing.assert_allclose(after["FE_H"], truth["FE_H"], atol=1e-4)
    np.testing.assert_allclose(after["FE_H_err"], 2 * before["FE_H_err"], rtol=1e-5)
    np.testing.assert_allclose(after["TEFF"], before["TEFF"])  # other labels untouched
    # refitting starts from the network's own predictions, not from the previous correction
    assert pipe.calibrate_labels(spectra, truth)["FE_H"] == pytest.approx([2.0, 0.3], abs=1e-4)
    pipe.save_pretrained(tmp_path / "calibrated")
    stored = json.loads((tmp_path / "calibrated" / "preprocessor_config.json").read_text())["label_affine"]
    assert stored["FE_H"] == pytest.approx([2.0, 0.3], abs=1e-4)
    again = SpectraFMPipeline.from_pretrained(tmp_path / "calibrated", device="cpu").predict(spectra, ["FE_H"])
    np.testing.assert_allclose(again["FE_H"], after["FE_H"], rtol=1e-6)
    tuned = pipe.fit(spectra[:8], {"FE_H": truth["FE_H"][:8]}, steps=1, helper_labels=None)
    assert tuned.processor.label_affine == {}  # the correction belonged to the old network
    assert pipe.processor.label_affine  # the calibrated pipeline keeps its own


def test_a_failed_label_calibration_keeps_the_previous_correction(rng):
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    pipe.processor.label_affine = {"FE_H": [1.5, 0.1]}
    spectra = [fake_apogee_spectrum(rng, n=400) for _ in range(4)]
    with pytest.raises(ValueError, match="usable rows"):
        pipe.calibrate_labels(spectra, {"FE_H": np.zeros(4)})
    assert pipe.processor.label_affine == {"FE_H": [1.5, 0.1]}


def test_a_trainer_fine_tune_drops_the_starting_models_correction(rng, tmp_path):
    """run_training from a calibrated folder: the correction belonged to the old network, the new one has none."""
    from transformers import TrainingArguments

    from spectrafm_hf.training.run import DataArguments, ModelArguments, run_training

    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    pipe.processor.label_affine = {"FE_H": [1.5, 0.1]}
    pipe.save_pretrained(tmp_path / "calibrated")
    args = TrainingArguments(output_dir=str(tmp_path / "ft"), max_steps=1, per_device_train_batch_size=4,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    margs = ModelArguments(model_name_or_path=str(tmp_path / "calibrated"), target_labels=["FE_H"])
    dargs = DataArguments(dataset_config="observed_apogee", dataset_cache_dir=str(tmp_path / "data"),
                          dataset_kwargs={"n_train": 8, "n_validation": 0, "n_test": 0, "seed": 5},
                          pixel_range=[4107, 4619])
    run_training(margs, dargs, args)
    saved = json.loads((tmp_path / "ft" / "final" / "preprocessor_config.json").read_text())
    assert saved["label_affine"] == {}
