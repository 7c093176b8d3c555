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


# ------------------------------------------------------------------ what the training pushes honour (issue 16, item 5)
def _push_run(tmp_path, name="ft", model=str(TINY), max_steps=2, save_steps=2, **hub):
    """A tiny fine-tune with --push_to_hub and the given hub_* arguments; returns its output_dir."""
    out = tmp_path / name
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4,
                             per_device_eval_batch_size=8, eval_strategy="no", save_strategy="steps",
                             save_steps=save_steps, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                             push_to_hub=True, **hub)
    margs = ModelArguments(model_name_or_path=model, target_labels=["FE_H"], freeze=["decoder"])
    dargs = DataArguments(dataset_config="observed_apogee", dataset_cache_dir=str(tmp_path / "data"),
                          dataset_kwargs={"n_train": 8, "n_validation": 4, "n_test": 4, "seed": 5},
                          pixel_range=[4107, 4619])
    run_training(margs, dargs, args)
    return out


FINAL_COMMIT = "SpectraFM: final model, card, processor, training_info.json"
MODEL_FILES = {"model.safetensors", "config.json", "preprocessor_config.json", "modeling_spectrafm.py",
               "configuration_spectrafm.py", "training_info.json", "README.md"}


def test_without_hub_model_id_the_trainers_default_repo_gets_the_model_and_card(fake_hub, tmp_path):  # noqa: F811
    from huggingface_hub import ModelCard

    fake_hub.default_private = True  # an account whose new repos are private: hub_private_repo=None keeps that
    _push_run(tmp_path, name="my-run")  # no hub_model_id: transformers names the repo <user>/<output_dir name>
    assert [r for _, r in fake_hub.repos] == ["user/my-run"] and fake_hub.repos["model", "user/my-run"].private
    assert MODEL_FILES <= set(fake_hub.files("user/my-run")), fake_hub.files("user/my-run")
    assert fake_hub.history("user/my-run")[0] == FINAL_COMMIT
    card = ModelCard.load("user/my-run")
    assert card.data.eval_results and "user/my-run" in card.text  # the card's snippets name the repo


def test_hub_token_is_the_token_sent(fake_hub, tmp_path):  # noqa: F811
    _push_run(tmp_path, hub_model_id="astro/token-ft", hub_token="hf_given_by_the_user")
    commits = [(m, p) for m, p, _ in fake_hub.authorizations if p.startswith("/api/models/astro/token-ft/commit/")]
    assert len(commits) >= 2  # a checkpoint and the final model
    assert fake_hub.history("astro/token-ft")[0] == FINAL_COMMIT
    assert fake_hub.tokens_sent() == {"hf_given_by_the_user"}  # never HF_TOKEN's hf_fake, never none


def test_hub_revision_takes_the_checkpoints_and_the_final_model(fake_hub, tmp_path):  # noqa: F811
    _push_run(tmp_path, hub_model_id="astro/rev-ft", hub_revision="dev", hub_strategy="checkpoint")
    assert fake_hub.files("astro/rev-ft", revision="main") == [".gitattributes"]  # main untouched
    assert fake_hub.history("astro/rev-ft", branch="main") == ["initial commit"]
    on_dev = set(fake_hub.files("astro/rev-ft", revision="dev"))
    assert MODEL_FILES <= on_dev and "last-checkpoint/model.safetensors" in on_dev, sorted(on_dev)
    history = fake_hub.history("astro/rev-ft", branch="dev")
    assert history[0] == FINAL_COMMIT and "Training in progress, step 2" in history


REMOTE_LOAD = """
import socket, sys
sys.modules["spectrafm_hf"] = None  # the package must not be importable here
_lookup = socket.getaddrinfo
def _loopback_only(host, *a, **k):  # the fake Hub on 127.0.0.1 is the only server this may reach
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise socket.gaierror(socket.EAI_NONAME, f"blocked by the test: {host!r}")
    return _lookup(host, *a, **k)
socket.getaddrinfo = _loopback_only
import torch
from transformers import AutoModel
repo, revision, inputs, out = sys.argv[1:5]
outputs = {}
for subfolder in ("", "last-checkpoint"):
    model = AutoModel.from_pretrained(repo, revision=revision, subfolder=subfolder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    with torch.no_grad():
        outputs[subfolder or "top"] = model(**torch.load(inputs)).mean
torch.save(outputs, out)
"""


def test_a_checkpoint_push_loads_as_remote_code_without_the_package(fake_hub, tmp_path):  # noqa: F811
    import os
    import subprocess
    import sys

    import torch

    from spectrafm_hf import SpectraFMModel

    out = _push_run(tmp_path, hub_model_id="astro/remote-ckpt", hub_strategy="checkpoint", max_steps=2, save_steps=1)
    # the revision the first checkpoint push made: nothing of the final push is in it
    (oid, title), = [(oid, t) for oid, t in fake_hub.commits("astro/remote-ckpt") if t.endswith("step 1")]
    g = torch.Generator().manual_seed(0)
    inputs = {"flux": torch.randn(2, 40, generator=g), "wavelength": 16100 + 125 * torch.rand(2, 40, generator=g)}
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = SpectraFMModel.from_pretrained(out / "checkpoint-1").eval()(**inputs).mean
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHONPATH"))}
    env.update(fake_hub.client_env(tmp_path / "child-hf-home"))
    proc = subprocess.run([sys.executable, "-c", REMOTE_LOAD, "astro/remote-ckpt", oid, str(tmp_path / "inputs.pt"),
                           str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(outputs["top"], expected)
    torch.testing.assert_close(outputs["last-checkpoint"], expected)


def test_a_finetune_of_the_default_model_names_it_as_base_model(fake_hub, tmp_path):  # noqa: F811
    from huggingface_hub import ModelCard

    _push_run(tmp_path, model="spectrafm-base", hub_model_id="astro/from-default", max_steps=1, save_steps=1)
    card = ModelCard.load("astro/from-default")
    assert card.data.base_model == "spectrafm/spectrafm-base"
    assert card.data.to_dict()["base_model_relation"] == "finetune"
    assert "https://huggingface.co/spectrafm/spectrafm-base" in card.text
