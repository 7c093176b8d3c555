"""Publishing to the Hub only what belongs there: a pipeline folder's checkpoint files (:func:`push_pipeline`) and a
Trainer checkpoint (:func:`push_trainer_checkpoint`), each from an explicit allow-list.

Uploaded from a folder: the files of `spectrafm_hf.checkpoint_folder.is_checkpoint_file` (``config.json``, the
``*.safetensors`` weights and their index, ``preprocessor_config.json``, ``training_info.json`` with local paths and
host details redacted, the model code files, ``README.md``) and, for a resumable Trainer checkpoint, its optimizer,
scheduler, scaler, RNG and ``trainer_state.json`` files. Nothing else: not ``notes.txt``, ``secrets.yaml``,
``credentials.json``, ``.env``, ``training_args.bin`` (a pickle holding local paths and the host name), logs or
sub-folders. The list of uploaded files is returned (``CommitInfo.uploaded_files``).

``private=None`` (the default) leaves the visibility of a new repo to the Hub (the account's or organisation's
default); an existing repo keeps its visibility. ``revision``: the branch to commit to, created from ``main`` when
missing (the Trainer's ``hub_revision``: checkpoints and the final model land there, ``main`` is left alone).
``token``: sent with every request of the push (default: the logged-in token or ``HF_TOKEN``). Every push carries
the model code files and ``auto_map``, so ``AutoModel.from_pretrained(repo, revision=..., trust_remote_code=True)``
loads any pushed revision (and a checkpoint's ``subfolder``) without ``spectrafm_hf``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .checkpoint_folder import (
    _read_json,
    _write_json,
    as_folder,
    is_weights_file,
    record_local_details,
    redact_local_details,
    stage,
)

__all__ = ["push_pipeline", "push_trainer_checkpoint", "TRAINER_STATE_FILES"]

# The files of a Trainer checkpoint-N/ folder needed to resume from it (besides the model files).
TRAINER_STATE_FILES = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|trainer_state\.json)$")


def _check_online(repo_id: str):
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    if constants.HF_HUB_OFFLINE:
        raise OfflineModeIsEnabled(
            f"Cannot push to {repo_id!r}: offline mode is enabled (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE to push."
        )


def _ensure_branch(api, repo_id: str, revision: str | None):
    """Create branch ``revision`` (from main) when it does not exist yet, so that pushes to a new
    ``hub_revision`` land there (the Hub refuses a commit to a missing branch). ``refs/...`` (a pull request) and
    commit ids are left alone."""
    if not revision or revision == "main" or revision.startswith("refs/") or re.fullmatch(r"[0-9a-f]{40}", revision):
        return
    api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)


def _stale_weights(api, repo_id: str, revision: str | None, uploaded: list[str]) -> list[str] | None:
    """Top-level weight files of the repo that this upload does not replace (an earlier sharded save), by exact
    name: a pattern such as ``*.safetensors`` would also delete ``last-checkpoint/`` and ``checkpoint-N/`` weights."""
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        files = api.list_repo_files(repo_id, repo_type="model", revision=revision)
    except RevisionNotFoundError:
        return None
    stale = [f for f in files if "/" not in f and is_weights_file(f) and f not in uploaded]
    return stale or None


def _uploaded(staging: Path) -> list[str]:
    return sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())


def push_pipeline(
    folder,
    repo_id: str,
    card=None,
    commit_message: str = "Upload SpectraFM pipeline",
    private: bool | None = None,
    token: str | None = None,
    *,
    revision: str | None = None,
    create_pr: bool = False,
    card_info: Mapping | None = None,
    record_local_paths: bool | None = None,
):
    """Upload a pipeline folder (or a `SpectraFMPipeline`) to the Hub as model repo ``repo_id``.

    The repo is created if needed (``exist_ok``; ``private=None`` = the Hub's default visibility). Uploaded, from an
    allow-list (see the module docstring): the folder's top-level checkpoint files, the model code files and
    ``auto_map`` when missing (so ``AutoModel.from_pretrained(repo_id, trust_remote_code=True)`` works without
    ``spectrafm_hf``), and ``README.md``: ``card`` (a `ModelCard` or its text) if given, else the folder's
    README.md, else ``render_model_card(folder, repo_id=repo_id, **card_info)``. ``training_info.json`` and the
    generated card hold no absolute local paths or host details unless ``record_local_paths=True`` (or
    ``SPECTRAFM_RECORD_LOCAL_PATHS=1``). Stale top-level weight files in the repo (shards of an earlier save) are
    deleted in the same commit; sub-folders such as ``last-checkpoint/`` are kept. The folder itself is not
    modified.

    Raises:
        huggingface_hub.errors.OfflineModeIsEnabled: at once when ``HF_HUB_OFFLINE=1``.

    Returns:
        `huggingface_hub.CommitInfo` of the upload commit, with ``uploaded_files``: the paths uploaded.
    """
    from huggingface_hub import HfApi

    from .cards import render_model_card

    _check_online(repo_id)
    with as_folder(folder) as src, tempfile.TemporaryDirectory(prefix="spectrafm-push-") as tmp:
        staging = Path(tmp) / "repo"
        stage(Path(src), staging, link_weights=True, record_local=record_local_paths)
        readme = staging / "README.md"
        if card is None and not readme.is_file():
            card = render_model_card(staging, repo_id=repo_id, record_local_paths=record_local_paths,
                                     **dict(card_info or {}))
        if card is not None:
            if readme.exists():
                readme.unlink()  # a copy, but never write through a link
            text = str(card)  # a ModelCard prints as its full text (front matter + body)
            readme.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        uploaded = _uploaded(staging)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        _ensure_branch(api, repo_id, revision)
        info = api.upload_folder(
            folder_path=staging,
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            delete_patterns=_stale_weights(api, repo_id, revision, uploaded),
        )
    info.uploaded_files = uploaded
    return info


def push_trainer_checkpoint(checkpoint_folder, repo_id: str, *, path_in_repo: str | None = None,
                            commit_message: str = "Training in progress", token: str | None = None,
                            revision: str | None = None, record_local_paths: bool | None = None):
    """Upload a Trainer ``checkpoint-N/`` folder: its model files at the repo's top level and, when
    ``path_in_repo`` is given (``last-checkpoint`` or ``checkpoint-N``), the model files plus what resuming needs
    (:data:`TRAINER_STATE_FILES`) under that folder; both with the model code files. Allow-listed like
    :func:`push_pipeline`; ``trainer_state.json`` and ``training_info.json`` are redacted. ``revision``: the branch,
    created when missing. The repo must exist (the Trainer creates it). Returns the `CommitInfo` with
    ``uploaded_files``."""
    from huggingface_hub import HfApi

    _check_online(repo_id)
    checkpoint_folder = Path(checkpoint_folder)
    with tempfile.TemporaryDirectory(prefix="spectrafm-push-") as tmp:
        staging = Path(tmp) / "repo"
        stage(checkpoint_folder, staging, link_weights=True, record_local=record_local_paths)
        if path_in_repo:
            sub = staging / path_in_repo
            stage(checkpoint_folder, sub, link_weights=True, record_local=record_local_paths)
            for p in sorted(checkpoint_folder.iterdir()):
                if p.is_file() and TRAINER_STATE_FILES.match(p.name):
                    shutil.copyfile(p, sub / p.name)
            state = sub / "trainer_state.json"
            if state.is_file() and not record_local_details(record_local_paths):
                _write_json(state, redact_local_details(_read_json(state)))
        uploaded = _uploaded(staging)
        api = HfApi(token=token)
        _ensure_branch(api, repo_id, revision)
        info = api.upload_folder(
            folder_path=staging, repo_id=repo_id, repo_type="model", commit_message=commit_message,
            revision=revision,  # no deletes: '*.safetensors' would also match the other checkpoint-N/ folders
        )
    info.uploaded_files = uploaded
    return info

