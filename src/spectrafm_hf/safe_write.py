"""Writing a checkpoint folder without ever destroying what is there (:func:`atomic_directory`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .checkpoint_folder import foreign_entries, is_spectrafm_folder, is_weights_file

__all__ = ["atomic_directory", "check_target", "ForeignFolderError"]


class ForeignFolderError(FileExistsError):
    """The target folder holds files that are not a SpectraFM checkpoint's; nothing was written."""


def check_target(target, overwrite: bool = False):
    """Raise what :func:`atomic_directory` would raise for ``target`` (before any work is done)."""
    target = Path(target).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"cannot save a checkpoint into {target}: it exists and is not a folder")
    if not target.is_dir() or overwrite or is_spectrafm_folder(target):
        return
    visible = sorted(p.name for p in target.iterdir() if not p.name.startswith("."))
    if not visible:
        return  # empty, or only hidden entries (.git of a fresh clone): nothing of the user's can be replaced
    foreign = foreign_entries(target)
    if foreign:  # the user's files: data, notes, sub-folders
        what = "holds other files"
    else:  # only names a checkpoint uses, but not a SpectraFM checkpoint (another model, or no config.json)
        foreign, what = visible, f"holds a checkpoint that is not a SpectraFM one ({_model_type(target)})"
    shown = ", ".join(foreign[:8]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 8 else "")
    raise ForeignFolderError(
        f"refusing to save a checkpoint into {target}: the folder is not a SpectraFM model folder and {what}: "
        f"{shown}. Choose a new or empty folder, or pass overwrite=True to write the checkpoint's files there "
        "anyway (only config.json, the weights, preprocessor_config.json and the other checkpoint files are "
        "replaced; nothing else is touched)."
    )


def _model_type(folder: Path) -> str:
    try:
        return f"config.json has model_type {json.loads((folder / 'config.json').read_text()).get('model_type')!r}"
    except (OSError, ValueError, AttributeError):
        return "no readable config.json"


def _umask_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder to write a checkpoint into; on success its files land in ``target``, on error it is
    removed and ``target`` is left as it was.

    Never destroys: no file of ``target`` is deleted or replaced except the checkpoint files we write.

    - ``target`` missing (or empty): the temporary folder beside it is renamed into place in one step, so a crash
      never leaves a half-written checkpoint there.
    - ``target`` is a SpectraFM model folder of ours (its ``config.json`` has ``model_type: spectrafm`` and every
      other visible entry is a file we write: weights, ``preprocessor_config.json``, ``training_info.json``, code
      files, ``README.md``; see `spectrafm_hf.checkpoint_folder`), or ``overwrite=True``: the new files are written
      completely in a hidden temporary folder inside ``target``, then moved in one by one (``os.replace``, atomic
      per file; ``config.json`` last). Stale weight files of an earlier save (``model-0000x-of-0000y.safetensors``,
      the index) are removed so the folder cannot mix two checkpoints; every other file stays.
      A folder holding only hidden entries (``.git`` of a fresh clone) is written the same way; hidden entries are
      never touched.
    - ``target`` holds anything else (the user's files, or another model's checkpoint): `ForeignFolderError` (a
      `FileExistsError`) naming the folder and those files, before anything is written.
    """
    target = Path(target).expanduser().resolve()
    check_target(target, overwrite)
    merge = target.is_dir() and any(target.iterdir())
    if merge:  # inside the target: same file system, and no write permission on its parent needed
        tmp = Path(tempfile.mkdtemp(prefix=".spectrafm-save-", dir=target))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes 0700; the final folder should look like any other
    try:
        yield str(tmp)
        if not merge:
            try:
                os.replace(tmp, target)  # replaces a missing or empty folder in one step
                return
            except OSError:
                if not target.is_dir():
                    raise
                check_target(target, overwrite)  # someone wrote into it meanwhile
        _move_into(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into(tmp: Path, target: Path):
    new = sorted(p.name for p in tmp.iterdir())
    for entry in new:
        existing = target / entry
        if (tmp / entry).is_dir() and existing.exists():
            raise FileExistsError(f"cannot move the new folder {entry} into {target}: {existing} exists")
        if existing.is_dir() and not existing.is_symlink():
            raise IsADirectoryError(f"cannot write {entry} into {target}: a folder of that name is there")
    written = set(new)
    if any(is_weights_file(n) for n in written):
        for p in target.iterdir():  # an earlier save's weights must not stay beside the new ones
            if p.is_file() and is_weights_file(p.name) and p.name not in written:
                p.unlink()
    for entry in sorted(new, key=lambda n: n == "config.json"):  # config.json last: it makes the folder loadable
        os.replace(tmp / entry, target / entry)
