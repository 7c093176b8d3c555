"""Hub integration over real HTTP against tests/fake_hub.py on 127.0.0.1: push/pull of pipelines and datasets,
model cards with a model-index, remote code without the package, installing into the HF cache, offline errors."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from conftest import TINY, fake_apogee_spectrum
from hub_fixtures import fake_hub, hub_cache  # noqa: F401  (fixtures)

from spectrafm_hf import SpectraFMModel, SpectraFMPipeline, hub
from spectrafm_hf.hub import (
    CODE_FILES,
    CheckpointNotFoundError,
    install_to_cache,
    push_pipeline,
    render_dataset_card,
    render_model_card,
    resolve_model,
)
from spectrafm_hf.training.info import training_info, write_training_info

METRICS = {
    "TEFF": {"rmse": 48.3, "bias": -3.5, "robust_scatter": 31.2, "coverage68": 0.71, "n": 812},
    "FE_H": {"rmse": 0.041, "bias": 0.004, "robust_scatter": 0.022, "coverage68": 0.66, "n": 812},
}
# what the Trainer's compute_metrics (spectrafm_hf.training.metrics) gives, as run_training saves it
FLAT_METRICS = {"eval_loss": 0.9, "eval_TEFF_rmse": 61.0, "test_loss": 1.1, "test_z_std": 1.05,
                "test_TEFF_n": 90, "test_TEFF_bias": -4.0, "test_TEFF_mae": 38.0, "test_TEFF_rmse": 52.5,
                "test_TEFF_robust_scatter": 33.0, "test_TEFF_coverage68": 0.64, "test_TEFF_coverage95": 0.93,
                "test_MG_FE_rmse": 0.031, "test_MG_FE_coverage68": float("nan")}


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a, b):
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def _bare_copy(tmp_path, name="bare"):
    """TINY without its code files and without auto_map, plus a training_info.json of a fine-tune."""
    d = tmp_path / name
    shutil.copytree(TINY, d)
    for f in CODE_FILES:
        (d / f).unlink(missing_ok=True)  # TINY carries the model's code files only
    config = json.loads((d / "config.json").read_text())
    del config["auto_map"]
    (d / "config.json").write_text(json.dumps(config, indent=2))
    info = training_info(  # the record training/run.py writes
        config={"model": {"model_name_or_path": "org/spectrafm-base", "freeze": ["encoder"], "lora_r": 0},
                "data": {"dataset_config": "apogee_dr17", "max_train_stars": 100},
                "training": {"learning_rate": 1e-4, "max_steps": 200, "per_device_train_batch_size": 32,
                             "warmup_ratio": 0.0, "seed": 42}},
        data={"train": 100, "eval": 50, "test": 90, "labels": ["TEFF", "MG_FE"]}, seed=42,
        trainable_parameters=1000, total_parameters=3066)
    write_training_info(d, {**info, "metrics": FLAT_METRICS})
    return d


# ----------------------------------------------------------------------------------------------- model repos
def test_push_pipeline_then_pull_back(fake_hub, rng):
    from huggingface_hub import ModelCard
    from transformers import AutoModel

    card = render_model_card(TINY, repo_id="org/spectrafm-tiny", metrics=METRICS, datasets=["org/apogee-dr17"],
                             dataset_name="APOGEE DR17 (test)")
    info = push_pipeline(TINY, "org/spectrafm-tiny", card=card, commit_message="tiny pipeline")
    assert info.oid == fake_hub.repos[("model", "org/spectrafm-tiny")].branches["main"]
    assert fake_hub.history("org/spectrafm-tiny")[0] == "tiny pipeline"
    files = fake_hub.files("org/spectrafm-tiny")
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", *CODE_FILES):
        assert name in files
    assert fake_hub.is_lfs("org/spectrafm-tiny", "model.safetensors")  # went through LFS batch + PUT
    assert ("POST", "/org/spectrafm-tiny.git/info/lfs/objects/batch", 200) in fake_hub.requests
    assert any(m == "PUT" and p.startswith("/_lfs/") and s == 200 for m, p, s in fake_hub.requests)

    local = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    pulled = SpectraFMPipeline.from_pretrained("org/spectrafm-tiny", device="cpu")
    _assert_same_weights(local.model, pulled.model)
    spectra = [fake_apogee_spectrum(rng, n=150, object_id=f"s{i}") for i in range(2)]
    a, b = local.predict(spectra), pulled.predict(spectra)
    np.testing.assert_array_equal(a[local.label_names].to_numpy(), b[local.label_names].to_numpy())

    auto = AutoModel.from_pretrained("org/spectrafm-tiny")
    assert isinstance(auto, SpectraFMModel)
    _assert_same_weights(local.model, auto)

    loaded = ModelCard.load("org/spectrafm-tiny")
    assert loaded.data.library_name == "transformers"
    assert {"astronomy", "stellar-spectra", "spectrafm"} <= set(loaded.data.tags)
    assert loaded.data.datasets == ["org/apogee-dr17"]
    results = {(r.metric_type, r.metric_name): r.metric_value for r in loaded.data.eval_results}
    assert results[("rmse", "Teff RMSE [K]")] == 48.3
    assert results[("robust_scatter", "[Fe/H] robust scatter [dex]")] == 0.022
    assert results[("coverage68", "Teff 68% coverage")] == 0.71
    assert len(results) == 8
    assert all(r.dataset_name == "APOGEE DR17 (test)" and r.task_type == "tabular-regression"
               for r in loaded.data.eval_results)
    for section in ("## Model description", "## Intended use", "## Limitations", "## Training recipe",
                    "## How to use", "## Citation", "arXiv", "2411.04750",
                    'SpectraFMPipeline.from_pretrained("org/spectrafm-tiny")',
                    'AutoModel.from_pretrained("org/spectrafm-tiny", trust_remote_code=True)'):
        assert section in loaded.text


def test_push_adds_code_files_and_finetune_card(fake_hub, tmp_path):
    from huggingface_hub import ModelCard, hf_hub_download

    bare = _bare_copy(tmp_path)
    before = sorted(p.name for p in bare.iterdir())
    push_pipeline(bare, "org/spectrafm-ft")
    assert sorted(p.name for p in bare.iterdir()) == before  # the folder itself is left alone
    assert "auto_map" not in json.loads((bare / "config.json").read_text())
    files = fake_hub.files("org/spectrafm-ft")
    assert set(CODE_FILES) | {"training_info.json", "README.md"} <= set(files)
    config = json.loads(fake_hub.read("org/spectrafm-ft", "config.json"))
    assert config["auto_map"]["AutoModel"] == "modeling_spectrafm.SpectraFMModel"
    for name in CODE_FILES:
        assert fake_hub.read("org/spectrafm-ft", name) == (hub.PACKAGE_DIR / name).read_bytes()

    card = ModelCard.load(hf_hub_download("org/spectrafm-ft", "README.md"))  # auto card from training_info.json
    assert card.data.base_model == "org/spectrafm-base"  # from config.model.model_name_or_path
    assert card.data.to_dict()["base_model_relation"] == "finetune"
    results = {r.metric_name: (r.metric_value, r.dataset_split) for r in card.data.eval_results}
    assert results == {  # test_* wins over eval_*, NaN and n/loss/z_std are left out
        "Teff RMSE [K]": (52.5, "test"), "Teff bias [K]": (-4.0, "test"), "Teff robust scatter [K]": (33.0, "test"),
        "Teff 68% coverage": (0.64, "test"), "Teff MAE [K]": (38.0, "test"), "Teff 95% coverage": (0.93, "test"),
        "[Mg/Fe] RMSE [dex]": (0.031, "test")}
    assert "| Teff | 90 | 52.5 K | -4 K | 33 K | 64.0% | 93.0% |" in card.text
    assert "Fine-tuned from [org/spectrafm-base](https://huggingface.co/org/spectrafm-base)" in card.text
    for line in ("**learning_rate**: 0.0001", "**max_steps**: 200", '**freeze**: ["encoder"]', "**seed**: 42",
                 "**dataset_config**: apogee_dr17", "training_info.json"):
        assert line in card.text
    assert "lora_r" not in card.text and "warmup_ratio" not in card.text  # defaults are not listed
    assert "input_label_noise" not in card.text

    # a second push replaces files in a new commit; the first revision stays downloadable
    first = fake_hub.history("org/spectrafm-ft")
    old_oid = fake_hub.repos[("model", "org/spectrafm-ft")].branches["main"]
    push_pipeline(bare, "org/spectrafm-ft", card="---\nlicense: mit\n---\n# replaced\n", commit_message="v2")
    assert fake_hub.history("org/spectrafm-ft") == ["v2", *first]
    assert b"# replaced" in fake_hub.read("org/spectrafm-ft", "README.md")
    old = hf_hub_download("org/spectrafm-ft", "README.md", revision=old_oid)
    assert "Fine-tuned from" in open(old, encoding="utf-8").read()


def test_card_lists_the_noise_a_given_input_was_trained_with():
    from spectrafm_hf.cards import _training_recipe

    data = {"input_label_names": ["TEFF"], "input_label_prob": 1.0}
    noisy = _training_recipe({"config": {"data": {**data, "input_label_noise": {"TEFF": 250.0}}}})
    assert "- **input_label_noise**: TEFF=250" in noisy and '- **input_label_names**: ["TEFF"]' in noisy
    assert "input_label_noise" not in _training_recipe({"config": {"data": {**data, "input_label_noise": {}}}})


def test_remote_code_loads_without_the_package(fake_hub, tmp_path):
    bare = _bare_copy(tmp_path)
    push_pipeline(bare, "org/spectrafm-remote")
    g = torch.Generator().manual_seed(0)
    inputs = {"flux": torch.randn(2, 40, generator=g), "wavelength": 15200 + 1600 * torch.rand(2, 40, generator=g)}
    torch.save(inputs, tmp_path / "inputs.pt")
    model = SpectraFMModel.from_pretrained(TINY).eval()
    with torch.no_grad():
        expected = model(**inputs).mean

    script = textwrap.dedent("""
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
        model = AutoModel.from_pretrained("org/spectrafm-remote", trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        with torch.no_grad():
            out = model(**torch.load(sys.argv[1]))
        torch.save(out.mean, sys.argv[2])
        print(type(model).__name__, tuple(out.mean.shape))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHONPATH"))}
    env.update(fake_hub.client_env(tmp_path / "child-hf-home"))
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SpectraFMModel (2, 5)" in proc.stdout
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected)


def test_transformers_push_to_hub(fake_hub):
    from transformers import AutoConfig, AutoModel

    model = AutoModel.from_pretrained(TINY)
    info = model.push_to_hub("org/spectrafm-native", commit_message="push_to_hub", tags=["astronomy"])
    assert info.commit_message == "push_to_hub"
    files = fake_hub.files("org/spectrafm-native")
    # the model's own code (the processor's, also in CODE_FILES, comes with pipeline pushes)
    assert {"config.json", "model.safetensors", "README.md", "configuration_spectrafm.py",
            "modeling_spectrafm.py"} <= set(files)
    assert AutoConfig.from_pretrained("org/spectrafm-native").auto_map["AutoModel"].endswith("SpectraFMModel")
    _assert_same_weights(model, AutoModel.from_pretrained("org/spectrafm-native"))


# ----------------------------------------------------------------------------------------------- dataset repos
def test_dataset_push_to_hub_and_load_dataset(fake_hub, tmp_path):
    import datasets
    from huggingface_hub import DatasetCard, HfApi

    rng = np.random.default_rng(0)
    features = datasets.Features({
        "object_id": datasets.Value("string"), "instrument": datasets.Value("string"),
        "wavelength": datasets.List(datasets.Value("float32")), "flux": datasets.List(datasets.Value("float32")),
        "TEFF": datasets.Value("float32"), "FE_H": datasets.Value("float32"),
    })

    def make(n, prefix):
        lengths = rng.integers(5, 12, n)
        return datasets.Dataset.from_dict({
            "object_id": [f"{prefix}{i}" for i in range(n)], "instrument": ["apogee"] * n,
            "wavelength": [np.sort(rng.uniform(15100, 17000, k)).astype("float32") for k in lengths],
            "flux": [rng.normal(1, 0.02, k).astype("float32") for k in lengths],
            "TEFF": rng.uniform(4000, 5500, n).astype("float32"), "FE_H": rng.uniform(-1, 0.3, n).astype("float32"),
        }, features=features)

    dsd = datasets.DatasetDict({"train": make(6, "tr"), "test": make(3, "te")})
    HfApi().create_repo("org/spectra", repo_type="dataset")
    render_dataset_card(repo_id="org/spectra", instruments=["apogee"], label_names=["TEFF", "FE_H"],
                        num_rows={"apogee": {"train": 6, "test": 3}}).push_to_hub("org/spectra")
    dsd.push_to_hub("org/spectra", config_name="apogee")
    files = fake_hub.files("org/spectra", "dataset")
    assert "apogee/train-00000-of-00001.parquet" in files and "apogee/test-00000-of-00001.parquet" in files
    assert fake_hub.is_lfs("org/spectra", "apogee/train-00000-of-00001.parquet", "dataset")

    loaded = datasets.load_dataset("org/spectra", "apogee", cache_dir=str(tmp_path / "ds-cache"))
    assert set(loaded) == {"train", "test"}
    assert loaded["train"].features == features
    for split in ("train", "test"):
        assert loaded[split].to_dict() == dsd[split].to_dict()

    card = DatasetCard.load("org/spectra", repo_type="dataset")  # our text, plus the configs push_to_hub added
    assert card.data.license == "cc-by-4.0" and "stellar-spectra" in card.data.tags
    assert card.data.to_dict()["configs"][0]["config_name"] == "apogee"
    assert "## Schema" in card.text and "Majewski" in card.text and "2411.04750" in card.text


# ----------------------------------------------------------------------------------------------- local cache
def test_install_to_cache_then_load_offline(hub_cache, tmp_path, monkeypatch):
    from huggingface_hub import scan_cache_dir
    from transformers import AutoModel

    monkeypatch.chdir(tmp_path)  # no local folder called spectrafm-base
    monkeypatch.setattr(hub, "EMBEDDED_DIR", tmp_path / "no-embedded")  # nor an embedded checkpoint
    bare = _bare_copy(tmp_path)
    snapshot = install_to_cache(bare)
    assert snapshot.parent.parent == hub_cache / "models--spectrafm-base"
    assert (hub_cache / "models--spectrafm-base" / "refs" / "main").read_text() == snapshot.name
    assert {"config.json", "model.safetensors", "preprocessor_config.json", *CODE_FILES} <= {
        p.name for p in snapshot.iterdir()}
    # same content -> same snapshot (a copy: a second _bare_copy stamps training_info's "created" anew, to the second)
    assert install_to_cache(shutil.copytree(bare, tmp_path / "again")) == snapshot

    t0 = time.perf_counter()
    model = AutoModel.from_pretrained("spectrafm-base")
    assert isinstance(model, SpectraFMModel)
    _assert_same_weights(model, SpectraFMModel.from_pretrained(TINY))
    assert resolve_model("spectrafm-base") == "spectrafm-base"  # in the cache: from_pretrained loads it
    pipe = SpectraFMPipeline.from_pretrained("spectrafm-base", device="cpu")
    assert pipe.label_names == model.config.label_names
    assert time.perf_counter() - t0 < 20  # offline: no 23-s network retries
    assert [r.repo_id for r in scan_cache_dir(hub_cache).repos] == ["spectrafm-base"]

    snap2 = install_to_cache(TINY, repo_id="org/spectrafm-small")
    assert snap2.parent.parent.name == "models--org--spectrafm-small"
    assert isinstance(AutoModel.from_pretrained("org/spectrafm-small"), SpectraFMModel)


def test_missing_checkpoint_gives_a_clear_error(hub_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "EMBEDDED_DIR", tmp_path / "no-embedded")
    with pytest.raises(CheckpointNotFoundError) as err:
        resolve_model("spectrafm-nowhere")
    msg = str(err.value)
    assert "'spectrafm-nowhere'" in msg and "spectrafm install" in msg and "pass the path" in msg
    assert str(tmp_path / "spectrafm-nowhere") in msg  # the local folder looked for
    assert str(hub_cache / "models--spectrafm-nowhere") in msg  # the cache looked in
    assert "HF_HUB_OFFLINE=1" in msg
    with pytest.raises(CheckpointNotFoundError, match="spectrafm install"):
        SpectraFMPipeline.from_pretrained("org/spectrafm-nowhere")
    with pytest.raises(CheckpointNotFoundError, match="not a valid Hugging Face repo id"):
        resolve_model(str(tmp_path / "no" / "such" / "folder"))
    assert isinstance(CheckpointNotFoundError("x"), OSError)  # callers catching from_pretrained's OSError
    # online, a name that is nowhere locally goes to from_pretrained (the Hub) unchanged
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert resolve_model("org/spectrafm-nowhere") == "org/spectrafm-nowhere"
    with pytest.raises(CheckpointNotFoundError, match="local_files_only=True"):
        resolve_model("org/spectrafm-nowhere", local_files_only=True)
    assert resolve_model(TINY) == str(TINY)


def test_push_fails_fast_when_offline(hub_cache):
    from huggingface_hub.errors import OfflineModeIsEnabled

    t0 = time.perf_counter()
    with pytest.raises(OfflineModeIsEnabled, match="HF_HUB_OFFLINE"):
        push_pipeline(TINY, "org/never")
    with pytest.raises(OfflineModeIsEnabled):
        SpectraFMModel.from_pretrained(TINY).push_to_hub("org/never")
    assert time.perf_counter() - t0 < 15  # no retries with back-off (those take >= 23 s)


# ----------------------------------------------------------------------------------------------- cards, metrics
def test_model_and_dataset_cards():
    card = render_model_card(TINY, kind="finetune", base_model="org/base", metrics=FLAT_METRICS, license="apache-2.0",
                             repo_id="org/ft")
    assert card.data.license == "apache-2.0" and card.data.base_model == "org/base"
    assert {r.metric_name for r in card.data.eval_results} >= {"Teff RMSE [K]", "[Mg/Fe] RMSE [dex]"}
    assert "from_pretrained(\"org/ft\"" in card.text
    with pytest.warns(UserWarning, match="without a Hub base model"):
        local = render_model_card(TINY, kind="finetune", base_model="runs/pretrain/final")
    assert local.data.base_model is None and "the SpectraFM checkpoint `runs/pretrain/final`" in local.text
    base = render_model_card(SpectraFMPipeline.from_pretrained(TINY, device="cpu"))  # a pipeline object works
    assert base.data.base_model is None and base.data.eval_results is None
    assert "No evaluation metrics" in base.text and "15100-17000 A" in base.text and "No `training_info" in base.text
    assert base.data.library_name == "transformers" and base.data.license == "mit"

    from huggingface_hub import DatasetCard

    ds_card = render_dataset_card(repo_id="org/d", instruments=["apogee", "gaia_rvs"], configs=[
        {"config_name": "apogee", "default": True, "data_files": [{"split": "train", "path": "apogee/train-*"}]}])
    parsed = DatasetCard(str(ds_card))
    assert parsed.data.to_dict()["configs"][0]["data_files"][0]["path"] == "apogee/train-*"
    assert "Gaia Data Release 3" in parsed.text and "`wavelength`" in parsed.text
    assert 'load_dataset("org/d", "apogee")' in parsed.text
