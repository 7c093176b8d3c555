"""Docstring examples run (doctest), the README names only commands and files that exist, and the README's examples
run as written on a fresh clone: the Python blocks of "Predict" (and of "Sharing on the Hub" where they do not push)
and the `spectrafm predict/attention/info` command lines, each in a new process, offline, with an empty Hugging Face
cache (nothing set up beyond the install)."""

import doctest
import importlib
import os
import re
import shlex
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO

MODULES = ["spectrafm_hf.spectrum", "spectrafm_hf.configuration_spectrafm", "spectrafm_hf.processing_spectrafm",
           "spectrafm_hf.pipeline", "spectrafm_hf.data.builder"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0


DOCS = ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS)
def test_docs_point_at_real_files_and_commands(doc):
    text = (REPO / doc).read_text()
    for path in set(re.findall(r"(?:scripts|tests|docs|benchmarks|hub_cards)/[\w/.\-+]+\.(?:py|yaml|md|fits|csv|png|json)", text)):
        assert (REPO / path).exists(), f"{doc} mentions {path}, which does not exist"
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):  # markdown links resolve from the file's own folder
        assert ((REPO / doc).parent / link).exists(), f"{doc} links to {link}, which does not exist"
    from spectrafm_hf.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    for cmd in re.findall(r"^spectrafm (\w+)", text, flags=re.M):
        assert cmd in commands, f"{doc} uses `spectrafm {cmd}`, which the CLI does not have"


# ------------------------------------------------------------------------------------------- README examples
README = (REPO / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of a README section (a '## ' heading) up to the next '## ' heading."""
    parts = re.split(r"^## ", README, flags=re.MULTILINE)
    found = [p for p in parts if p.startswith(title + "\n")]
    assert found, f"README has no '## {title}' section"
    return found[0]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def python_examples():
    out = []
    for title in ("Predict", "Sharing on the Hub"):
        for i, code in enumerate(blocks(section(title), "python")):
            if "push" in code:  # publishing needs a Hub account: tests/test_hub.py runs that against a local server
                continue
            out.append(pytest.param(code, id=f"{title}-{i}"))
    return out


def command_examples():
    lines = [ln.strip() for b in blocks(section("Predict"), "bash") for ln in b.splitlines()]
    return [ln for ln in lines if re.match(r"spectrafm (predict|attention|info)\b", ln)]


def fresh_env(tmp_path):
    """A new user's environment: offline, an empty HF cache, this checkout's code, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "SPECTRAFM_"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO / "src"),
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def test_the_examples_are_found():
    assert len(python_examples()) >= 1
    assert [c.split()[1] for c in command_examples()] == ["predict", "attention", "info"]


@pytest.mark.parametrize("code", python_examples())
def test_readme_python_example(code, tmp_path):
    checks = ""
    if "same_table = labeller(spectra)" in code:  # the README says they are the same table
        checks = "\nimport pandas as pd\npd.testing.assert_frame_equal(same_table, table)\nprint('ROWS', len(table))\n"
    res = subprocess.run([sys.executable, "-c", code + checks], cwd=REPO, env=fresh_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    if checks:
        assert "ROWS " in res.stdout and int(res.stdout.split("ROWS ")[1].split()[0]) >= 1


@pytest.mark.parametrize("command", command_examples(), ids=lambda c: c.split()[1])
def test_readme_command(command, tmp_path):
    """Run as written from a folder that sees the checkout's tests/ (so the outputs land in tmp_path)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "tests").symlink_to(REPO / "tests", target_is_directory=True)
    argv = shlex.split(command)
    res = subprocess.run([sys.executable, "-m", "spectrafm_launcher", *argv[1:]], cwd=work,
                         env=fresh_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    for option in ("-o", "--output", "--plot"):  # every file the command names is written
        if option in argv:
            target = work / argv[argv.index(option) + 1]
            assert target.is_file() and target.stat().st_size > 0, target
    if argv[1] == "predict" and "-o" in argv:
        table = pd.read_csv(work / argv[argv.index("-o") + 1])
        assert len(table) >= 4 and table["TEFF"].notna().all()  # one row per spectrum of the 4 fixture files
    if argv[1] == "info":
        assert "labels:" in res.stdout
