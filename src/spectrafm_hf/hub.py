"""Finding checkpoints (local folders, checkpoints embedded in the package, the Hugging Face cache) and writing
folders atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["resolve_model", "atomic_directory", "embedded_checkpoints", "EMBEDDED_DIR"]

EMBEDDED_DIR = Path(__file__).resolve().parent / "resources" / "models"


def embedded_checkpoints() -> dict[str, Path]:
    """Checkpoints shipped inside the package, by name (e.g. ``spectrafm-base``)."""
    if not EMBEDDED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(EMBEDDED_DIR.iterdir()) if (p / "config.json").is_file()}


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Where to load ``name_or_path`` from, in this order:

    1. an existing local folder of that name;
    2. a checkpoint of that name embedded in the package (``spectrafm-base`` is the default model);
    3. otherwise the name unchanged, for ``from_pretrained`` to look up in the Hugging Face cache / the Hub.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    embedded = embedded_checkpoints()
    if str(name_or_path) in embedded:
        return str(embedded[str(name_or_path)])
    return str(name_or_path)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike):
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` in one rename, on error it is
    removed, so a crash never leaves a half-written checkpoint at ``target``."""
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the final folder should look like any other
    try:
        yield str(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
