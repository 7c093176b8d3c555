"""Finding checkpoints, installing them into the Hugging Face cache, model/dataset cards and pushing to the Hub.

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

Cases 3 and 4 return the name unchanged and let ``from_pretrained`` do the lookup. When the name is in none of
1-3 and the Hub may not be asked, :func:`resolve_model` raises :class:`CheckpointNotFoundError` listing what it
looked for. ``transformers.AutoModel.from_pretrained`` itself only knows 1, 3 and 4.

Cards and pushing
-----------------
:func:`render_model_card` / :func:`render_dataset_card` fill the templates of ``hub_cards/`` (Python
``string.Template`` fields) and generate the YAML metadata (``library_name: transformers``, tags, licence,
``base_model`` for fine-tunes, ``datasets`` and a ``model-index`` with the evaluation metrics in physical units).
:func:`push_pipeline` uploads a pipeline folder (config, weights, model code files, processor config,
``training_info.json``, ``README.md`` card) so that ``AutoModel.from_pretrained(repo, trust_remote_code=True)``
works without this package.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import string
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "resolve_model",
    "atomic_directory",
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

PACKAGE_DIR = Path(__file__).resolve().parent
EMBEDDED_DIR = PACKAGE_DIR / "resources" / "models"
# Card templates: the packaged copy (resources/hub_cards, part of the package data) wins over the source tree's
# top-level hub_cards/ folder (used from a checkout / editable install).
CARD_TEMPLATE_DIRS = (PACKAGE_DIR / "resources" / "hub_cards", PACKAGE_DIR.parent.parent / "hub_cards")

CODE_FILES = ("configuration_spectrafm.py", "modeling_spectrafm.py")
AUTO_MAP = {"AutoConfig": "configuration_spectrafm.SpectraFMConfig", "AutoModel": "modeling_spectrafm.SpectraFMModel"}
# Top-level files of a pipeline folder that belong on the Hub / in the cache (not optimizer states, logs, ...).
CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".py", ".md", ".txt", ".yaml", ".yml")
CHECKPOINT_EXCLUDE = ("trainer_state.json", "training_args.json")

TAGS = ["astronomy", "stellar-spectra", "spectrafm"]
PAPER_URL = "https://arxiv.org/abs/2411.04750"
SPECTRAFM_CITATION = """@article{koblischke2024spectrafm,
  title         = {SpectraFM: Tuning into Stellar Foundation Models},
  author        = {Koblischke, Nolan and Bovy, Jo},
  journal       = {arXiv e-prints},
  year          = {2024},
  eprint        = {2411.04750},
  archivePrefix = {arXiv},
  primaryClass  = {astro-ph.IM},
  url           = {https://arxiv.org/abs/2411.04750}
}"""
# Survey references for dataset cards, by instrument name.
SURVEY_CITATIONS = {
    "apogee": [
        "Majewski, S. R., et al. 2017, AJ, 154, 94: The Apache Point Observatory Galactic Evolution Experiment "
        "(APOGEE)",
        "Abdurro'uf, et al. 2022, ApJS, 259, 35: The Seventeenth Data Release of the Sloan Digital Sky Surveys",
    ],
    "gaia": ["Gaia Collaboration, Vallenari, A., et al. 2023, A&A, 674, A1: Gaia Data Release 3"],
    "gaia_rvs": ["Gaia Collaboration, Vallenari, A., et al. 2023, A&A, 674, A1: Gaia Data Release 3"],
    "gaia_xp": ["Gaia Collaboration, Vallenari, A., et al. 2023, A&A, 674, A1: Gaia Data Release 3"],
    "galah": ["Buder, S., et al. 2021, MNRAS, 506, 150: The GALAH+ Survey: Third Data Release"],
    "lamost": ["Cui, X.-Q., et al. 2012, RAA, 12, 1197: The Large Sky Area Multi-Object Fiber Spectroscopic "
               "Telescope (LAMOST)"],
    "sdss": ["Abdurro'uf, et al. 2022, ApJS, 259, 35: The Seventeenth Data Release of the Sloan Digital Sky Surveys"],
}
# Metric keys of spectrafm_hf.training.metrics.label_metrics -> (display name, carries the label's unit), in the
# order of the model-index; "n" (stars used) goes to the card's table only.
METRIC_NAMES = {
    "rmse": ("RMSE", True),
    "bias": ("bias", True),
    "robust_scatter": ("robust scatter", True),
    "coverage68": ("68% coverage", False),
    "mae": ("MAE", True),
    "coverage95": ("95% coverage", False),
}
METRIC_ALIASES = {"coverage_68": "coverage68", "coverage_95": "coverage95"}
SPLIT_PREFIXES = ("test", "eval", "validation")  # flat Trainer metrics: test_* wins over eval_*


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
    cache = _hub_cache(cache_dir)
    looked.append(f"the Hugging Face cache {cache / _cache_folder(name)} (no snapshot with a config.json for "
                  f"revision {revision or 'main'!r})")
    reason = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
    raise CheckpointNotFoundError(
        f"SpectraFM checkpoint {name!r} not found. Looked for {'; '.join(looked)}. The Hub was not asked "
        f"({reason}). {hint}"
    )


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


# ---------------------------------------------------------------------------------------------------- folders
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
    """Make ``folder`` loadable with ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` where
    ``spectrafm_hf`` is not installed: copy the missing model code files (:data:`CODE_FILES`, flat siblings that
    import only torch/transformers) from the package and add the missing ``auto_map`` entries to ``config.json``.
    Files already there are kept (they match the weights they were saved with). Returns what was added."""
    folder = Path(folder)
    added = []
    for name in CODE_FILES:
        if not (folder / name).is_file():
            shutil.copyfile(PACKAGE_DIR / name, folder / name)
            added.append(name)
    config = _read_json(folder / "config.json")
    auto_map = dict(config.get("auto_map") or {})
    missing = {k: v for k, v in AUTO_MAP.items() if k not in auto_map}
    if missing:
        config["auto_map"] = {**auto_map, **missing}
        _write_json(folder / "config.json", config)
        added.append("config.json:auto_map")
    return added


def _checkpoint_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(CHECKPOINT_SUFFIXES)
        and p.name not in CHECKPOINT_EXCLUDE
    )


def _stage(folder: Path, dest: Path, link_weights: bool = False):
    """Copy the checkpoint files of ``folder`` into ``dest`` and add the code files. ``link_weights``: hard-link the
    ``.safetensors`` when possible (only for short-lived copies: a later in-place save would write through)."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (no config.json)")
    dest.mkdir(parents=True, exist_ok=True)
    for p in _checkpoint_files(folder):
        if link_weights and p.suffix == ".safetensors":  # never modified in the staging copy
            try:
                os.link(p, dest / p.name)
                continue
            except OSError:
                pass
        shutil.copyfile(p, dest / p.name)
    ensure_remote_code(dest)


@contextlib.contextmanager
def _as_folder(folder_or_pipeline):
    """A checkpoint folder for a path, or for a `SpectraFMPipeline` (saved into a temporary folder)."""
    if isinstance(folder_or_pipeline, (str, os.PathLike)):
        yield Path(folder_or_pipeline)
        return
    with tempfile.TemporaryDirectory(prefix="spectrafm-") as tmp:
        folder_or_pipeline.save_pretrained(Path(tmp) / "pipeline")
        yield Path(tmp) / "pipeline"


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
            _stage(src, staging)
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


# ---------------------------------------------------------------------------------------------------- metrics
def _label_unit(name: str) -> str:
    n = name.upper()
    if n in ("TEFF", "T_EFF"):
        return "K"
    if n in ("LOGG", "LOG_G") or n.endswith(("_FE", "_H", "_M")) or n.startswith(("FE_", "M_H")):
        return "dex"
    if n in ("VMIC", "VMAC", "VSINI", "VBROAD", "RV", "VRAD", "VHELIO"):
        return "km/s"
    return ""


def _label_display(name: str) -> str:
    n = name.upper()
    if n in ("TEFF", "T_EFF"):
        return "Teff"
    if n in ("LOGG", "LOG_G"):
        return "log g"
    parts = n.split("_")
    if len(parts) == 2 and all(p.isalpha() and len(p) <= 5 for p in parts):
        num, den = (p if p == "ALPHA" else p.capitalize() for p in parts)
        return f"[{num.replace('ALPHA', 'alpha')}/{den}]"
    return name


def _normalise_metrics(metrics) -> tuple[dict[str, dict[str, float]], str | None]:
    """``({label: {metric: value}}, split)`` from either that nested form or the flat dict the Trainer's
    ``compute_metrics`` gives (``{"test_TEFF_rmse": ..., "eval_FE_H_coverage68": ..., "eval_loss": ...}``, as saved
    in training_info.json); with several prefixes, ``test_`` wins over ``eval_``/``validation_``."""
    if not metrics:
        return {}, None
    known = sorted(list(METRIC_NAMES) + list(METRIC_ALIASES) + ["n"], key=len, reverse=True)
    if all(isinstance(v, Mapping) for v in metrics.values()):
        return {label: {METRIC_ALIASES.get(k, k): v for k, v in m.items()} for label, m in metrics.items()}, None
    by_prefix: dict[str | None, dict[str, dict[str, float]]] = {}
    for key, value in metrics.items():
        prefix, bare = None, key
        for p in SPLIT_PREFIXES:
            if key.startswith(p + "_"):
                prefix, bare = p, key[len(p) + 1:]
                break
        for metric in known:
            if bare.endswith("_" + metric) and len(bare) > len(metric) + 1:
                label = bare[: -len(metric) - 1]
                by_prefix.setdefault(prefix, {}).setdefault(label, {})[METRIC_ALIASES.get(metric, metric)] = value
                break
    for prefix in (*SPLIT_PREFIXES, None):
        if by_prefix.get(prefix):
            return by_prefix[prefix], {"eval": "validation"}.get(prefix, prefix)
    return {}, None


def _fmt(value, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    a = abs(value)
    text = f"{value:.1f}" if a >= 100 else f"{value:.3g}" if a >= 1 else f"{value:.3f}" if a >= 0.01 else f"{value:.2g}"
    return f"{text} {unit}".strip()


# ---------------------------------------------------------------------------------------------------- cards
def _template(name: str) -> string.Template:
    for d in CARD_TEMPLATE_DIRS:
        if (d / name).is_file():
            text = (d / name).read_text(encoding="utf-8")
            text = re.sub(r"\A\s*<!--.*?-->\s*", "", text, flags=re.S)  # the template's own header comment
            return string.Template(text)
    raise FileNotFoundError(f"card template {name} not found in {[str(d) for d in CARD_TEMPLATE_DIRS]}")


def _describe(folder_or_pipeline) -> tuple[dict, dict, dict, int | None]:
    """(config, processor config, training_info, number of parameters) of a folder or a pipeline."""
    if isinstance(folder_or_pipeline, (str, os.PathLike)):
        folder = Path(folder_or_pipeline)
        config = _read_json(folder / "config.json")
        pre = _read_json(folder / "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else {}
        info = _read_json(folder / "training_info.json") if (folder / "training_info.json").is_file() else {}
        n_params = None
        for f in folder.glob("*.safetensors"):
            with open(f, "rb") as fh:
                header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
            n_params = (n_params or 0) + sum(
                math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__"
            )
        return config, pre, info, n_params
    model, processor = folder_or_pipeline.model, folder_or_pipeline.processor
    n_params = sum(p.numel() for p in model.parameters())
    return model.config.to_dict(), processor.to_dict(), {}, n_params


def _architecture_table(config: dict, pre: dict, n_params: int | None) -> str:
    labels = config.get("label_names") or []
    rows = [
        ("Architecture", "SpectraFM encoder-decoder Transformer (`SpectraFMModel`)"),
        ("Parameters", f"{n_params:,}" if n_params else "-"),
        ("Hidden size", config.get("hidden_size", "-")),
        ("Encoder blocks (heads)", f"{len(config.get('encoder_num_heads', []))} "
                                   f"({', '.join(map(str, config.get('encoder_num_heads', [])))})"),
        ("Decoder blocks (heads)", f"{len(config.get('decoder_num_heads', []))} "
                                   f"({', '.join(map(str, config.get('decoder_num_heads', [])))})"),
        ("Context (pixels per forward)", config.get("context_length", "-")),
        ("Predicted labels", ", ".join(f"`{n}` [{_label_unit(n) or '-'}]" for n in labels) or "-"),
    ]
    if config.get("scalar_input_names"):
        rows.append(("Extra scalar inputs", ", ".join(f"`{n}`" for n in config["scalar_input_names"])))
    cov = pre.get("wavelength_coverage")
    if cov:
        rows.append(("Trained wavelength coverage", "; ".join(f"{lo:g}-{hi:g} A" for lo, hi in cov) + " (vacuum)"))
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _plain(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    return json.dumps(value, default=str)


# The keys of training_info.json (spectrafm_hf.training.info) worth a line on the card; the file has them all.
_RECIPE_MODEL_KEYS = ("model_name_or_path", "freeze", "lora_r", "lora_alpha", "target_labels", "flux_normalization")
_RECIPE_DATA_KEYS = ("dataset_config", "dataset_kwargs", "wavelength_window", "pixel_range", "train_selection",
                     "max_train_stars", "input_label_names", "input_label_prob")
_RECIPE_TRAIN_KEYS = ("learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "num_train_epochs",
                      "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay",
                      "bf16", "fp16", "seed")
_TRAINING_DEFAULTS = {"warmup_ratio": 0.0, "warmup_steps": 0, "max_steps": -1, "bf16": False, "fp16": False,
                      "lora_r": 0, "input_label_prob": 0.0}


def _training_recipe(info: Mapping) -> str:
    """Markdown bullets from training_info.json: the notable settings, not the whole record."""
    if not info:
        return "No `training_info.json` was saved with this checkpoint."
    lines, seen = [], set()

    def add(name, value):
        empty = value is None or value == "" or value == [] or value == {}
        if empty or name in seen or _TRAINING_DEFAULTS.get(name, ()) == value:
            return
        seen.add(name)
        lines.append(f"- **{name}**: {_plain(value)}")

    bulky = ("metrics", "config", "data", "versions", "hardware")
    for key, value in info.items():
        if key not in bulky and (not isinstance(value, (Mapping, list)) or len(json.dumps(value, default=str)) < 200):
            add(key, value)
    data = info.get("data")
    if isinstance(data, Mapping):
        add("data", {k: v for k, v in data.items() if not isinstance(v, (Mapping, list)) or len(str(v)) < 120})
    config = info.get("config") if isinstance(info.get("config"), Mapping) else {}
    for section, keys in (("model", _RECIPE_MODEL_KEYS), ("data", _RECIPE_DATA_KEYS), ("training", _RECIPE_TRAIN_KEYS)):
        values = config.get(section) if isinstance(config.get(section), Mapping) else {}
        for key in keys:
            add(key, values.get(key))
    hw = info.get("hardware")
    if isinstance(hw, Mapping):
        acc = [a.get("name") for a in hw.get("accelerators") or [] if isinstance(a, Mapping)]
        add("hardware", f"{len(acc)} x {acc[0]}" if acc else hw.get("cpu"))
    versions = info.get("versions")
    if isinstance(versions, Mapping):
        add("versions", {k: v for k, v in versions.items() if k in ("spectrafm_hf", "torch", "transformers")})
    if "config" in info or "versions" in info:
        lines.append("\nThe complete record (all arguments, library versions, hardware) is in `training_info.json`.")
    return "\n".join(lines)


def _evaluation(metrics: dict, dataset_name: str, split: str) -> str:
    if not metrics:
        return "No evaluation metrics were recorded for this checkpoint."
    head = f"Measured on {dataset_name}, split `{split}`; residual = predicted - reference label, physical units.\n\n"
    table = ("| Label | N | RMSE | bias | robust scatter | 68% coverage | 95% coverage |\n"
             "|---|---|---|---|---|---|---|\n")

    def pct(v):
        return "-" if v is None or not math.isfinite(float(v)) else f"{100 * float(v):.1f}%"

    for label, m in metrics.items():
        unit = _label_unit(label)
        table += (f"| {_label_display(label)} | {_fmt(m.get('n'))} | {_fmt(m.get('rmse'), unit)} | "
                  f"{_fmt(m.get('bias'), unit)} | {_fmt(m.get('robust_scatter'), unit)} | "
                  f"{pct(m.get('coverage68'))} | {pct(m.get('coverage95'))} |\n")
    note = ("\nbias = mean residual; robust scatter = 1.4826 x median absolute deviation of the residuals; "
            "68% / 95% coverage = fraction of stars whose residual lies inside the predicted 68% / 95% Gaussian "
            "interval (68.3% / 95% for calibrated uncertainties).")
    return head + table + note


def _eval_results(metrics: dict, dataset_id: str, dataset_name: str, split: str):
    from huggingface_hub import EvalResult

    results = []
    for label, m in metrics.items():
        unit = _label_unit(label)
        for key, (display, has_unit) in METRIC_NAMES.items():
            value = m.get(key)
            if value is None or not math.isfinite(float(value)):
                continue
            suffix = f" [{unit}]" if has_unit and unit else ""
            results.append(EvalResult(
                task_type="tabular-regression", task_name="Stellar label regression", dataset_type=dataset_id,
                dataset_name=dataset_name, dataset_split=split, metric_type=key,
                metric_name=f"{_label_display(label)} {display}{suffix}", metric_value=float(value),
            ))
    return results


def _nested(d, *keys):
    for key in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(key)
    return d


def _is_hub_id(name) -> bool:
    """An ``org/name`` Hub model id (not a local path, not a bare embedded/cache name)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(name, str) or name.count("/") != 1 or Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _card_text(data, body: str) -> str:
    return f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"


def render_model_card(folder_or_pipeline, kind: str | None = None, **info):
    """A `huggingface_hub.ModelCard` for a pipeline folder (or a `SpectraFMPipeline`).

    Args:
        folder_or_pipeline: a saved pipeline folder (config.json, preprocessor_config.json, optional
            ``training_info.json`` whose ``metrics`` and other keys are used) or a `SpectraFMPipeline`.
        kind: ``"base"`` (``hub_cards/model_card_base.md``) or ``"finetune"`` (``model_card_finetune.md``);
            default: ``"finetune"`` when a ``base_model`` is given (here or in training_info.json), else ``"base"``.
        **info: optional fields:
            ``repo_id`` (used in the code snippets), ``model_name`` (default: the repo name or folder name),
            ``license`` (default ``"mit"``), ``base_model`` (``org/name`` Hub id of the model fine-tuned from;
            default: training_info's ``base_model`` or ``config.model.model_name_or_path``; a local path or a bare
            name is named in the text but left out of the metadata, with a warning), ``datasets`` (Hub dataset
            ids), ``metrics`` in physical units: ``{label: {"rmse", "bias", "robust_scatter", "coverage68",
            "coverage95", "mae", "n"}}`` (`spectrafm_hf.training.metrics.label_metrics` per label) or the
            Trainer's flat ``{"test_TEFF_rmse": ..., "eval_FE_H_coverage68": ...}`` (``test_`` preferred);
            default: training_info's ``metrics``; ``dataset_id`` / ``dataset_name`` / ``dataset_split`` (what
            the metrics were measured on), ``task``, ``summary``, ``intended_use``, ``limitations`` (text
            replacing the defaults), ``training`` (dict merged over training_info.json), ``tags`` (added).

    Returns:
        the card; its metadata has ``library_name: transformers``, tags, licence, ``base_model`` (fine-tunes),
        ``datasets`` and a ``model-index`` of the metrics (``card.data.eval_results``).
    """
    from huggingface_hub import ModelCard, ModelCardData

    config, pre, training, n_params = _describe(folder_or_pipeline)
    training = {**training, **(info.get("training") or {})}
    start = _nested(training, "config", "model", "model_name_or_path")  # as training/run.py records it
    base_model = info.get("base_model") or training.get("base_model") or start
    kind = kind or ("finetune" if base_model else "base")
    if kind not in ("base", "finetune"):
        raise ValueError(f"kind must be 'base' or 'finetune', got {kind!r}")
    base_id = base_model if kind == "finetune" and _is_hub_id(base_model) else None  # for the metadata
    if kind == "finetune" and base_id is None:
        warnings.warn(f"fine-tune card without a Hub base model (got {base_model!r}); pass base_model='org/name' "
                      "to link the card to its base model", stacklevel=2)
    if base_id:
        base_link = f"[{base_id}](https://huggingface.co/{base_id})"
    else:
        base_link = f"the SpectraFM checkpoint `{base_model}`" if base_model else "a pre-trained SpectraFM checkpoint"
    folder_name = Path(folder_or_pipeline).name if isinstance(folder_or_pipeline, (str, os.PathLike)) else None
    repo_id = info.get("repo_id") or info.get("model_name") or folder_name or "spectrafm-model"
    model_name = info.get("model_name") or repo_id.split("/")[-1]
    datasets = info.get("datasets") or training.get("datasets")
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    metrics, metric_split = _normalise_metrics(info.get("metrics") or training.get("metrics") or {})
    trained_on = _nested(training, "config", "data", "dataset_config")
    dataset_id = info.get("dataset_id") or (datasets[0] if datasets else trained_on or "custom")
    dataset_name = info.get("dataset_name") or dataset_id
    split = info.get("dataset_split") or metric_split or "test"
    labels = config.get("label_names") or []

    data = ModelCardData(
        license=info.get("license", "mit"),
        library_name="transformers",
        pipeline_tag="tabular-regression",
        tags=TAGS + [t for t in info.get("tags", []) if t not in TAGS],
        base_model=base_id,
        datasets=datasets or None,
        model_name=model_name,
        eval_results=_eval_results(metrics, dataset_id, dataset_name, split) or None,
    )
    if base_id:
        data.base_model_relation = "finetune"
    label_text = ", ".join(_label_display(n) for n in labels) or "stellar labels"
    task = info.get("task") or f"predicting {label_text} with uncertainties"
    summary = info.get("summary") or (
        f"`{model_name}` is a SpectraFM model ([Koblischke & Bovy 2024]({PAPER_URL})) that predicts {label_text} "
        "with a Gaussian uncertainty from stellar spectra."
    )
    intended_use = info.get("intended_use") or (
        "Estimating stellar labels, with uncertainties, from continuum-normalised stellar spectra similar to the "
        "training data (instrument, wavelength range, resolution, signal-to-noise, stellar types); producing "
        "embeddings and attention maps for interpretation; and as a starting point for fine-tuning on a small set "
        "of labelled spectra from a new instrument or wavelength range (`SpectraFMPipeline.fit` or the Trainer "
        "scripts of `spectrafm_hf`)."
    )
    limitations = info.get("limitations") or (
        "- Predictions are only as good as the training labels and spectra: outside the training range of "
        "labels, instruments or wavelengths (see `coverage_fraction` in the prediction table) the model "
        "extrapolates and its uncertainties are not reliable.\n"
        "- A model pre-trained on synthetic spectra inherits the line-list and atmosphere-model systematics of the "
        "synthesis, and a synthetic-to-real gap remains until it is fine-tuned on observed spectra.\n"
        "- The predicted sigma is the model's own uncertainty; check its calibration (the 68% coverage under "
        "Evaluation) on data like yours before using it as an error bar.\n"
        "- Spectra longer than the context are read as several pixel subsets whose predictions are combined; "
        "the combined error is not shrunk by the number of subsets, since they share the model's systematics."
    )
    body = _template(f"model_card_{kind}.md").substitute(
        title=model_name,
        summary=summary,
        task=task,
        base_model_link=base_link,
        architecture=_architecture_table(config, pre, n_params),
        intended_use=intended_use,
        limitations=limitations,
        training_recipe=_training_recipe(training),
        evaluation=_evaluation(metrics, dataset_name, split),
        repo_id=repo_id,
        label_columns=", ".join(f"{n}, {n}_err" for n in labels[:2]) or "labels",
        context_length=config.get("context_length", 512),
        citation=SPECTRAFM_CITATION,
    )
    return ModelCard(_card_text(data, body))


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < bound:
            return name
    return "10M<n<100M"


def render_dataset_card(**info):
    """A `huggingface_hub.DatasetCard` for a spectra dataset, from ``hub_cards/dataset_card.md``.

    Keyword fields (all optional): ``repo_id``, ``pretty_name``, ``description``, ``license`` (default
    ``"cc-by-4.0"``), ``instruments`` (e.g. ``["apogee"]``; chooses the survey citations), ``configs`` (the
    YAML ``configs`` list, e.g. ``[{"config_name": "apogee", "data_files": [{"split": "train", "path":
    "apogee/train-*"}]}]``; leave it out when ``DatasetDict.push_to_hub`` writes it), ``label_names`` (default the
    SpectraFM five), ``columns`` (``{name: description}`` added to / replacing the schema rows), ``num_rows``
    (``{config: {split: n}}``), ``source`` (provenance and licence text), ``citations`` (extra references),
    ``tags``.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    instruments = list(info.get("instruments") or [c["config_name"] for c in info.get("configs") or []] or ["apogee"])
    labels = list(info.get("label_names") or ["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"])
    repo_id = info.get("repo_id") or "user/spectrafm-spectra"
    pretty = info.get("pretty_name") or "SpectraFM stellar spectra"
    columns = {
        "object_id": "`string`: survey identifier of the star (e.g. APOGEE_ID, Gaia source_id)",
        "instrument": "`string`: instrument / survey name (`apogee`, `gaia_rvs`, `lamost`, ...)",
        "wavelength": "`list<float32>`: vacuum wavelength of each pixel [Angstrom], ascending",
        "flux": "`list<float32>`: flux of each pixel (continuum-normalised where the source provides it); NaN = "
                "missing",
        "flux_err": "`list<float32>` (optional): 1-sigma flux uncertainty of each pixel; NaN or inf = missing",
    }
    for n in labels:
        unit = _label_unit(n)
        columns[n] = f"`float32`: {_label_display(n)}{f' [{unit}]' if unit else ''}"
        columns[f"{n}_ERR"] = f"`float32` (optional): 1-sigma uncertainty of {n}"
    columns.update(info.get("columns") or {})
    schema = "| Column | Type and meaning |\n|---|---|\n" + "\n".join(f"| `{k}` | {v} |" for k, v in columns.items())

    num_rows = info.get("num_rows") or {}
    if info.get("configs"):
        conf_lines = []
        for c in info["configs"]:
            files = ", ".join(f"{d['split']}: `{d['path']}`" for d in c.get("data_files", []))
            conf_lines.append(f"- `{c['config_name']}`{' (default)' if c.get('default') else ''}: {files}")
        configs_text = "\n".join(conf_lines)
    else:
        configs_text = "\n".join(f"- `{i}`: spectra from {i}" for i in instruments)
    if num_rows:
        configs_text += "\n\n| Configuration | Split | Spectra |\n|---|---|---|\n" + "\n".join(
            f"| `{c}` | {s} | {n:,} |" for c, splits in num_rows.items() for s, n in splits.items())

    refs = [f"- Koblischke, N. & Bovy, J. 2024, arXiv:2411.04750: SpectraFM: Tuning into Stellar Foundation Models"]
    for inst in instruments:
        for ref in SURVEY_CITATIONS.get(inst.lower(), SURVEY_CITATIONS.get(inst.lower().split("_")[0], [])):
            if f"- {ref}" not in refs:
                refs.append(f"- {ref}")
    refs += [f"- {c}" for c in info.get("citations") or []]
    citations = "Please cite the surveys the spectra and labels come from, and SpectraFM when you use it:\n\n" + \
        "\n".join(refs) + f"\n\n```bibtex\n{SPECTRAFM_CITATION}\n```"

    total = sum(n for splits in num_rows.values() for n in splits.values())
    meta = dict(
        license=info.get("license", "cc-by-4.0"),
        pretty_name=pretty,
        tags=TAGS + [t for t in info.get("tags", []) if t not in TAGS],
        task_categories=["tabular-regression"],
        size_categories=[_size_category(total)] if total else None,
    )
    if info.get("configs"):
        meta["configs"] = info["configs"]
    data = DatasetCardData(**meta)
    body = _template("dataset_card.md").substitute(
        pretty_name=pretty,
        description=info.get("description") or (
            "Stellar spectra with reference labels, in the row format used by `spectrafm_hf` to train, fine-tune "
            "and evaluate SpectraFM models."),
        configs=configs_text,
        schema=schema,
        repo_id=repo_id,
        first_config=(info.get("configs") or [{"config_name": instruments[0]}])[0]["config_name"],
        source=info.get("source") or "See the surveys' data-release pages for the terms of use of the spectra "
                                     "and labels.",
        citations=citations,
    )
    return DatasetCard(_card_text(data, body))


# ---------------------------------------------------------------------------------------------------- push
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
):
    """Upload a pipeline folder (or a `SpectraFMPipeline`) to the Hub as model repo ``repo_id``.

    The repo is created if needed (``exist_ok``). Uploaded: the folder's top-level checkpoint files (config.json,
    ``*.safetensors``, preprocessor_config.json, training_info.json, code files, other ``.json``/``.md``/``.txt``;
    not sub-folders such as ``checkpoint-*``), the model code files and ``auto_map`` when missing (so
    ``AutoModel.from_pretrained(repo_id, trust_remote_code=True)`` works without ``spectrafm_hf``), and
    ``README.md``: ``card`` (a `ModelCard` or its text) if given, else the folder's README.md, else
    ``render_model_card(folder, repo_id=repo_id, **card_info)``. Stale ``*.safetensors`` in the repo are
    deleted in the same commit. The folder itself is not modified.

    Raises:
        huggingface_hub.errors.OfflineModeIsEnabled: at once when ``HF_HUB_OFFLINE=1``.

    Returns:
        `huggingface_hub.CommitInfo` of the upload commit.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    if _offline():
        raise OfflineModeIsEnabled(
            f"Cannot push to {repo_id!r}: offline mode is enabled (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE to push."
        )
    with _as_folder(folder) as src, tempfile.TemporaryDirectory(prefix="spectrafm-push-") as tmp:
        staging = Path(tmp) / "repo"
        _stage(Path(src), staging, link_weights=True)
        readme = staging / "README.md"
        if card is None and not readme.is_file():
            card = render_model_card(staging, repo_id=repo_id, **dict(card_info or {}))
        if card is not None:
            if readme.exists():
                readme.unlink()  # a copy, but never write through a link
            text = str(card)  # a ModelCard prints as its full text (front matter + body)
            readme.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            folder_path=staging,
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            delete_patterns=["*.safetensors", "model.safetensors.index.json"],
        )
