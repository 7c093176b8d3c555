"""Datasets on the Hub: `push_dataset` publishes Parquet + a card to a real Hub-protocol server on loopback, and
training reads a Hub dataset id or local Parquet ``data_files`` (DataArguments) in the package's schema."""

import numpy as np
import pytest
from conftest import fake_dataset_dict
from hub_fixtures import fake_hub  # noqa: F401  (fixture)
from transformers import TrainingArguments

from spectrafm_hf.data import load_published_dataset, push_dataset
from spectrafm_hf.training.run import DataArguments, ModelArguments, load_data, run_training

TINY_MODEL = dict(hidden_size=8, encoder_num_heads=[2, 2], encoder_ffn_dims=[16, 8], decoder_num_heads=[2, 2, 1],
                  decoder_ffn_dims=[16, 8, 8], head_dims=[16, 8], context_length=64)


def _same_rows(a, b):
    assert a.num_rows == b.num_rows and a["object_id"] == b["object_id"]
    for col in ("flux", "wavelength", "FE_H"):
        np.testing.assert_array_equal(np.asarray(a[col], dtype=object if col != "FE_H" else float).tolist(),
                                      np.asarray(b[col], dtype=object if col != "FE_H" else float).tolist())


def test_push_dataset_then_train_from_the_hub_id(fake_hub, tmp_path, monkeypatch):  # noqa: F811
    from huggingface_hub import HfApi

    asked = []
    real_create = HfApi.create_repo
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: asked.append(k.get("private")) or
                        real_create(self, *a, **k))
    dsd = fake_dataset_dict(n_train=16, n_eval=6, n_pixels=120)
    files = push_dataset(dsd, "org/observed", subset="apogee", card_info={"pretty_name": "Test spectra"})
    assert "README.md" in files and any(f.startswith("apogee/train-") and f.endswith(".parquet") for f in files)
    assert asked and all(p is None for p in asked)  # the Hub's default visibility: never forced public
    card = fake_hub.read("org/observed", "README.md", "dataset").decode()
    assert "Test spectra" in card and "config_name: apogee" in card and "| `apogee` | train | 16 |" in card
    back = load_published_dataset("org/observed", "apogee", cache_dir=str(tmp_path / "cache"))
    assert set(back) == {"train", "validation", "test"}
    _same_rows(back["train"], dsd["train"])

    train, evald, test = load_data(DataArguments(dataset_name="org/observed", dataset_subset="apogee",
                                                 dataset_cache_dir=str(tmp_path / "cache")))
    assert (train.num_rows, evald.num_rows, test.num_rows) == (16, 6, 6)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=8,
                             report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no", disable_tqdm=True)
    _, metrics = run_training(ModelArguments(config_overrides=TINY_MODEL),
                              DataArguments(dataset_name="org/observed", dataset_subset="apogee",
                                            dataset_cache_dir=str(tmp_path / "cache")), args)
    assert np.isfinite(metrics["test_FE_H_rmse"])


def test_push_dataset_private_is_passed_through(fake_hub):  # noqa: F811
    push_dataset(fake_dataset_dict(n_train=4, n_eval=2, n_pixels=50)["train"], "org/secret", private=True)
    assert fake_hub._repo("org/secret", "dataset").private is True


def test_train_from_local_parquet_data_files(tmp_path):
    dsd = fake_dataset_dict(n_train=10, n_eval=4, n_pixels=80)
    files = {}
    for split, ds in dsd.items():
        ds.to_parquet(str(tmp_path / f"{split}.parquet"))
        files[split] = str(tmp_path / f"{split}.parquet")
    train, evald, test = load_data(DataArguments(data_files=files, dataset_cache_dir=str(tmp_path / "c")))
    _same_rows(train, dsd["train"])
    _same_rows(test, dsd["test"])
    stream = load_published_dataset(data_files=files["train"], streaming=True)
    assert [r["object_id"] for r in stream["train"]] == dsd["train"]["object_id"]


def test_published_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="Hub dataset id"):
        load_published_dataset()
    import datasets

    datasets.Dataset.from_dict({"object_id": ["a"], "TEFF": [5000.0]}).to_parquet(str(tmp_path / "t.parquet"))
    with pytest.raises(ValueError, match="wavelength"):
        load_published_dataset(data_files=str(tmp_path / "t.parquet"), cache_dir=str(tmp_path / "c"))
    fake_dataset_dict(n_train=2, n_eval=2, n_pixels=20)["validation"].to_parquet(str(tmp_path / "v.parquet"))
    with pytest.raises(ValueError, match="no 'train' split"):
        load_data(DataArguments(data_files={"validation": str(tmp_path / "v.parquet")},
                                dataset_cache_dir=str(tmp_path / "c")))


def test_push_dataset_command_publishes_parquet_files(fake_hub, tmp_path, capsys):  # noqa: F811
    from spectrafm_hf.cli import main

    dsd = fake_dataset_dict(n_train=6, n_eval=3, n_pixels=40)
    folder = tmp_path / "shards"
    folder.mkdir()
    for split, ds in dsd.items():
        ds.to_parquet(str(folder / f"{split}-00000.parquet"))
    (folder / "notes.txt").write_text("HF_TOKEN=hf_secret")  # not a data file: never read, never pushed
    assert main(["push-dataset", str(folder), "org/shards", "--subset", "apogee", "--private"]) == 0
    out = capsys.readouterr().out
    assert "train 6" in out and "org/shards" in out
    files = fake_hub.files("org/shards", "dataset")
    assert "README.md" in files and not any("notes" in f for f in files)
    assert fake_hub._repo("org/shards", "dataset").private is True
    back = load_published_dataset("org/shards", "apogee", cache_dir=str(tmp_path / "cache"))
    assert sorted(back) == ["test", "train", "validation"] and back["train"].num_rows == 6
    assert main(["push-dataset", str(tmp_path / "missing"), "org/x"]) == 2
