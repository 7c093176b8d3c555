"""The default model's Hub name, and its copy in the local Hugging Face cache.

``spectrafm-base`` ships inside the package (``resources/models/spectrafm-base``). So that plain transformers calls
find it offline on a fresh install, ``import spectrafm_hf`` copies it once into the Hugging Face hub cache under
its Hub id :data:`DEFAULT_MODEL_ID` and the short alias :data:`DEFAULT_MODEL_ALIAS`::

    >>> import spectrafm_hf                                                    # doctest: +SKIP
    >>> from transformers import AutoModel
    >>> AutoModel.from_pretrained("spectrafm-base")       # or "spectrafm/spectrafm-base"; no network needed

A cache entry of that name that the package did not write (a real download from the Hub) is never touched; an
entry it wrote for another package version is replaced. ``SPECTRAFM_NO_CACHE_INSTALL=1`` turns this off, and a
cache that cannot be written is skipped silently (loading then needs the Hub or ``spectrafm install``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_MODEL_ALIAS", "DEFAULT_MODEL_ID", "ensure_default_model_in_cache", "is_default_model",
           "base_model_id"]

DEFAULT_MODEL_ID = "spectrafm/spectrafm-base"
DEFAULT_MODEL_ALIAS = "spectrafm-base"
_MARKER = ".installed-by-spectrafm_hf"  # beside snapshots/ and refs/, never inside a snapshot


def _repo_dir(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _embedded() -> Path:
    return Path(__file__).resolve().parent / "resources" / "models" / DEFAULT_MODEL_ALIAS


def is_default_model(name_or_path: str | os.PathLike) -> bool:
    """Whether a start checkpoint (as given to ``from_pretrained`` or ``model_name_or_path``) is the package's
    default model: its Hub id or alias (when no local folder of that name shadows it), the embedded folder, or
    its copy in a Hugging Face cache (a snapshot of ``models--spectrafm--spectrafm-base``, or of
    ``models--spectrafm-base`` when this package wrote it)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return str(name_or_path) in (DEFAULT_MODEL_ID, DEFAULT_MODEL_ALIAS)
    path = path.resolve()
    if path == _embedded():
        return True
    if path.parent.name != "snapshots":
        return False
    repo = path.parent.parent
    if repo.name == _repo_dir(Path(), DEFAULT_MODEL_ID).name:
        return True
    return repo.name == _repo_dir(Path(), DEFAULT_MODEL_ALIAS).name and (repo / _MARKER).is_file()


def base_model_id(name_or_path: str | os.PathLike | None) -> str | None:
    """The Hub id a fine-tune card names as ``base_model`` for its start checkpoint: :data:`DEFAULT_MODEL_ID` for
    the default model (:func:`is_default_model`), an ``org/name`` Hub id as it is, nothing (None) for a local
    folder or a bare name, which the Hub could not link to."""
    if name_or_path is None or str(name_or_path) == "":
        return None
    if is_default_model(name_or_path):
        return DEFAULT_MODEL_ID
    name = str(name_or_path)
    if name.count("/") != 1 or Path(name).expanduser().exists():
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def ensure_default_model_in_cache(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Install the embedded default model into the HF cache under its Hub id and alias where missing or written
    by another version of this package. Returns the repo ids (re)installed."""
    from . import __version__

    if os.environ.get("SPECTRAFM_NO_CACHE_INSTALL", "").strip() not in ("", "0"):
        return []
    from huggingface_hub import constants

    cache = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()
    embedded = _embedded()
    done = []
    for repo_id in (DEFAULT_MODEL_ID, DEFAULT_MODEL_ALIAS):
        repo = _repo_dir(cache, repo_id)
        marker = repo / _MARKER
        ref = repo / "refs" / "main"
        if ref.is_file():
            if not marker.is_file():
                continue  # a real download from the Hub: not ours to replace
            if marker.read_text().strip() == __version__ and (repo / "snapshots" / ref.read_text().strip()).is_dir():
                continue  # already there
        try:
            from .hub import install_to_cache

            install_to_cache(embedded, repo_id, cache_dir=cache)
            marker.write_text(__version__ + "\n")
            done.append(repo_id)
        except OSError:
            break  # a read-only or full cache: leave it
    return done
