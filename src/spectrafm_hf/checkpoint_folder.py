"""What a SpectraFM checkpoint folder holds, and nothing else: the allow-list of files we write, recognising a folder
of ours, adding the model code files, staging a copy for the cache or the Hub, and keeping local paths and host
details out of the files that leave the machine.

The files we write (:func:`is_checkpoint_file`): ``config.json``, ``generation_config.json``,
``preprocessor_config.json``, ``training_info.json``, ``README.md`` (the card), the weights ``model.safetensors`` or
its shards ``model-00001-of-00002.safetensors`` with ``model.safetensors.index.json``, and the code files
(:data:`CODE_FILES`). Anything else in a folder (notes, secrets, data, sub-folders) is the user's: it is never
copied into the cache, never uploaded, never replaced or deleted.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

__all__ = ["PACKAGE_DIR", "CODE_FILES", "AUTO_MAP", "PROCESSOR_AUTO_MAP", "CHECKPOINT_FILES", "is_checkpoint_file", "checkpoint_files",
           "is_spectrafm_folder", "foreign_entries", "ensure_remote_code", "record_local_details",
           "redact_local_details", "RECORD_LOCAL_DETAILS_ENV"]

PACKAGE_DIR = Path(__file__).resolve().parent
# Remote code: flat siblings that import only numpy/torch/transformers and each other (the processor's continuum
# fits of raw flux need the package and say so)
CODE_FILES = ("configuration_spectrafm.py", "modeling_spectrafm.py", "processing_spectrafm.py", "spectrum.py")
PROCESSOR_AUTO_MAP = {"AutoFeatureExtractor": "processing_spectrafm.SpectraFMProcessor"}
AUTO_MAP = {"AutoConfig": "configuration_spectrafm.SpectraFMConfig", "AutoModel": "modeling_spectrafm.SpectraFMModel",
            **PROCESSOR_AUTO_MAP}
CHECKPOINT_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "training_info.json",
                    "README.md", "model.safetensors", "model.safetensors.index.json", *CODE_FILES)
WEIGHT_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
MODEL_TYPE = "spectrafm"
RECORD_LOCAL_DETAILS_ENV = "SPECTRAFM_RECORD_LOCAL_PATHS"


def is_checkpoint_file(name: str) -> bool:
    """Whether a top-level file name is one we write into a checkpoint folder (the allow-list above)."""
    return name in CHECKPOINT_FILES or bool(WEIGHT_SHARD.match(name))


def is_weights_file(name: str) -> bool:
    return name in ("model.safetensors", "model.safetensors.index.json") or bool(WEIGHT_SHARD.match(name))


def checkpoint_files(folder: Path) -> list[Path]:
    """The allow-listed files of ``folder`` (top level only, regular files; never sub-folders)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_checkpoint_file(p.name))


def foreign_entries(folder: Path) -> list[str]:
    """Names in ``folder`` that are not files we write (hidden entries such as ``.git`` are left out)."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if not p.name.startswith(".") and not (p.is_file() and is_checkpoint_file(p.name)))


def is_spectrafm_folder(folder) -> bool:
    """A model folder of ours: its ``config.json`` says ``model_type: spectrafm`` and every other visible entry is a
    file we write. Hidden entries (``.git``, ``.gitattributes``, ``.DS_Store``) do not count either way."""
    folder = Path(folder)
    try:
        config = _read_json(folder / "config.json")
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == MODEL_TYPE and not foreign_entries(folder)


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: Path, data: dict):
    """Write through a new file + rename (never in place: the old file may be a hard link to the user's)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def ensure_remote_code(folder: str | os.PathLike) -> list[str]:
    """Make ``folder`` loadable with ``AutoModel``/``AutoFeatureExtractor.from_pretrained(folder,
    trust_remote_code=True)`` where ``spectrafm_hf`` is not installed: copy the missing code files
    (:data:`CODE_FILES`) from the package and add the missing ``auto_map`` entries to ``config.json`` and
    ``preprocessor_config.json``. Files already there are kept (they match the weights they were saved with).
    Returns what was added."""
    folder = Path(folder)
    added = []
    for name in CODE_FILES:
        if not (folder / name).is_file():
            shutil.copyfile(PACKAGE_DIR / name, folder / name)
            added.append(name)
    for name, entries in (("config.json", AUTO_MAP), ("preprocessor_config.json", PROCESSOR_AUTO_MAP)):
        if name != "config.json" and not (folder / name).is_file():  # a model without a processor
            continue
        config = _read_json(folder / name)
        auto_map = dict(config.get("auto_map") or {})
        missing = {k: v for k, v in entries.items() if k not in auto_map}
        if missing:
            config["auto_map"] = {**auto_map, **missing}
            _write_json(folder / name, config)
            added.append(f"{name}:auto_map")
    return added


def stage(folder: Path, dest: Path, link_weights: bool = False, record_local: bool | None = None) -> list[str]:
    """Copy the allow-listed files of ``folder`` into ``dest``, add the code files and redact ``training_info.json``
    (unless :func:`record_local_details`). ``link_weights``: hard-link the ``.safetensors`` when possible (only for
    short-lived copies: a later in-place save would write through). Returns the staged file names."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no config.json)")
    dest.mkdir(parents=True, exist_ok=True)
    for p in checkpoint_files(folder):
        if link_weights and p.suffix == ".safetensors":  # never modified in the staging copy
            try:
                os.link(p, dest / p.name)
                continue
            except OSError:
                pass
        shutil.copyfile(p, dest / p.name)
    ensure_remote_code(dest)
    info = dest / "training_info.json"
    if info.is_file() and not record_local_details(record_local):
        try:
            data = _read_json(info)
        except ValueError as e:
            raise ValueError(f"{folder / 'training_info.json'} is not valid JSON: {e}") from None
        _write_json(info, redact_local_details(data))
    return sorted(p.name for p in dest.iterdir() if p.is_file())


@contextlib.contextmanager
def as_folder(folder_or_pipeline):
    """A checkpoint folder for a path, or for a `SpectraFMPipeline` (saved into a temporary folder)."""
    if isinstance(folder_or_pipeline, (str, os.PathLike)):
        yield Path(folder_or_pipeline)
        return
    with tempfile.TemporaryDirectory(prefix="spectrafm-") as tmp:
        folder_or_pipeline.save_pretrained(Path(tmp) / "pipeline")
        yield Path(tmp) / "pipeline"


# ------------------------------------------------------------------------------------------- local details
def record_local_details(flag: bool | None = None) -> bool:
    """Whether records may keep absolute local paths and host details: ``flag`` when given, else the environment
    variable ``SPECTRAFM_RECORD_LOCAL_PATHS=1`` (default: no)."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(RECORD_LOCAL_DETAILS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# An absolute path inside a string: starts with / (not after a word character, ':' or '/' as in URLs and
# "[Fe/H]"), ~/ or a Windows drive; runs up to white space, quotes or separators.
_ABS_PATH = re.compile(r"(?<![\w:/.~-])(?:~?/|[A-Za-z]:[\\/])[^\s'\",;()\[\]{}<>|]*")


def _path_name(path: str, base: Path | None) -> str:
    full = os.path.normpath(os.path.expanduser(path))
    if base is not None and os.path.isabs(full):
        try:
            rel = os.path.relpath(full, base)
            if not rel.startswith(".."):
                return rel
        except ValueError:  # another drive
            pass
    name = re.split(r"[\\/]", full.rstrip("/\\"))[-1] or "root"  # a Windows path is split on its \\ too
    return f"{name}#{hashlib.sha256(full.encode()).hexdigest()[:8]}"


def _host_words() -> list[str]:
    words = set()
    for get in (socket.gethostname, getpass.getuser):  # no getfqdn: it may wait on DNS
        with contextlib.suppress(Exception):
            w = get()
            if w and len(w) >= 2 and w not in ("localhost", "root"):
                words.add(w)
                words.add(w.split(".")[0])
    return sorted((w for w in words if len(w) >= 2), key=len, reverse=True)


def redact_local_details(value, base: str | os.PathLike | None = None):
    """A copy of a JSON-like ``value`` without absolute local paths or host details: a path inside ``base``
    (default: the working directory; not when that holds the home folder, as ``/`` does) becomes relative to it,
    any other absolute path becomes ``<basename>#<sha256[:8]>`` of the full path (distinct paths stay distinct,
    none can be read back); the host name and user name, where they stand as a word (e.g. in ``logging_dir``'s
    ``runs/Dec02_10-00-00_<host>``), become ``<host>``/``<user>``. Keys and non-string values are kept."""
    base = Path(base if base is not None else os.getcwd()).resolve()
    home = Path.home().resolve()
    if home != base and home.is_relative_to(base):  # "/" or "/home": relative names would still name the user
        base = None
    words = _host_words()
    host_re = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, words)) + r")(?![A-Za-z0-9])") if words \
        else None
    user = getpass.getuser() if words else None

    def text(s: str) -> str:
        s = _ABS_PATH.sub(lambda m: _path_name(m.group(0), base), s)
        if host_re is not None:
            s = host_re.sub(lambda m: "<user>" if m.group(1) == user else "<host>", s)
        return s

    def walk(v):
        if isinstance(v, str):
            return text(v)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    return walk(value)
