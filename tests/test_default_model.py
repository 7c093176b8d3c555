"""``AutoModel/AutoConfig/AutoFeatureExtractor.from_pretrained("spectrafm-base")`` in a new process, offline, with
an empty Hugging Face cache: ``import spectrafm_hf`` puts the embedded default there (and never replaces a real
download)."""

import json
import os
import subprocess
import sys

from conftest import REPO

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
