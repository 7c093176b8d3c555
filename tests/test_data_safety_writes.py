"""Issue 18, items 1 and 2: writes never destroy a user's files, and publishing sends only what belongs.

Every test plants user files around a write path (save_pretrained, the converter, a training run, a push) and checks
by content hash that none was deleted or changed; every push test reads back EVERY file that reached the local
Hub-protocol server and scans it for the planted secrets and for the test's temporary-folder paths."""

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from conftest import TINY
from hub_fixtures import fake_hub  # noqa: F401  (fixture)
from original_format import make_original_folder

from spectrafm_hf import SpectraFMPipeline
from spectrafm_hf.checkpoint_folder import is_spectrafm_folder, redact_local_details
from spectrafm_hf.cli import main
from spectrafm_hf.convert import convert_original_checkpoint
from spectrafm_hf.hub import (
    ForeignFolderError,
    atomic_directory,
    install_to_cache,
    push_pipeline,
    render_model_card,
)
from spectrafm_hf.training.info import training_info, write_training_info

SECRET = "hf_PLANTEDsecretTOKEN0123456789abcdef"
HOST = "planted-host-7f3a9c"  # the host name the tests pretend to run on
OURS = {"config.json", "model.safetensors", "preprocessor_config.json", "configuration_spectrafm.py",
        "modeling_spectrafm.py", "processing_spectrafm.py", "spectrum.py"}  # the last two: the remote processor


def _hashes(root: Path) -> dict[str, str]:
    """Content hash of every file under ``root`` (relative path -> sha256), symlinks as their target."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[p.relative_to(root).as_posix()] = "link:" + os.readlink(p)
        elif p.is_file():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _plant_user_files(folder: Path) -> dict[str, str]:
    """A user's project: data, a sub-folder, secrets; returns their hashes."""
    (folder / "raw").mkdir(parents=True, exist_ok=True)
    (folder / "observations.csv").write_text("object_id,teff\nstar1,5000\n")
    (folder / "raw" / "spec-0001.fits").write_bytes(b"SIMPLE  =                    T" + bytes(100))
    (folder / "notes.txt").write_text(f"my token: HF_TOKEN={SECRET}\n")
    (folder / "secrets.yaml").write_text(f"hf_token: {SECRET}\n")
    (folder / "credentials.json").write_text(json.dumps({"token": SECRET}))
    (folder / ".env").write_text(f"HF_TOKEN={SECRET}\n")
    return _hashes(folder)


def _planted(folder: Path, before: dict[str, str]) -> dict[str, str]:
    """The hashes now, of the planted files only."""
    now = _hashes(folder)
    return {k: now.get(k) for k in before}


def _leftovers(*folders: Path) -> list[str]:
    return [p.name for f in folders if f.is_dir() for p in f.iterdir()
            if ".tmp" in p.name or "spectrafm-save" in p.name]


@pytest.fixture(scope="module")
def pipe():
    return SpectraFMPipeline.from_pretrained(TINY, device="cpu")


# ----------------------------------------------------------------------------------------------- item 1: writes
def test_save_into_a_user_folder_refuses_and_deletes_nothing(pipe, tmp_path):
    proj = tmp_path / "proj"
    before = _plant_user_files(proj)
    with pytest.raises(ForeignFolderError) as e:
        pipe.save_pretrained(proj)
    msg = str(e.value)
    assert str(proj) in msg and "observations.csv" in msg and "raw" in msg and "overwrite=True" in msg
    assert isinstance(e.value, FileExistsError)
    assert _hashes(proj) == before  # nothing deleted, nothing added
    assert _leftovers(tmp_path, proj) == []


def test_save_into_the_working_directory_keeps_its_files(pipe, tmp_path, monkeypatch):
    cwd = tmp_path / "work"
    before = _plant_user_files(cwd)
    monkeypatch.chdir(cwd)
    with pytest.raises(ForeignFolderError, match="notes.txt"):
        pipe.save_pretrained(".")
    assert _hashes(cwd) == before
    pipe.save_pretrained(".", overwrite=True)  # opt-in: our files are added, the user's stay
    assert _planted(cwd, before) == before
    assert OURS <= {p.name for p in cwd.iterdir()}
    assert _leftovers(tmp_path, cwd) == []
    loaded = SpectraFMPipeline.from_pretrained(".", device="cpu")
    assert loaded.label_names == pipe.label_names


def test_overwrite_replaces_only_our_files(pipe, tmp_path):
    proj = tmp_path / "proj"
    before = _plant_user_files(proj)
    (proj / "config.json").write_text('{"model_type": "bert"}')  # a file of ours by name: replaced on opt-in
    link_target = tmp_path / "elsewhere.json"
    link_target.write_text("{}")
    (proj / "preprocessor_config.json").symlink_to(link_target)  # replaced as a link, never written through
    pipe.save_pretrained(proj, overwrite=True)
    assert _planted(proj, before) == before
    assert json.loads((proj / "config.json").read_text())["model_type"] == "spectrafm"
    assert not (proj / "preprocessor_config.json").is_symlink()
    assert link_target.read_text() == "{}"
    assert SpectraFMPipeline.from_pretrained(proj, device="cpu").label_names == pipe.label_names


def test_another_models_folder_is_not_taken_for_ours(pipe, tmp_path):
    other = tmp_path / "bert"  # only file names a checkpoint uses, but another model's
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    (other / "model.safetensors").write_bytes(b"bert weights")
    before = _hashes(other)
    with pytest.raises(ForeignFolderError, match="model_type 'bert'"):
        pipe.save_pretrained(other)
    assert _hashes(other) == before
    clone = tmp_path / "clone"  # a fresh clone of an empty Hub repo: hidden entries only
    (clone / ".git").mkdir(parents=True)
    (clone / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    pipe.save_pretrained(clone)
    assert (clone / ".gitattributes").read_text() == "*.safetensors filter=lfs\n" and (clone / ".git").is_dir()
    assert is_spectrafm_folder(clone)


def test_our_own_model_folder_is_updated_in_place_without_overwrite(pipe, tmp_path):
    out = tmp_path / "model"
    pipe.save_pretrained(out)
    assert is_spectrafm_folder(out)
    (out / ".git").mkdir()  # a clone of a Hub repo: hidden entries do not make it foreign, and they stay
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"stale shard of an earlier save")
    (out / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    hidden = _hashes(out / ".git")
    pipe.save_pretrained(out)
    assert _hashes(out / ".git") == hidden
    assert {p.name for p in out.iterdir()} == OURS | {".git"}  # the stale shards of ours are gone


def test_a_failed_save_leaves_the_folder_as_it_was(pipe, tmp_path, monkeypatch):
    out = tmp_path / "model"
    pipe.save_pretrained(out)
    before = _hashes(out)

    def broken(self, *a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(type(pipe.processor), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        pipe.save_pretrained(out)
    assert _hashes(out) == before and _leftovers(tmp_path, out) == []
    with pytest.raises(OSError, match="disk full"):
        pipe.save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []


def test_a_file_as_target_is_a_clear_error(tmp_path):
    target = tmp_path / "model"
    target.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="not a folder"), atomic_directory(target):
        pass
    assert target.read_text() == "not a folder"


def test_converter_refuses_to_write_over_its_input(tmp_path):
    original = tmp_path / "epoch_120"
    make_original_folder(original, seed=1)
    before = _hashes(original)
    for out in (original, tmp_path / "epoch_120" / ".." / "epoch_120"):
        with pytest.raises(ValueError, match="original checkpoint"):
            convert_original_checkpoint(original, out)
        with pytest.raises(ValueError, match="original checkpoint"):
            convert_original_checkpoint(original, out, overwrite=True)  # not even on opt-in
    link = tmp_path / "link"
    link.symlink_to(original, target_is_directory=True)
    with pytest.raises(ValueError, match="original checkpoint"):
        convert_original_checkpoint(original, link, overwrite=True)
    assert _hashes(original) == before


def test_converter_into_a_user_folder_keeps_its_files(tmp_path):
    original = tmp_path / "epoch_120"
    make_original_folder(original, seed=1)
    proj = tmp_path / "proj"
    before = _plant_user_files(proj)
    with pytest.raises(FileExistsError, match="observations.csv"):
        convert_original_checkpoint(original, proj)
    assert _hashes(proj) == before
    convert_original_checkpoint(original, proj, overwrite=True)
    assert _planted(proj, before) == before and (proj / "model.safetensors").is_file()


def test_training_refuses_a_final_folder_holding_user_files_before_training(tmp_path):
    from transformers import TrainingArguments

    from spectrafm_hf.training.run import DataArguments, ModelArguments, run_training

    out = tmp_path / "run"
    before = _plant_user_files(out / "final")
    args = TrainingArguments(output_dir=str(out), max_steps=1, report_to=[], use_cpu=True)
    with pytest.raises(ForeignFolderError, match="observations.csv"):
        run_training(ModelArguments(model_name_or_path=str(TINY)), DataArguments(), args)
    assert _hashes(out / "final") == before
    assert not any(p.name.startswith("checkpoint-") for p in out.iterdir())  # refused before any training


# ----------------------------------------------------------------------------------------------- item 2: publishing
def _pushed(fake_hub, repo_id) -> dict[str, bytes]:
    return {path: fake_hub.read(repo_id, path) for path in fake_hub.files(repo_id)}


def _assert_clean(pushed: dict[str, bytes], *paths):
    """No planted secret, no absolute temporary path, no host name in any pushed file."""
    needles = [SECRET.encode(), HOST.encode()] + [str(Path(p).resolve()).encode() for p in paths] + \
        [str(p).encode() for p in paths]
    for path, data in pushed.items():
        for needle in needles:
            assert needle not in data, (path, needle)


def test_push_uploads_the_allow_list_only_and_says_what(fake_hub, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "model"
    shutil.copytree(TINY, folder)
    _plant_user_files(folder)
    (folder / "training_args.bin").write_bytes(str(tmp_path).encode())
    (folder / "extra.json").write_text(json.dumps({"path": str(tmp_path)}))
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"x")
    before = _hashes(folder)
    info = push_pipeline(folder, "org/allow")
    pushed = _pushed(fake_hub, "org/allow")
    expected = OURS | {"README.md"}
    assert set(pushed) - {".gitattributes"} == expected
    assert info.uploaded_files == sorted(expected)
    _assert_clean(pushed, tmp_path)
    assert _hashes(folder) == before  # the folder itself is left alone

    assert main(["push", str(folder), "org/allow-cli"]) == 0
    out = capsys.readouterr().out
    assert f"uploaded {len(expected)} files: README.md, config.json, configuration_spectrafm.py" in out
    assert "notes.txt" not in out and "secrets.yaml" not in out
    assert set(_pushed(fake_hub, "org/allow-cli")) - {".gitattributes"} == expected

    snapshot = install_to_cache(folder, "org/allow", cache_dir=tmp_path / "cache")  # the local cache: same list
    assert {p.name for p in snapshot.iterdir()} == OURS


def test_push_leaves_visibility_to_the_hub_unless_asked(fake_hub, tmp_path):  # noqa: F811
    fake_hub.default_private = True  # an organisation whose repos are private by default
    assert main(["push", str(TINY), "org/default"]) == 0
    push_pipeline(TINY, "org/default-api")
    assert main(["push", str(TINY), "org/public", "--public"]) == 0
    fake_hub.default_private = False
    assert main(["push", str(TINY), "org/private", "--private"]) == 0
    private = {repo: r.private for (kind, repo), r in fake_hub.repos.items()}
    assert private == {"org/default": True, "org/default-api": True, "org/public": False, "org/private": True}


def test_training_info_and_cards_hold_no_local_paths_or_host(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: HOST)
    data_dir, labels = tmp_path / "data", tmp_path / "labels.csv"
    config = {"model": {"model_name_or_path": str(tmp_path / "runs" / "pretrain" / "final")},
              "data": {"data_dir": str(data_dir), "label_table": str(labels), "cache": "~/.cache/spectra"},
              "training": {"output_dir": str(tmp_path / "runs" / "ft"),
                           "logging_dir": f"{tmp_path}/runs/ft/runs/Dec02_10-00-00_{HOST}", "learning_rate": 1e-4}}
    info = training_info(config=config, data={"train": 10, "source": f"read from {data_dir}/apogee.fits"}, seed=1)
    text = json.dumps(info)
    assert str(tmp_path) not in text and HOST not in text and os.path.expanduser("~") + "/" not in text
    assert info["config"]["training"]["learning_rate"] == 1e-4
    name = info["config"]["data"]["label_table"]
    assert name.startswith("labels.csv#") and name != info["config"]["data"]["data_dir"]  # names stay apart
    assert info["config"]["training"]["logging_dir"].startswith("Dec02_10-00-00_<host>#")
    assert info["hardware"]["platform"].count("-") == 1  # system-machine only, no kernel build

    kept = training_info(config=config, record_local_paths=True)  # the opt-in keeps everything
    assert kept["config"]["data"]["data_dir"] == str(data_dir)
    monkeypatch.setenv("SPECTRAFM_RECORD_LOCAL_PATHS", "1")
    assert training_info(config=config)["config"]["data"]["label_table"] == str(labels)
    monkeypatch.delenv("SPECTRAFM_RECORD_LOCAL_PATHS")

    # a folder written by an older version, with absolute paths in its record: the card and the push redact them
    folder = tmp_path / "old"
    shutil.copytree(TINY, folder)
    write_training_info(folder, {**kept, "metrics": {}})
    card = str(render_model_card(folder, repo_id="org/x", base_model=str(tmp_path / "base"),
                                 summary=f"trained in {tmp_path}"))
    assert str(tmp_path) not in card and HOST not in card
    assert str(tmp_path) in str(render_model_card(folder, repo_id="org/x", record_local_paths=True))
    assert redact_local_details({"u": "https://huggingface.co/org/x", "l": "[Fe/H]", "r": "runs/ft"}) == \
        {"u": "https://huggingface.co/org/x", "l": "[Fe/H]", "r": "runs/ft"}  # URLs, labels, relative paths stay
    assert info["config"]["data"]["cache"].startswith("spectra#")  # ~/ paths too
    win = redact_local_details({"p": "C:\\Users\\alice\\labels.csv"})["p"]
    assert win.startswith("labels.csv#") and "alice" not in win
    monkeypatch.chdir("/")  # relative to "/" would still spell the whole path
    assert redact_local_details({"p": str(data_dir)})["p"].startswith("data#")
    monkeypatch.chdir(tmp_path)  # inside the working directory: a relative name
    assert redact_local_details({"p": str(data_dir / "a.fits")})["p"] == "data/a.fits"


def test_pushed_training_info_of_an_old_folder_is_redacted(fake_hub, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(socket, "gethostname", lambda: HOST)
    folder = tmp_path / "old"
    shutil.copytree(TINY, folder)
    info = training_info(config={"data": {"data_dir": str(tmp_path / "data")},
                                 "training": {"logging_dir": f"{tmp_path}/runs/x_{HOST}"}},
                         record_local_paths=True)
    write_training_info(folder, {**info, "metrics": {}})
    before = _hashes(folder)
    push_pipeline(folder, "org/old")
    pushed = _pushed(fake_hub, "org/old")
    assert "training_info.json" in pushed
    _assert_clean(pushed, tmp_path)
    assert _hashes(folder) == before  # the local record is not rewritten


def test_training_run_pushes_only_allowed_files_and_keeps_the_output_dir(fake_hub, tmp_path, monkeypatch):  # noqa: F811
    from transformers import TrainingArguments

    from spectrafm_hf.training.run import DataArguments, ModelArguments, run_training

    monkeypatch.setattr(socket, "gethostname", lambda: HOST)
    out = tmp_path / "ft"
    before = _plant_user_files(out)  # a user keeps notes and secrets next to the run
    args = TrainingArguments(output_dir=str(out), max_steps=2, per_device_train_batch_size=4,
                             per_device_eval_batch_size=8, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                             save_steps=2, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                             push_to_hub=True, hub_model_id="astro/safe-ft", hub_strategy="checkpoint")
    margs = ModelArguments(model_name_or_path=str(TINY), target_labels=["FE_H"], freeze=["decoder"])
    dargs = DataArguments(dataset_config="observed_apogee", dataset_cache_dir=str(tmp_path / "data"),
                          dataset_kwargs={"n_train": 16, "n_validation": 8, "n_test": 8, "seed": 5},
                          pixel_range=[4107, 4619])
    run_training(margs, dargs, args)
    assert _planted(out, before) == before
    pushed = _pushed(fake_hub, "astro/safe-ft")
    top = {p for p in pushed if "/" not in p} - {".gitattributes"}
    assert top == OURS | {"training_info.json", "README.md"}, sorted(top)
    resumable = {p.split("/", 1)[1] for p in pushed if p.startswith("last-checkpoint/")}
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json", "model.safetensors"} <= resumable
    assert not {p for p in pushed if "/" in p and not p.startswith("last-checkpoint/")}  # no final/, runs/, ...
    assert not any(p.endswith("training_args.bin") for p in pushed)
    _assert_clean(pushed, tmp_path, out)
    record = json.loads((out / "final" / "training_info.json").read_text())
    assert str(tmp_path) not in json.dumps(record) and HOST not in json.dumps(record)


def test_trainer_push_to_hub_called_directly_uploads_the_allow_list_only(fake_hub, tmp_path, monkeypatch):  # noqa: F811
    """A user who calls ``trainer.push_to_hub()`` (or ``trainer.save_model()`` with ``push_to_hub=True``) on the
    package's Trainer gets the allow-listed push, not the Trainer's upload of the whole output_dir."""
    from transformers import TrainingArguments

    from spectrafm_hf.training.run import DataArguments, ModelArguments, run_training

    monkeypatch.setattr(socket, "gethostname", lambda: HOST)
    out = tmp_path / "ft"
    before = _plant_user_files(out)
    args = TrainingArguments(output_dir=str(out), max_steps=1, per_device_train_batch_size=4, save_strategy="no",
                             report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    margs = ModelArguments(model_name_or_path=str(TINY), target_labels=["FE_H"], lora_r=2)
    dargs = DataArguments(dataset_config="observed_apogee", dataset_cache_dir=str(tmp_path / "data"),
                          dataset_kwargs={"n_train": 8, "n_validation": 0, "n_test": 0, "seed": 5},
                          pixel_range=[4107, 4619])
    trainer, _ = run_training(margs, dargs, args)
    trainer.args.hub_model_id = "astro/direct-push"
    info = trainer.push_to_hub()
    pushed = _pushed(fake_hub, "astro/direct-push")
    top = {p for p in pushed if "/" not in p} - {".gitattributes"}
    assert top == OURS | {"README.md"}, sorted(top)  # merged weights, processor, code, card; nothing of output_dir
    assert set(info.uploaded_files) <= set(pushed)
    _assert_clean(pushed, tmp_path, out)
    assert _planted(out, before) == before
    trainer.args.push_to_hub = True
    trainer.save_model(str(tmp_path / "saved"))  # the Trainer pushes on save_model when push_to_hub is set
    assert {p for p in _pushed(fake_hub, "astro/direct-push") if "/" not in p} - {".gitattributes"} == top
    pulled = SpectraFMPipeline.from_pretrained("astro/direct-push", device="cpu")
    assert not any("lora" in k for k in pulled.model.state_dict())
