"""pytest fixtures that point huggingface_hub, transformers and datasets at a `FakeHub` on 127.0.0.1.

Use from any test module::

    from hub_fixtures import fake_hub, hub_cache  # noqa: F401  (pytest finds the fixtures by name)

    def test_x(fake_hub):
        ...  # HfApi(), push_to_hub, from_pretrained("org/x"), load_dataset("org/d") all talk to fake_hub

The suite runs with ``HF_HUB_OFFLINE=1`` (tests/conftest.py); ``fake_hub`` turns it off for that one test only.
``huggingface_hub`` reads ``HF_ENDPOINT``/``HF_HUB_OFFLINE`` into module constants at import time, transformers
keeps one ``HfApi`` and ``datasets`` keeps its own copies, so the fixture patches all of them (monkeypatch undoes it).
For a child process, use ``fake_hub.client_env(hf_home)`` as its environment instead.
"""

from __future__ import annotations

import socket

import pytest

from fake_hub import FakeHub

__all__ = ["FakeHub", "fake_hub", "hub_cache", "point_clients_at", "loopback_only"]
LOOPBACK = ("127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost")


def point_clients_at(monkeypatch, endpoint: str | None, cache_dir, offline: bool = False):
    """Patch the Hub endpoint, offline flag and hub cache of huggingface_hub / transformers / datasets."""
    import huggingface_hub.constants as constants
    import transformers.utils.hub as thub

    import huggingface_hub.hf_api as hf_api

    if endpoint is not None:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # behind huggingface_hub.upload_file & co
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the fake speaks plain LFS, not Xet
        monkeypatch.setenv("HF_TOKEN", "hf_fake")  # never send a real token, even to 127.0.0.1
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(thub, "_hf_api", None)  # transformers' shared HfApi remembers the endpoint
    try:
        import datasets.config as dcfg
    except ImportError:
        return
    if endpoint is not None:
        monkeypatch.setattr(dcfg, "HF_ENDPOINT", endpoint)
        monkeypatch.setattr(dcfg, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(dcfg, "HF_HUB_OFFLINE", offline)


def loopback_only(monkeypatch):
    """Make any name lookup other than the loopback fail at once: no test may reach another address."""
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in LOOPBACK:
            raise socket.gaierror(socket.EAI_NONAME, f"blocked by the test suite: {host!r} is not the loopback")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running `FakeHub` with every Hub client of this process pointed at it (cache in tmp_path/hf-cache)."""
    with FakeHub(tmp_path / "fake-hub-store") as hub:
        point_clients_at(monkeypatch, hub.endpoint, tmp_path / "hf-cache", offline=False)
        loopback_only(monkeypatch)
        yield hub
        assert not hub.errors, "the fake hub failed on a request:\n" + "\n".join(hub.errors)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache in tmp_path, with offline mode on (as in the rest of the suite)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    point_clients_at(monkeypatch, None, cache, offline=True)
    return cache
