"""Model and dataset cards: :func:`render_model_card` / :func:`render_dataset_card` fill the templates of
``hub_cards/`` (Python ``string.Template`` fields) and generate the YAML metadata (``library_name: transformers``,
tags, licence, ``base_model`` for fine-tunes, ``datasets`` and a ``model-index`` with the evaluation metrics in
physical units).

A card holds no absolute local path and no host details: the training record it quotes and a local ``base_model``
path are passed through `spectrafm_hf.checkpoint_folder.redact_local_details` (relative or ``name#hash``), unless
``record_local_paths=True`` or ``SPECTRAFM_RECORD_LOCAL_PATHS=1``.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
import warnings
from collections.abc import Mapping
from pathlib import Path

from .checkpoint_folder import PACKAGE_DIR, _read_json, record_local_details, redact_local_details
from .default_model import DEFAULT_MODEL_ID, is_default_model

__all__ = ["render_model_card", "render_dataset_card", "SPECTRAFM_CITATION", "CARD_TEMPLATE_DIRS"]

# Card templates: the packaged copy (resources/hub_cards, part of the package data) wins over the source tree's
# top-level hub_cards/ folder (used from a checkout / editable install).
CARD_TEMPLATE_DIRS = (PACKAGE_DIR / "resources" / "hub_cards", PACKAGE_DIR.parent.parent / "hub_cards")

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


def _card_labels(config: dict, pre: dict) -> list[str]:
    """The labels the folder predicts: the network's, then those only a linear probe reads (as `label_names`)."""
    labels = list(config.get("label_names") or [])
    return labels + [n for n in (pre.get("linear_probes") or {}) if n not in labels]


def _architecture_table(config: dict, pre: dict, n_params: int | None) -> str:
    labels = _card_labels(config, pre)
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
    for name, probe in (pre.get("linear_probes") or {}).items():
        states = [f"the `{n}` query's decoder state" for n in probe.get("inputs", [])
                  if probe.get("features") == "embedding+queries"]
        reads = ", ".join(["the mean encoder output", *states, *(f"its `{n}`" for n in probe.get("inputs", []))])
        how = "generative (GLS) read-out of" if probe.get("method") == "generative" else "ridge on"
        rows.append((f"`{name}`: linear probe", f"{how} {reads} (the network unchanged), fitted on "
                                                f"{probe.get('n_fit', '?')} spectra; sigma {probe.get('sigma', 0):.3g} "
                                                "(leave-one-out)"))
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
                     "max_train_stars", "input_label_names", "input_label_prob", "input_label_noise")
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


def _from_default_model(name) -> bool:
    """`spectrafm_hf.default_model.is_default_model` for a recorded value that may be anything (or nothing)."""
    return isinstance(name, (str, os.PathLike)) and str(name) != "" and is_default_model(name)


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
            default: training_info's ``base_model`` or ``config.model.model_name_or_path``; the package's default
            model - ``spectrafm-base``, its embedded folder or cache copy - becomes ``spectrafm/spectrafm-base``;
            any other local path or bare name is named in the text but left out of the metadata, with a
            warning), ``datasets`` (Hub dataset
            ids), ``metrics`` in physical units: ``{label: {"rmse", "bias", "robust_scatter", "coverage68",
            "coverage95", "mae", "n"}}`` (`spectrafm_hf.training.metrics.label_metrics` per label) or the
            Trainer's flat ``{"test_TEFF_rmse": ..., "eval_FE_H_coverage68": ...}`` (``test_`` preferred);
            default: training_info's ``metrics``; ``dataset_id`` / ``dataset_name`` / ``dataset_split`` (what
            the metrics were measured on), ``task``, ``summary``, ``intended_use``, ``limitations`` (text
            replacing the defaults), ``training`` (dict merged over training_info.json), ``tags`` (added),
            ``record_local_paths`` (default ``False``, or ``SPECTRAFM_RECORD_LOCAL_PATHS=1``): keep absolute local
            paths and host details in the text; by default every field is passed through
            `spectrafm_hf.checkpoint_folder.redact_local_details`.

    Returns:
        the card; its metadata has ``library_name: transformers``, tags, licence, ``base_model`` (fine-tunes),
        ``datasets`` and a ``model-index`` of the metrics (``card.data.eval_results``).
    """
    from huggingface_hub import ModelCard, ModelCardData

    config, pre, training, n_params = _describe(folder_or_pipeline)
    training = {**training, **(info.get("training") or {})}
    start = _nested(training, "config", "model", "model_name_or_path")  # as training/run.py records it
    # the default model by name, embedded folder or cache copy links to its Hub id (decided before redaction)
    from_default = _from_default_model(info.get("base_model") or training.get("base_model") or start)
    if not record_local_details(info.pop("record_local_paths", None)):
        training, info = redact_local_details(training), redact_local_details(info)
        start = _nested(training, "config", "model", "model_name_or_path")
    base_model = DEFAULT_MODEL_ID if from_default else info.get("base_model") or training.get("base_model") or start
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
    labels = _card_labels(config, pre)

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
    ``tags``; ``record_local_paths`` as for `render_model_card` (by default absolute local paths and host details
    in any field are redacted).
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    if not record_local_details(info.pop("record_local_paths", None)):
        info = redact_local_details(info)

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

    refs = ["- Koblischke, N. & Bovy, J. 2024, arXiv:2411.04750: SpectraFM: Tuning into Stellar Foundation Models"]
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
