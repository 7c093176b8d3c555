"""Packaging facts a user relies on: the typing marker ships, and every third-party module the package imports
is declared in pyproject.toml (as a dependency or in the extra that documents it)."""

import ast
import sys
import tomllib

from conftest import REPO

SRC = REPO / "src" / "spectrafm_hf"
# import name -> distribution name, where they differ
DIST = {"yaml": "pyyaml", "sklearn": "scikit-learn", "huggingface_hub": "huggingface-hub"}


def _third_party_imports() -> set[str]:
    found = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("spectrafm_hf", "__future__")}


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    names = set()
    for spec in specs:
        name = spec
        for sep in "<>=!~[; ":
            name = name.split(sep)[0]
        names.add(name.lower().replace("_", "-"))
    return names


def test_every_imported_module_is_declared():
    declared = _declared()
    missing = sorted(m for m in _third_party_imports() if DIST.get(m, m).lower().replace("_", "-") not in declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_py_typed_ships():
    assert (SRC / "py.typed").is_file()
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["spectrafm_hf"]
