"""Finding checkpoints and installing them into the Hugging Face cache (and, re-exported, the other Hub jobs).

Where a checkpoint name is looked up
------------------------------------
``SpectraFMPipeline.from_pretrained(name)`` (through :func:`resolve_model`) looks, in this order, for:

1. a **local folder** of that name (relative to the working directory, or an absolute path);
2. a checkpoint **embedded in the package** under ``src/spectrafm_hf/resources/models/<name>``
   (:data:`EMBEDDED_DIR`, listed by :func:`embedded_checkpoints`);
3. the **Hugging Face cache** (``$HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``):
   ``models--<org>--<name>/refs/main`` and ``snapshots/<revision>/``. :func:`install_to_cache` (the
   ``spectrafm install`` command) puts a checkpoint folder there, after which ``SpectraFMPipeline.from_pretrained
   ("spectrafm-base")`` and, once ``spectrafm_hf`` is imported, ``AutoModel.from_pretrained("spectrafm-base")``
   work with ``HF_HUB_OFFLINE=1``;
4. the **Hub** (``$HF_ENDPOINT``), unless offline (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``).

Cases 3 and 4 return the name unchanged and let ``from_pretrained`` do the lookup. The default model's Hub id
``spectrafm/spectrafm-base`` (:data:`~spectrafm_hf.default_model.DEFAULT_MODEL_ID`), asked for offline with nothing
of that name in the cache, resolves to the embedded ``spectrafm-base`` (the same model). When the name is in none of
1-3 and the Hub may not be asked, :func:`resolve_model` raises :class:`CheckpointNotFoundError` listing what it
looked for. ``transformers.AutoModel.from_pretrained`` itself only knows 1, 3 and 4.
Where the other Hub jobs live
-----------------------------
This module finds checkpoints and installs them into the cache. It re-exports the names of the modules below, so
``from spectrafm_hf.hub import ...`` keeps working for every public name it had:

- `spectrafm_hf.checkpoint_folder`: the allow-list of files a checkpoint folder holds, recognising a folder of
  ours, adding the model code files (:func:`ensure_remote_code`), redacting local paths and host details;
- `spectrafm_hf.safe_write`: :func:`atomic_directory`, writes that never delete or replace the user's files;
- `spectrafm_hf.cards`: :func:`render_model_card` / :func:`render_dataset_card` from the ``hub_cards/`` templates;
- `spectrafm_hf.publish`: :func:`push_pipeline` and Trainer checkpoint pushes, from the allow-list only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .cards import (  # noqa: F401  (re-exported: spectrafm_hf.hub was one module)
    CARD_TEMPLATE_DIRS, METRIC_ALIASES, METRIC_NAMES, PAPER_URL, SPECTRAFM_CITATION, SPLIT_PREFIXES, SURVEY_CITATIONS,
    TAGS, render_dataset_card, render_model_card,
)
from .checkpoint_folder import (  # noqa: F401
    AUTO_MAP, CODE_FILES, PACKAGE_DIR, _read_json, _write_json, ensure_remote_code, is_spectrafm_folder,
    redact_local_details,
)
from .checkpoint_folder import as_folder as _as_folder
from .checkpoint_folder import checkpoint_files as _checkpoint_files  # noqa: F401
from .checkpoint_folder import stage as _stage
from .default_model import DEFAULT_MODEL_ALIAS, DEFAULT_MODEL_ID
from .publish import push_pipeline, push_trainer_checkpoint  # noqa: F401
from .safe_write import ForeignFolderError, atomic_directory  # noqa: F401

__all__ = [
    "resolve_model",
    "atomic_directory",
    "ForeignFolderError",
    "embedded_checkpoints",
    "EMBEDDED_DIR",
    "CheckpointNotFoundError",
    "ensure_remote_code",
    "install_to_cache",
    "render_model_card",
    "render_dataset_card",
    "push_pipeline",
    "CODE_FILES",
    "SPECTRAFM_CITATION",
]

EMBEDDED_DIR = PACKAGE_DIR / "resources" / "models"
# Old names, kept importable but no longer used: which files are copied or uploaded is now the explicit allow-list
# spectrafm_hf.checkpoint_folder.CHECKPOINT_FILES (a suffix rule took every .txt/.yaml/.json, secrets included).
CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".py", ".md")
CHECKPOINT_EXCLUDE = ("trainer_state.json", "training_args.json")


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint name found neither as a folder, nor embedded in the package, nor in the HF cache (offline)."""


# ---------------------------------------------------------------------------------------------------- lookup
def embedded_checkpoints() -> dict[str, Path]:
    """Checkpoints shipped inside the package, by name (e.g. ``spectrafm-base``)."""
    if not EMBEDDED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(EMBEDDED_DIR.iterdir()) if (p / "config.json").is_file()}


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_cache(cache_dir=None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()


def _cache_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def resolve_model(
    name_or_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
) -> str:
    """Where to load ``name_or_path`` from (see the module docstring for the lookup order).

    Returns a folder path (cases 1 and 2) or the name unchanged (case 3, HF cache, and case 4, Hub), for
    ``from_pretrained``. ``cache_dir``/``revision``/``local_files_only`` are those given to ``from_pretrained``.

    Raises:
        CheckpointNotFoundError: the name is not a folder, not embedded, not a valid Hub repo id, or - when the Hub
            may not be asked (``HF_HUB_OFFLINE=1`` or ``local_files_only``) - not in the HF cache either. The
            message lists every place looked at and how to fix it.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    name = str(name_or_path)
    embedded = embedded_checkpoints()
    if name in embedded:
        return str(embedded[name])

    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    looked = [
        f"a local folder {str(path.absolute())!r} (does not exist)",
        f"a checkpoint embedded in the package under {EMBEDDED_DIR / name} (embedded: "
        f"{', '.join(embedded) or 'none'})",
    ]
    hint = (
        "Run `spectrafm install --model <checkpoint folder> --repo-id <name>` (spectrafm_hf.hub.install_to_cache) "
        "to put a checkpoint into the Hugging Face cache under that name, or pass the path of a checkpoint folder."
    )
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise CheckpointNotFoundError(
            f"No SpectraFM checkpoint {name!r}: it is not an existing folder and not a valid Hugging Face repo id. "
            f"Looked for {'; '.join(looked)}. {hint}"
        ) from None
    if not (local_files_only or _offline()):
        return name  # from_pretrained looks in the HF cache, then asks the Hub
    if isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache_dir, revision=revision), str):
        return name  # in the HF cache: from_pretrained loads it offline
    if name == DEFAULT_MODEL_ID and revision in (None, "main") and DEFAULT_MODEL_ALIAS in embedded:
        return str(embedded[DEFAULT_MODEL_ALIAS])  # the default's Hub id, offline with nothing cached: the same model
    cache = _hub_cache(cache_dir)
    looked.append(f"the Hugging Face cache {cache / _cache_folder(name)} (no snapshot with a config.json for "
                  f"revision {revision or 'main'!r})")
    reason = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
    raise CheckpointNotFoundError(
        f"SpectraFM checkpoint {name!r} not found. Looked for {'; '.join(looked)}. The Hub was not asked "
        f"({reason}). {hint}"
    )



def install_to_cache(
    folder: str | os.PathLike, repo_id: str = "spectrafm-base", cache_dir: str | os.PathLike | None = None
) -> Path:
    """Copy a pipeline folder into the Hugging Face hub cache as ``repo_id``, so that
    ``SpectraFMPipeline.from_pretrained(repo_id)`` and (after ``import spectrafm_hf``)
    ``AutoModel.from_pretrained(repo_id)`` load it with ``HF_HUB_OFFLINE=1``; ``trust_remote_code=True`` works too,
    since the model code files are added when missing.

    The layout is the one ``huggingface_hub`` writes: ``<cache>/models--<org>--<name>/snapshots/<revision>/`` with
    the files and ``refs/main`` holding ``<revision>``, a 40-hex digest of the content (installing the same folder
    twice gives the same snapshot; a different checkpoint gets a new snapshot and ``refs/main`` moves to it).

    Args:
        folder: a saved pipeline folder (config.json, model.safetensors, preprocessor_config.json, ...).
        repo_id: the name to load it by (``"name"`` or ``"org/name"``).
        cache_dir: the hub cache (default ``huggingface_hub.constants.HF_HUB_CACHE``, i.e. ``$HF_HUB_CACHE``).

    Returns:
        the snapshot folder.
    """
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)
    repo_dir = _hub_cache(cache_dir) / _cache_folder(repo_id)
    (repo_dir / "snapshots").mkdir(parents=True, exist_ok=True)
    with _as_folder(folder) as src:
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=repo_dir))
        try:
            _stage(src, staging, record_local=True)  # a local copy: kept as it is
            digest = hashlib.sha1()
            for p in sorted(staging.iterdir()):
                file_hash = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        file_hash.update(block)
                digest.update(p.name.encode() + b"\0" + file_hash.digest())
            revision = digest.hexdigest()
            snapshot = repo_dir / "snapshots" / revision
            if snapshot.is_dir():
                shutil.rmtree(staging)
            else:
                os.chmod(staging, 0o755)
                os.replace(staging, snapshot)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    (repo_dir / "refs").mkdir(exist_ok=True)
    tmp = repo_dir / "refs" / f".main.tmp-{os.getpid()}"
    tmp.write_text(revision)
    os.replace(tmp, repo_dir / "refs" / "main")
    return snapshot

