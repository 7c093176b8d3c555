"""`spectrafm predict` never loses or overwrites a user's files and reports every failure honestly (issue 18, the
prediction side): the output is checked before any prediction, a failed write leaves the rows in a named file, two
runs on one output cannot both "succeed", rows name their model, a bad --resume table is exit code 2, a bad
spectrum fails alone, arguments are checked with messages that name them, and every documented exit code holds."""

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY

from spectrafm_hf import cli
from spectrafm_hf.cli import main

WL = np.linspace(15200.0, 16900.0, 96)


def spectrum_csv(path: Path, seed=0) -> Path:
    flux = 1 - 0.1 * np.random.default_rng(seed).random(WL.size)
    path.write_text("wavelength,flux\n" + "\n".join(f"{a:.3f},{b:.5f}" for a, b in zip(WL, flux)) + "\n")
    return path


def five_row_npz(path: Path, bad_row=None, kind="nan") -> Path:
    flux = 1 - 0.1 * np.random.default_rng(0).random((5, WL.size))
    if bad_row is not None:
        # "nan": no usable pixel; "clipped": passes the reader but every pixel is beyond the model's flux range
        flux[bad_row] = np.nan if kind == "nan" else np.where(np.arange(WL.size) % 2, 0.05, 1.9)
    np.savez(path, wavelength=WL, flux=flux, object_id=np.array([f"star{i}" for i in range(5)]))
    return path


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def predict(*argv):
    return main(["predict", *map(str, argv), "--model", str(TINY), "--quiet"])


def run_cli(*argv, cwd=None, timeout=300):
    """The CLI as a real process (exit code, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(cli.__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-m", "spectrafm_hf.cli", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def no_model_load(monkeypatch):
    """Checks that must come before any prediction: loading the model fails the test."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded: the check came too late")

    monkeypatch.setattr(cli, "_load_pipeline", refuse)


# ------------------------------------------------------------------------------------------ never overwrite an input
@pytest.mark.parametrize("spelling", ["same", "folder", "glob", "symlink", "hardlink", "dotted"])
def test_output_that_is_an_input_is_refused_and_nothing_is_touched(tmp_path, monkeypatch, capsys, no_model_load,
                                                                   spelling):
    data = tmp_path / "data"
    data.mkdir()
    victim = spectrum_csv(data / "victim.csv")
    spectrum_csv(data / "other.csv", seed=1)
    (tmp_path / "notes.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    inputs, output = {"same": ("data/victim.csv", "data/victim.csv"), "folder": ("data", "data/victim.csv"),
                      "glob": ("data/*.csv", str(victim)), "symlink": ("data/victim.csv", "link.csv"),
                      "hardlink": ("data", "hard.csv"), "dotted": (str(victim), "data/../data/./victim.csv")}[spelling]
    if spelling == "symlink":
        os.symlink(victim, tmp_path / "link.csv")
    if spelling == "hardlink":
        os.link(victim, tmp_path / "hard.csv")
    before = snapshot(tmp_path)
    assert predict(inputs, "-o", output) == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before  # nothing created, nothing changed (no lock, no .tmp)


def test_only_the_output_is_created_and_planted_files_stay(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    five_row_npz(data / "a.npz")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name in ("labels.csv.bak", ".labels.csv.tmp", "notes.txt", "labels.parquet"):
        (out_dir / name).write_text(f"planted {name}")
    before = snapshot(tmp_path)
    assert predict(data, "-o", out_dir / "labels.csv") == 0
    after = snapshot(tmp_path)
    assert set(after) - set(before) == {"out/labels.csv"}
    assert all(after[k] == v for k, v in before.items())
    assert len(pd.read_csv(out_dir / "labels.csv")) == 5


def test_read_only_output_is_refused(tmp_path, capsys, no_model_load):
    spectrum_csv(tmp_path / "s.csv")
    out = tmp_path / "labels.csv"
    out.write_text("precious\n")
    out.chmod(0o444)
    assert predict(tmp_path / "s.csv", "-o", out) == 2
    assert "read-only" in capsys.readouterr().err
    assert out.read_text() == "precious\n"


def test_resume_into_a_table_inside_the_input_folder_does_not_read_it_as_a_spectrum(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    spectrum_csv(data / "a.csv")
    out = data / "labels.csv"
    assert predict(data, "-o", out) == 0
    spectrum_csv(data / "b.csv", seed=2)
    assert predict(data, "-o", out, "--resume") == 0
    assert "1 already done" in capsys.readouterr().err
    assert sorted(Path(p).name for p in pd.read_csv(out)["source"]) == ["a.csv", "b.csv"]
    assert predict(data, "-o", out) == 2  # without --resume the table is an input like any other: refused


# ------------------------------------------------------------------------------------------ output format and folder
@pytest.mark.parametrize("name", ["labels", "labels.xlsx", "labels.fits.bz2", "labels.gz"])
def test_unsupported_output_format_fails_before_predicting(tmp_path, capsys, no_model_load, name):
    spectrum_csv(tmp_path / "s.csv")
    before = snapshot(tmp_path)
    assert predict(tmp_path / "s.csv", "-o", tmp_path / name) == 2
    err = capsys.readouterr().err
    assert "unknown table format" in err and ".csv" in err and ".parquet" in err and ".fits" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["labels.tsv", "labels.fits.gz", "labels.csv.gz", "labels.fits", "labels.parquet"])
def test_every_supported_output_format_writes_and_resumes(tmp_path, capsys, name):
    five_row_npz(tmp_path / "a.npz")
    spectrum_csv(tmp_path / "b.csv")
    out = tmp_path / "out" / name
    assert predict(tmp_path / "a.npz", "-o", out) == 0
    assert predict(tmp_path / "a.npz", tmp_path / "b.csv", "-o", out, "--resume") == 0
    assert "1 already done" in capsys.readouterr().err
    table = cli.read_table(out)
    assert len(table) == 6 and table["TEFF"].notna().all()


def test_unwritable_output_folder_fails_before_predicting(tmp_path, capsys, no_model_load):
    spectrum_csv(tmp_path / "s.csv")
    (tmp_path / "a_file").write_text("not a folder")
    before = snapshot(tmp_path)
    assert predict(tmp_path / "s.csv", "-o", tmp_path / "a_file" / "labels.csv") == 2
    assert "not a folder" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into any folder")
def test_read_only_output_folder_fails_before_predicting(tmp_path, capsys, no_model_load):
    spectrum_csv(tmp_path / "s.csv")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert predict(tmp_path / "s.csv", "-o", locked / "labels.csv") == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


def test_fits_output_with_a_non_ascii_source_path(tmp_path):
    folder = tmp_path / "Müller_Öl"
    folder.mkdir()
    five_row_npz(folder / "étoile.npz")
    out = tmp_path / "labels.fits"
    assert predict(folder, "-o", out) == 0
    table = cli.read_table(out)
    assert len(table) == 5 and set(table["source"]) == {str(folder / "étoile.npz")}


def test_parquet_output_with_a_scalar_string_object_id(tmp_path):
    np.savez(tmp_path / "one.npz", wavelength=WL, flux=1 - 0.1 * np.random.default_rng(0).random(WL.size),
             object_id="2M00000000+0000000")
    out = tmp_path / "labels.parquet"
    assert predict(tmp_path / "one.npz", "-o", out) == 0
    assert pd.read_parquet(out)["object_id"].tolist() == ["2M00000000+0000000"]


# ------------------------------------------------------------------------------------------ a write that fails
def _disk_full_for(monkeypatch, method, when):
    """Make DataFrame.<method> create its file empty and then raise ENOSPC, for the paths where ``when(path)``."""
    real = getattr(pd.DataFrame, method)

    def full(self, path=None, *args, **kwargs):
        if path is not None and when(str(path)):
            Path(path).write_bytes(b"")  # what a full disk leaves: an empty file
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, method, full)


def test_full_disk_leaves_the_rows_in_a_named_rescue_file_and_no_tmp(tmp_path, monkeypatch, capsys):
    five_row_npz(tmp_path / "a.npz")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "planted.txt").write_text("keep")
    _disk_full_for(monkeypatch, "to_parquet", lambda p: True)
    out = out_dir / "labels.parquet"
    assert predict(tmp_path / "a.npz", "-o", out) == cli.WRITE_FAILED == 3
    err = capsys.readouterr().err
    rescued = out_dir / f"labels.parquet.rescued-{os.getpid()}.csv"
    assert "No space left on device" in err and str(rescued) in err
    assert len(pd.read_csv(rescued)) == 5
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(["planted.txt", rescued.name])  # no .tmp, no lock
    assert (out_dir / "planted.txt").read_text() == "keep"


def test_when_no_file_can_be_written_the_rows_go_to_stdout(tmp_path, monkeypatch, capsys):
    five_row_npz(tmp_path / "a.npz")
    _disk_full_for(monkeypatch, "to_csv", lambda p: True)
    out = tmp_path / "labels.csv"
    assert predict(tmp_path / "a.npz", "-o", out) == 3
    captured = capsys.readouterr()
    assert "rows follow on stdout" in captured.err
    assert captured.out.count("star") == 5 and "TEFF" in captured.out
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".labels")]
    assert not any(Path(cli.tempfile.gettempdir()).glob(f"spectrafm-labels.csv.rescued-{os.getpid()}*"))


# ------------------------------------------------------------------------------------------ concurrent runs
HELD_RUN = """
import sys, time, pathlib
import spectrafm_hf.instruments as instruments
from spectrafm_hf import cli
real, go = instruments.read, pathlib.Path(sys.argv[1])
def read(path, *a, **k):  # hold the output until the test says go
    while not go.exists():
        time.sleep(0.05)
    return real(path, *a, **k)
instruments.read = read
sys.exit(cli.main(sys.argv[2:]))
"""


def test_two_processes_on_one_output_the_second_stops_clearly_and_no_row_is_lost(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        five_row_npz(tmp_path / name / f"{name}.npz")
    out, go = tmp_path / "shared.csv", tmp_path / "go"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(cli.__file__).parents[1]))
    first = subprocess.Popen([sys.executable, "-c", HELD_RUN, str(go), "predict", str(tmp_path / "a"), "--model",
                              str(TINY), "-o", str(out), "--quiet"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / ".shared.csv.lock").exists():  # the first run holds the output
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "slow"
            time.sleep(0.1)
        code, _, err = run_cli("predict", tmp_path / "b", "--model", TINY, "-o", out, "--quiet")
        assert code == 2 and f"another spectrafm run (pid {first.pid}) is writing shared.csv" in err
        go.write_text("")
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    assert set(pd.read_csv(out)["source"]) == {str(tmp_path / "a" / "a.npz")}
    assert not (tmp_path / ".shared.csv.lock").exists()
    # the second run, once the first is done, adds its rows
    assert run_cli("predict", tmp_path / "b", "--model", TINY, "-o", out, "--resume", "--quiet")[0] == 0
    assert len(pd.read_csv(out)) == 10


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    five_row_npz(tmp_path / "a.npz")
    (tmp_path / ".labels.csv.lock").write_text("999999")  # a run killed with SIGKILL leaves its file, not its lock
    assert predict(tmp_path / "a.npz", "-o", tmp_path / "labels.csv") == 0
    assert len(pd.read_csv(tmp_path / "labels.csv")) == 5


# ------------------------------------------------------------------------------------------ model per row, --resume
def test_rows_carry_the_model_and_its_revision(tmp_path):
    five_row_npz(tmp_path / "a.npz")
    assert predict(tmp_path / "a.npz", "-o", tmp_path / "labels.csv") == 0
    table = pd.read_csv(tmp_path / "labels.csv")
    model, revision = cli.model_identity(TINY)
    assert model == str(TINY.resolve()) and len(revision) == 12
    assert (table["model"] == model).all() and (table["model_revision"] == revision).all()


def test_resume_with_another_model_refuses(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-model"
    shutil.copytree(TINY, other)
    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01 * torch.ones_like(weights[name])
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    five_row_npz(tmp_path / "a.npz")
    spectrum_csv(tmp_path / "b.csv")
    out = tmp_path / "labels.csv"
    assert predict(tmp_path / "a.npz", "-o", out) == 0
    before = out.read_bytes()
    code = main(["predict", str(tmp_path / "a.npz"), str(tmp_path / "b.csv"), "--model", str(other), "-o", str(out),
                 "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume" in err and str(other.resolve()) in err and str(TINY.resolve()) in err
    assert out.read_bytes() == before
    # a copy of the same weights elsewhere is the same model
    same = tmp_path / "same-model"
    shutil.copytree(TINY, same)
    assert main(["predict", str(tmp_path / "b.csv"), "--model", str(same), "-o", str(out), "--resume", "--quiet"]) == 0


def test_resume_from_another_working_directory_knows_the_files_done(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    for i in range(3):
        spectrum_csv(project / "data" / f"s{i}.csv", seed=i)
    monkeypatch.chdir(project)
    assert predict("data", "-o", "labels.csv") == 0  # relative paths
    spectrum_csv(project / "data" / "s3.csv", seed=3)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert predict("../project/data", "-o", "../project/labels.csv", "--resume") == 0
    assert "3 already done" in capsys.readouterr().err
    table = pd.read_csv(project / "labels.csv")
    assert len(table) == 4 and table["source"].is_unique


@pytest.mark.parametrize("damage", ["empty", "header_only", "truncated", "not_a_table", "no_source", "bad_parquet"])
def test_a_damaged_resume_table_is_a_clear_exit_code_2(tmp_path, capsys, damage):
    spectrum_csv(tmp_path / "s.csv")
    five_row_npz(tmp_path / "a.npz")
    out = tmp_path / ("labels.parquet" if damage == "bad_parquet" else "labels.csv")
    assert predict(tmp_path / "a.npz", "-o", out) == 0
    text = out.read_bytes()
    damaged = {"empty": b"", "header_only": text.split(b"\n")[0] + b"\n", "truncated": text[: len(text) * 2 // 3],
               "not_a_table": b"\x00\x01garbage\xff" * 50, "no_source": b"TEFF,LOGG\n4800,2.5\n",
               "bad_parquet": text[: len(text) // 2]}[damage]
    out.write_bytes(damaged)
    capsys.readouterr()
    assert predict(tmp_path / "s.csv", "-o", out, "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 3 and "--resume" in err and str(out) in err and "Traceback" not in err
    assert out.read_bytes() == damaged  # left as it was for the user to look at


def test_a_truncated_resume_table_as_a_real_process(tmp_path):
    five_row_npz(tmp_path / "a.npz")
    out = tmp_path / "labels.csv"
    assert predict(tmp_path / "a.npz", "-o", out) == 0
    out.write_bytes(out.read_bytes()[:-40])
    code, _, err = run_cli("predict", tmp_path / "a.npz", "--model", TINY, "-o", out, "--resume")
    assert code == 2 and "Traceback" not in err and "incomplete" in err


# ------------------------------------------------------------------------------------------ one bad spectrum
@pytest.mark.parametrize("kind", ["nan", "clipped"])
def test_one_bad_row_of_a_five_row_npz_fails_alone(tmp_path, capsys, kind):
    five_row_npz(tmp_path / "five.npz", bad_row=2, kind=kind)
    five_row_npz(tmp_path / "good.npz")
    out = tmp_path / "labels.csv"
    assert predict(tmp_path / "five.npz", tmp_path / "good.npz", "-o", out) == 1
    err = capsys.readouterr().err
    assert f"FAILED {tmp_path / 'five.npz'} (row 2)" in err
    assert "1 spectra failed in files whose other spectra were kept" in err
    table = pd.read_csv(out)
    mine = table[table["source"] == str(tmp_path / "five.npz")]
    assert mine["row"].tolist() == [0, 1, 3, 4] and mine["object_id"].tolist() == ["star0", "star1", "star3", "star4"]
    assert table["TEFF"].notna().all() and len(table) == 9
    # the kept rows are those the file gives alone without its bad row
    good_alone = tmp_path / "alone.csv"
    assert predict(tmp_path / "good.npz", "-o", good_alone) == 0
    assert np.allclose(mine["TEFF"], pd.read_csv(good_alone)["TEFF"].iloc[[0, 1, 3, 4]], rtol=1e-6)


# ------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("argv, named", [
    (["--n-repeats", "0"], "--n-repeats"), (["--batch-size", "-1"], "--batch-size"),
    (["--n-repeats", "two"], "--n-repeats"), (["--resume"], "--resume needs --output"),
    (["--labels", "TEFF", "TEFF"], "--labels"), (["--labels", "VSINI"], "--labels"),
    (["--plot", "kiel.txt"], "--plot"), (["--rows", "some"], "--rows"),
])
def test_bad_predict_arguments_name_the_argument(tmp_path, capsys, argv, named):
    spectrum_csv(tmp_path / "s.csv")
    try:
        code = main(["predict", str(tmp_path / "s.csv"), "--model", str(TINY), "--quiet", *argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2 and named in capsys.readouterr().err


@pytest.mark.parametrize("call, named", [
    (lambda p, s: p.predict(s, n_repeats=0), "n_repeats"), (lambda p, s: p.predict(s, n_repeats=1.5), "n_repeats"),
    (lambda p, s: p.predict(s, labels=[]), "labels"), (lambda p, s: p.embed(s, n_repeats=-1), "n_repeats"),
    (lambda p, s: list(p.predict_stream([s], chunk_size=0)), "chunk_size"),
    (lambda p, s: list(p.predict_stream([s], labels=[])), "labels"),
])
def test_bad_api_arguments_name_the_argument(tiny_pipeline, rng, call, named):
    from conftest import fake_apogee_spectrum

    with pytest.raises(ValueError, match=named):
        call(tiny_pipeline, fake_apogee_spectrum(rng, n=300))


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_bad_pipeline_batch_size_names_the_argument(batch_size):
    from spectrafm_hf import SpectraFMPipeline

    with pytest.raises(ValueError, match="batch_size"):
        SpectraFMPipeline.from_pretrained(TINY, device="cpu", batch_size=batch_size)


# ------------------------------------------------------------------------------------------ exit codes
def test_every_documented_exit_code_as_a_real_process(tmp_path):
    """0 all done; 1 some inputs failed, the rest written; 2 nothing could be done; 3 predictions not writable."""
    assert all(f"{c} " in cli.__doc__ or f"{c} =" in cli.__doc__ for c in (0, 1, 2, 3))
    good = five_row_npz(tmp_path / "good.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    code, _, err = run_cli("predict", good, "--model", TINY, "-o", tmp_path / "ok.csv")
    assert code == 0, err
    code, _, err = run_cli("predict", good, tmp_path / "broken.npz", "--model", TINY, "-o", tmp_path / "part.csv")
    assert code == 1 and "FAILED" in err and len(pd.read_csv(tmp_path / "part.csv")) == 5
    code, _, err = run_cli("predict", tmp_path / "broken.npz", "--model", TINY, "-o", tmp_path / "none.csv")
    assert code == 2 and not (tmp_path / "none.csv").exists()
    code, _, err = run_cli("predict", good, "--model", TINY, "-o", tmp_path / "x.tsvv")
    assert code == 2 and "Traceback" not in err
    # 3: the output's folder turns into a file while the run predicts (after the checks): the rows go to the temp folder
    script = ("import sys, pathlib, shutil; import spectrafm_hf.instruments as I; from spectrafm_hf import cli\n"
              "real = I.read\n"
              "def read(p, *a, **k):\n"
              "    d = pathlib.Path(sys.argv[1]); shutil.rmtree(d); d.write_text('now a file')\n"
              "    return real(p, *a, **k)\n"
              "I.read = read\n"
              "sys.exit(cli.main(sys.argv[2:]))\n")
    target = tmp_path / "vanishing"
    target.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(cli.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", script, str(target), "predict", str(good), "--model", str(TINY),
                             "-o", str(target / "labels.csv")], env=env, stderr=subprocess.PIPE, text=True)
    err = proc.communicate(timeout=300)[1]
    rescued = Path(cli.tempfile.gettempdir()) / f"spectrafm-labels.csv.rescued-{proc.pid}.csv"
    try:
        assert proc.returncode == 3, err
        assert f"the 5 rows are in {rescued}" in err and len(pd.read_csv(rescued)) == 5
    finally:
        rescued.unlink(missing_ok=True)


def test_attention_and_evaluate_outputs_never_overwrite_their_input(tmp_path, capsys, no_model_load):
    victim = spectrum_csv(tmp_path / "victim.csv")
    before = victim.read_bytes()
    assert main(["attention", str(victim), "--model", str(TINY), "-o", str(victim)]) == 2
    assert main(["attention", str(victim), "--model", str(TINY), "--plot", str(victim)]) == 2
    data = tmp_path / "set.parquet"
    data.write_bytes(b"PAR1 a dataset")
    assert main(["evaluate", "--model", str(TINY), "--data", str(data), "-o", str(data)]) == 2
    assert victim.read_bytes() == before and data.read_bytes() == b"PAR1 a dataset"
    assert capsys.readouterr().err.count("refusing to overwrite an input") == 3


def test_a_new_output_folder_is_removed_again_when_nothing_is_written(tmp_path, capsys):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    assert predict(tmp_path / "broken.npz", "-o", tmp_path / "new" / "deeper" / "labels.csv") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.npz"]
