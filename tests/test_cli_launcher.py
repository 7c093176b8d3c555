"""The `spectrafm` console script (src/spectrafm_launcher.py): --help of every command, --version and usage errors
without importing torch/transformers; commands still run; --revision picks a Hub revision."""

import json
import os
import subprocess
import sys
import time
import tomllib

import numpy as np
import pandas as pd
from conftest import REPO, TINY, fake_apogee_spectrum
from hub_fixtures import fake_hub  # noqa: F401  (fixture)

import spectrafm_hf
import spectrafm_launcher
from spectrafm_hf import cli
from spectrafm_hf.hub import push_pipeline

HEAVY = ("torch", "transformers", "spectrafm_hf")


def _child(code, *args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_console_script_is_the_launcher():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["spectrafm"] == "spectrafm_launcher:main"
    assert "spectrafm_launcher" in pyproject["tool"]["setuptools"]["py-modules"]  # shipped beside the package
    assert (REPO / "src" / "spectrafm_launcher.py").is_file()


def test_help_of_every_command_imports_no_torch():
    commands = sorted(cli.build_parser()._subparsers._group_actions[0].choices)
    assert {"predict", "attention", "info", "install"} <= set(commands)
    code = """
import contextlib, io, json, sys
import spectrafm_launcher
out = {}
for argv in [["--help"], ["--version"]] + [[c, "--help"] for c in sys.argv[1:]] + [["predict"], ["nope"]]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        try:
            spectrafm_launcher.main(argv)
            code = None
        except SystemExit as e:
            code = e.code
    out[" ".join(argv)] = [code, buf.getvalue()]
heavy = [m for m in ("torch", "transformers", "spectrafm_hf") if m in sys.modules]
print(json.dumps({"results": out, "heavy": heavy}))
"""
    res = _child(code, *commands)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout)
    assert data["heavy"] == [], f"building the parser imported {data['heavy']}"
    results = data["results"]
    assert results["--help"][0] == 0 and "predict" in results["--help"][1]
    assert results["--version"] == [0, f"spectrafm {spectrafm_hf.__version__}\n"]
    for c in commands:
        assert results[f"{c} --help"][0] == 0 and f"usage: spectrafm {c}" in results[f"{c} --help"][1], c
    assert "--revision" in results["predict --help"][1] and "--revision" in results["info --help"][1]
    assert results["predict"][0] == 2 and results["nope"][0] == 2  # usage errors, still without torch


def test_help_is_fast():
    """The whole `spectrafm --help` process (interpreter start included), against a generous bound: the package
    import it avoids takes several seconds."""
    t0 = time.perf_counter()
    res = _child("import spectrafm_launcher, sys; sys.exit(spectrafm_launcher.main(['--help']))")
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0 and "usage: spectrafm" in res.stdout
    assert elapsed < 3.0, f"spectrafm --help took {elapsed:.2f} s"


def test_launcher_runs_commands(tmp_path):
    """After parsing, the command runs in spectrafm_hf.cli (here: info of the tiny model, in a child process)."""
    res = _child("import spectrafm_launcher, sys; sys.exit(spectrafm_launcher.main(sys.argv[1:]))", "info", str(TINY))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "labels:" in res.stdout and "TEFF" in res.stdout
    res = _child("import runpy, sys; sys.argv = ['spectrafm'] + sys.argv[1:]; runpy.run_module('spectrafm_hf.cli', "
                 "run_name='__main__')", "--version")
    assert res.returncode == 0 and res.stdout.strip() == f"spectrafm {spectrafm_hf.__version__}"  # -m still works


def test_keyboard_interrupt_exits_130(monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), "info", interrupted))
    assert spectrafm_launcher.main(["info", str(TINY)]) == 130


def _with_func(parser, command, func):
    parser._subparsers._group_actions[0].choices[command].set_defaults(func=func)
    return parser


def test_revision_on_a_local_folder_is_refused(capsys):
    assert cli.main(["info", str(TINY), "--revision", "v1"]) == cli.FAILED
    err = capsys.readouterr().err
    assert "--revision v1" in err and "local folder" in err


def test_predict_revision_loads_that_commit(fake_hub, tmp_path, rng):  # noqa: F811
    """Two pushes of different weights: --revision <first commit> predicts with the first, and says so."""
    import shutil

    from safetensors.torch import load_file, save_file

    first = push_pipeline(TINY, "org/tiny-rev").oid
    changed = tmp_path / "changed"
    shutil.copytree(TINY, changed)
    weights = load_file(changed / "model.safetensors")
    save_file({k: v + 0.05 if v.is_floating_point() else v for k, v in weights.items()},
              changed / "model.safetensors", metadata={"format": "pt"})
    second = push_pipeline(changed, "org/tiny-rev").oid
    assert first != second
    spectrum = fake_apogee_spectrum(rng, n=200, object_id="star")
    np.savez(tmp_path / "star.npz", wavelength=spectrum.wavelength, flux=spectrum.flux, object_id="star")
    tables = {}
    for name, extra in (("first", ["--revision", first]), ("main", [])):
        out = tmp_path / f"{name}.csv"
        assert cli.main(["predict", str(tmp_path / "star.npz"), "--model", "org/tiny-rev", "-o", str(out),
                         "--quiet", *extra]) == 0
        tables[name] = pd.read_csv(out)
    assert tables["first"]["model_revision"].tolist() == [first]
    assert tables["main"]["model_revision"].tolist() == [second]
    assert not np.allclose(tables["first"]["TEFF"], tables["main"]["TEFF"])
    local = cli._load_pipeline(str(TINY), "cpu").predict([spectrum])  # the first push holds TINY's weights
    np.testing.assert_allclose(tables["first"]["TEFF"], local["TEFF"], rtol=1e-5)


def test_predict_ecsv_output_carries_astropy_units_and_resumes(tmp_path, capsys):
    from astropy.table import QTable

    out = tmp_path / "labels.ecsv"
    args = ["predict", str(REPO / "tests" / "fixtures" / "apogee"), "--model", str(TINY), "-o", str(out), "--quiet"]
    assert cli.main(args) == 0
    table = QTable.read(out)  # astropy reads the units back from the ECSV header
    assert str(table["TEFF"].unit) == "K" and str(table["TEFF_err"].unit) == "K"
    assert str(table["FE_H"].unit) == "dex" and table["n_pixels"].unit is None
    same = cli.read_table(out)
    assert len(same) == 4 and same["source"].str.endswith(".fits").all()
    assert cli.main(args + ["--resume"]) == 0  # read back for --resume: nothing left to do
    assert "4 already done" in capsys.readouterr().err
    pd.testing.assert_frame_equal(cli.read_table(out), same)
