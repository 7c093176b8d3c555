"""The training scripts' --push_to_hub path: a tiny fine-tune from a datasets builder config publishes its
checkpoints and the final model (weights, processor, code, training_info.json, card with model-index) to a local
Hub-protocol server, and the pushed model pulls back and predicts."""

import json

import numpy as np
from conftest import TINY
from hub_fixtures import fake_hub  # noqa: F401
from transformers import TrainingArguments

from spectrafm_hf import SpectraFMPipeline, synth
from spectrafm_hf.training.run import DataArguments, ModelArguments, run_training


def test_finetune_script_pushes_checkpoints_and_final_model(fake_hub, tmp_path):  # noqa: F811
    args = TrainingArguments(output_dir=str(tmp_path / "ft"), max_steps=2, per_device_train_batch_size=4,
                             per_device_eval_batch_size=8, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                             save_steps=2, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                             push_to_hub=True, hub_model_id="astro/tiny-ft", hub_strategy="checkpoint")
    margs = ModelArguments(model_name_or_path=str(TINY), target_labels=["FE_H"], freeze=["decoder"])
    dargs = DataArguments(dataset_config="observed_apogee", dataset_cache_dir=str(tmp_path / "data"),
                          dataset_kwargs={"n_train": 16, "n_validation": 8, "n_test": 8, "seed": 5},
                          pixel_range=[4107, 4619])
    _, metrics = run_training(margs, dargs, args)
    files = set(fake_hub.files("astro/tiny-ft"))
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "modeling_spectrafm.py",
                 "configuration_spectrafm.py", "training_info.json", "README.md"):
        assert name in files, (name, sorted(files))
    assert any(f.startswith("last-checkpoint/") for f in files)  # resumable checkpoint on the Hub
    from huggingface_hub import ModelCard

    card = ModelCard.load("astro/tiny-ft")
    assert card.data.eval_results and any("FE_H" in r.metric_name or "Fe/H" in r.metric_name
                                          for r in card.data.eval_results)
    info = json.loads((tmp_path / "ft" / "final" / "training_info.json").read_text())
    assert info["data"]["wavelength_window"][0] > 16100
    pulled = SpectraFMPipeline.from_pretrained("astro/tiny-ft", device="cpu")
    spectra = synth.generate(3, observed=True, seed=9).to_spectra()
    table = pulled.predict([s.crop(16100, 16225) for s in spectra], labels=["FE_H"])
    assert np.isfinite(table["FE_H"]).all() and np.isfinite(metrics["test_FE_H_rmse"])
