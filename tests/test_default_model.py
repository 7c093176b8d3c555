"""``AutoModel/AutoConfig/AutoFeatureExtractor.from_pretrained("spectrafm-base")`` in a new process, offline, with
an empty Hugging Face cache: ``import spectrafm_hf`` puts the embedded default there (and never replaces a real
download)."""

import json
import os
import subprocess
import sys

from conftest import REPO, TINY
from hub_fixtures import hub_cache  # noqa: F401  (fixture)

SCRIPT = r"""
import json, sys
import spectrafm_hf
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
out = {}
for name in ("spectrafm-base", "spectrafm/spectrafm-base"):
    cfg = AutoConfig.from_pretrained(name)
    model = AutoModel.from_pretrained(name)
    proc = AutoFeatureExtractor.from_pretrained(name)
    out[name] = [type(cfg).__name__, type(model).__name__, type(proc).__name__,
                 float(sum(p.double().sum() for p in model.parameters()))]
print(json.dumps(out))
"""


def _run(cache, extra_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent / "hf-home"),
               PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", **(extra_env or {}))
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)


def test_fresh_process_loads_the_default_by_name_offline(tmp_path):
    from safetensors.torch import load_file

    cache = tmp_path / "hub"
    result = _run(cache)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    embedded = load_file(REPO / "src/spectrafm_hf/resources/models/spectrafm-base/model.safetensors")
    total = float(sum(t.double().sum() for t in embedded.values()))
    for name in ("spectrafm-base", "spectrafm/spectrafm-base"):
        assert out[name][:3] == ["SpectraFMConfig", "SpectraFMModel", "SpectraFMProcessor"], name
        assert abs(out[name][3] - total) < 1e-6 * max(1.0, abs(total))  # the embedded weights
    assert (cache / "models--spectrafm--spectrafm-base" / "refs" / "main").is_file()
    # a second process finds it in place and does not rewrite it
    snapshot = next((cache / "models--spectrafm--spectrafm-base" / "snapshots").iterdir())
    mtime = snapshot.stat().st_mtime_ns
    assert _run(cache).returncode == 0 and snapshot.stat().st_mtime_ns == mtime


def test_a_real_download_is_never_replaced(tmp_path):
    from spectrafm_hf.default_model import ensure_default_model_in_cache

    repo = tmp_path / "models--spectrafm--spectrafm-base"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    done = ensure_default_model_in_cache(tmp_path)
    assert done == ["spectrafm-base"]  # only the alias was missing
    assert (repo / "refs" / "main").read_text() == "abc123"
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == ["abc123"]


def test_opt_out_and_unwritable_cache(tmp_path, monkeypatch):
    from spectrafm_hf.default_model import ensure_default_model_in_cache

    monkeypatch.setenv("SPECTRAFM_NO_CACHE_INSTALL", "1")
    assert ensure_default_model_in_cache(tmp_path / "a") == [] and not (tmp_path / "a").exists()
    monkeypatch.delenv("SPECTRAFM_NO_CACHE_INSTALL")
    blocked = tmp_path / "not-a-folder"  # a cache path that cannot be created (works as root too)
    blocked.write_text("a file")
    assert ensure_default_model_in_cache(blocked / "hub") == []
    assert blocked.read_text() == "a file"


def test_the_hub_id_resolves_to_the_embedded_default_offline_with_an_empty_cache(hub_cache, monkeypatch):  # noqa: F811
    from pathlib import Path

    import pytest

    # run alone, this is the first `import spectrafm_hf`, which would install the default into the empty cache
    monkeypatch.setenv("SPECTRAFM_NO_CACHE_INSTALL", "1")
    from spectrafm_hf.hub import CheckpointNotFoundError, embedded_checkpoints, resolve_model

    embedded = embedded_checkpoints()["spectrafm-base"]
    assert not any(hub_cache.iterdir())  # nothing cached, the Hub not allowed
    assert Path(resolve_model("spectrafm/spectrafm-base")) == embedded
    assert Path(resolve_model("spectrafm/spectrafm-base", local_files_only=True)) == embedded
    with pytest.raises(CheckpointNotFoundError):  # a given revision is not the embedded copy
        resolve_model("spectrafm/spectrafm-base", revision="v2")
    with pytest.raises(CheckpointNotFoundError):  # and another org's model is not the default
        resolve_model("other/spectrafm-base")


def test_base_model_names_the_default_by_its_hub_id(tmp_path):
    from spectrafm_hf.default_model import DEFAULT_MODEL_ID, base_model_id
    from spectrafm_hf.hub import embedded_checkpoints, install_to_cache

    embedded = embedded_checkpoints()["spectrafm-base"]
    cached = install_to_cache(embedded, DEFAULT_MODEL_ID, cache_dir=tmp_path / "hub")  # a cache snapshot folder
    for start in ("spectrafm-base", DEFAULT_MODEL_ID, embedded, str(embedded), cached):
        assert base_model_id(start) == DEFAULT_MODEL_ID, start
    assert base_model_id("astro/my-pretrain") == "astro/my-pretrain"  # a Hub id stays as it is
    own = install_to_cache(TINY, "spectrafm-base", cache_dir=tmp_path / "hub")  # the user's, under the alias
    for start in (TINY, str(TINY), own, "runs/pretrain/final", "bare-name", None):
        assert base_model_id(start) is None, start  # a local folder or bare name: the Hub cannot link it


def test_a_card_from_a_record_of_the_embedded_default_links_its_hub_id(tmp_path):
    import shutil
    import warnings

    from spectrafm_hf.hub import embedded_checkpoints, render_model_card

    folder = tmp_path / "ft"
    shutil.copytree(TINY, folder)
    for start, expected in ((str(embedded_checkpoints()["spectrafm-base"]), "spectrafm/spectrafm-base"),
                            ("spectrafm-base", "spectrafm/spectrafm-base"), (str(TINY), None)):
        (folder / "training_info.json").write_text(json.dumps({"config": {"model": {"model_name_or_path": start}}}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the local path's "no Hub base model" warning
            card = render_model_card(folder)
        assert card.data.base_model == expected, start
        assert str(tmp_path) not in card.text and str(TINY) not in card.text  # local paths stay redacted


def test_embedded_models_carry_the_code_of_the_package_they_ship_in():
    """Every embedded checkpoint's code files (for trust_remote_code users without the package) are byte-identical to
    the package's: a copy saved before a later change (e.g. uncertainty_scale, renormalize_coverage) would give those
    users an older processor. scripts/embed_default_model.py copies them from the package."""
    from spectrafm_hf.checkpoint_folder import CODE_FILES, PACKAGE_DIR
    from spectrafm_hf.hub import embedded_checkpoints

    assert {"spectrafm-base", "spectrafm-synthetic"} <= set(embedded_checkpoints())
    for name, folder in embedded_checkpoints().items():
        for code in CODE_FILES:
            assert (folder / code).read_bytes() == (PACKAGE_DIR / code).read_bytes(), f"{name}/{code} is stale"
