"""`training_info.json`: what produced a checkpoint (config, data, seed, library versions, hardware).

The record travels with the checkpoint (to the Hub, to colleagues), so by default it holds no absolute local path
and no host details: paths become relative to the working directory or ``name#hash``, the host and user names are
replaced (`spectrafm_hf.checkpoint_folder.redact_local_details`), and the hardware is the CPU model, core count and
accelerators (no kernel build). ``record_local_paths=True`` or ``SPECTRAFM_RECORD_LOCAL_PATHS=1`` keeps them all.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

from transformers import TrainerCallback

from ..checkpoint_folder import record_local_details, redact_local_details

__all__ = ["training_info", "write_training_info", "TrainingInfoCallback"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware(full: bool = False) -> dict:
    import torch

    system = platform.platform() if full else f"{platform.system()}-{platform.machine()}"
    info = {"platform": system, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "accelerators": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["accelerators"].append({"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)})
    return info


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("spectrafm_hf", "torch", "transformers", "accelerate", "datasets", "numpy", "huggingface_hub", "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def training_info(config: dict | None = None, data: dict | None = None, seed: int | None = None, *,
                  record_local_paths: bool | None = None, **extra) -> dict:
    """The record; ``record_local_paths`` (default: ``SPECTRAFM_RECORD_LOCAL_PATHS``, else no): keep absolute local
    paths, host and user names and the full platform string instead of redacting them."""
    full = record_local_details(record_local_paths)
    info = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config or {},
        "data": data or {},
        "seed": seed,
        "versions": library_versions(),
        "hardware": hardware(full),
        "git_commit": _git_commit(),
        **extra,
    }
    return info if full else redact_local_details(info)


def write_training_info(folder, info: dict) -> Path:
    """Write ``training_info.json`` atomically (temporary file + rename)."""
    path = Path(folder) / "training_info.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str))
    os.replace(tmp, path)
    return path


class TrainingInfoCallback(TrainerCallback):
    """Writes ``training_info.json`` (with the step and the latest logged metrics) into every checkpoint."""

    def __init__(self, info: dict):
        self.info = info
        self.last_metrics = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.last_metrics.update(logs)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_training_info(folder, {**self.info, "global_step": state.global_step,
                                         "epoch": state.epoch, "metrics": dict(self.last_metrics)})
