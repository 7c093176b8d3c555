"""Docstring examples run (doctest), and the README names only commands and files that exist."""

import doctest
import importlib
import re

import pytest
from conftest import REPO

MODULES = ["spectrafm_hf.spectrum", "spectrafm_hf.configuration_spectrafm", "spectrafm_hf.processing_spectrafm",
           "spectrafm_hf.pipeline", "spectrafm_hf.data.builder"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0


def test_readme_points_at_real_files_and_commands():
    text = (REPO / "README.md").read_text()
    for path in set(re.findall(r"(?:scripts|tests|docs|benchmarks|hub_cards)/[\w/.\-+]+\.(?:py|yaml|md|fits|csv|png|json)", text)):
        assert (REPO / path).exists(), f"README mentions {path}, which does not exist"
    from spectrafm_hf.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    for cmd in re.findall(r"^spectrafm (\w+)", text, flags=re.M):
        assert cmd in commands, f"README uses `spectrafm {cmd}`, which the CLI does not have"
