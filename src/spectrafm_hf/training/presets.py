"""YAML presets for the experiment scripts, with ``--set KEY=VALUE`` overrides.

A measured variant of a preset (a longer pretraining, one more ablation) is then a committed command instead of a
scratch copy of the YAML file::

    python scripts/real_data.py scripts/configs/real_xp_cpu.yaml --experiments xp_fewshot \\
        --set xp_fewshot.pretrain.steps=30000 --set 'xp_fewshot.ablations={}' --output_dir runs/xp_pretrain30k

KEY is a dotted path into the preset's nested mappings; VALUE is read as YAML (``30000`` is an int, ``5e-4`` a
float, ``[a, b]`` a list, ``{}`` an empty mapping, ``null`` None). Every mapping on the path must exist; only the last
key may be new (e.g. a new ablation's name), so a misspelt section fails instead of being silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import yaml

__all__ = ["load_preset", "apply_overrides", "read_yaml"]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``5e-4`` and ``1e3`` as strings (a float needs a dot and a signed exponent there), and a
    learning rate written that way reached the optimizer as text; this loader reads them as floats, as YAML 1.2
    and Python do."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def read_yaml(text: str):
    """``text`` read as YAML, with ``5e-4``-style numbers as floats (every preset and training YAML is read so)."""
    return yaml.load(text, Loader=_Loader)


def apply_overrides(cfg: dict, assignments: Iterable[str]) -> dict:
    """Apply ``KEY=VALUE`` assignments (see the module docstring) to ``cfg`` in place; returns ``cfg``."""
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        path = [k.strip() for k in key.split(".")]
        if not sep or not all(path):
            raise ValueError(f"--set {assignment!r}: expected KEY=VALUE with KEY a dotted path, e.g. "
                             "xp_fewshot.pretrain.steps=30000")
        try:
            value = read_yaml(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {assignment!r}: the value is not valid YAML ({e})") from None
        node = cfg
        for depth, k in enumerate(path[:-1]):
            child = node.get(k) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise KeyError(f"--set {assignment!r}: the preset has no section {where!r}"
                               + (f" (it is {type(child).__name__}, not a mapping)" if child is not None else ""))
            node = child
        node[path[-1]] = value
    return cfg


def load_preset(path, assignments: Iterable[str] = ()) -> dict:
    """The YAML preset at ``path`` with ``assignments`` applied."""
    cfg = read_yaml(Path(path).read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a preset must be a YAML mapping, got {type(cfg).__name__}")
    return apply_overrides(cfg, assignments)
