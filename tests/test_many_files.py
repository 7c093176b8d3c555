"""`spectrafm predict` on a folder of thousands of small generic files with a few broken ones among them, an
interruption part-way and `--resume` (issue #8). The 2,500-file version is slow-marked; 300 files run by default."""

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

import spectrafm_hf.instruments as instruments
from spectrafm_hf import cli

@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny per-file forward passes: a second thread only adds synchronisation (16x slower on a 2-core machine with
    another busy process); restore the suite's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


BROKEN = ("s00007_garbage.npz", "s00013_no_flux_column.csv", "s00101_all_nan.npz")


def make_folder(folder: Path, n: int) -> list[str]:
    """``n`` files (npz, one in 50 a CSV table) of normalised H-band spectra, 3 of them broken in different ways
    (unreadable archive; a table without a flux column; readable but with no usable pixel). Returns the good ones."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    wl = np.linspace(15200.0, 16900.0, 96)
    good = []
    for i in range(n - len(BROKEN)):
        flux = 1 - 0.1 * rng.random(wl.size)
        if i % 50 == 25:
            path = folder / f"s{i:05d}.csv"
            path.write_text("wavelength,flux\n" + "\n".join(f"{a:.3f},{b:.5f}" for a, b in zip(wl, flux)) + "\n")
        else:
            path = folder / f"s{i:05d}.npz"
            np.savez(path, wavelength=wl, flux=flux, object_id=f"star{i}")
        good.append(str(path))
    (folder / BROKEN[0]).write_bytes(b"PK\x03\x04 not really a zip archive")
    (folder / BROKEN[1]).write_text("wavelength,snr\n15200.0,100\n15201.0,100\n")
    np.savez(folder / BROKEN[2], wavelength=wl, flux=np.full(wl.size, np.nan))
    return sorted(good)


class _CountingRead:
    """Wraps `spectrafm_hf.instruments.read` (what the CLI calls per file); optionally raises after ``stop_at``."""

    def __init__(self, real, stop_at=None, exc=KeyboardInterrupt):
        self.real, self.stop_at, self.exc, self.calls = real, stop_at, exc, []

    def __call__(self, path, *args, **kwargs):
        if self.stop_at is not None and len(self.calls) == self.stop_at:
            raise self.exc()
        self.calls.append(str(path))
        return self.real(path, *args, **kwargs)


def _check_complete(out, good, err):
    table = pd.read_csv(out)
    assert sorted(table["source"]) == good  # every good file has exactly one row, nothing else has one
    assert table["TEFF"].notna().all() and table["FE_H_err"].gt(0).all()
    for name in BROKEN:  # every broken file is named on stderr
        assert re.search(rf"FAILED .*{re.escape(name)}", err), name
    return table


@pytest.mark.parametrize("n_files", [300, pytest.param(2500, marks=pytest.mark.slow)])
def test_thousands_of_files_with_broken_ones_interrupted_then_resumed(tmp_path, monkeypatch, capsys, n_files):
    good = make_folder(tmp_path / "data", n_files)
    out = tmp_path / "labels.csv"
    args = ["predict", str(tmp_path / "data"), "--model", str(TINY), "-o", str(out), "--quiet"]
    real = instruments.read
    t0 = time.perf_counter()

    # run 1: Ctrl-C after 60 % of the files; what is done is written, the message says how to go on
    stop_at = int(0.6 * n_files)
    first = _CountingRead(real, stop_at=stop_at)
    monkeypatch.setattr(instruments, "read", first)
    assert cli.main(args) == cli.INTERRUPTED == 130  # after writing what is done
    err = capsys.readouterr().err
    # files are predicted in groups: those read but not yet predicted at the interruption have no row
    n_done = int(re.search(rf"interrupted after (\d+) of {n_files} files", err)[1])
    assert stop_at - cli.SPECTRA_PER_PREDICTION < n_done <= stop_at and "--resume" in err
    done = pd.read_csv(out)
    done_good = sorted(done["source"])
    assert len(set(done_good)) == len(done_good) and set(done_good) <= set(first.calls) & set(good)
    assert len(done_good) == n_done - len(BROKEN)
    for name in BROKEN:  # all three sort before the interruption
        assert re.search(rf"FAILED .*{re.escape(name)}", err), name

    # run 2: --resume reads only the files without a row (the broken ones are tried again and reported again)
    second = _CountingRead(real)
    monkeypatch.setattr(instruments, "read", second)
    assert cli.main(args + ["--resume"]) == 1
    err = capsys.readouterr().err
    assert set(second.calls) == {str(p) for p in (tmp_path / "data").iterdir()} - set(done_good)
    assert f"{len(done_good)} already done" in err and f"{len(BROKEN)} files failed" in err
    _check_complete(out, good, err)

    # run 3: resuming a finished table reads only the broken files again and changes no row
    third = _CountingRead(real)
    monkeypatch.setattr(instruments, "read", third)
    assert cli.main(args + ["--resume"]) == 1
    assert sorted(Path(p).name for p in third.calls) == sorted(BROKEN)
    _check_complete(out, good, capsys.readouterr().err)
    print(f"{n_files} files: {time.perf_counter() - t0:.1f} s for the three runs")


def test_a_hard_kill_keeps_the_rows_flushed_so_far(tmp_path, monkeypatch, capsys):
    """A kill that no handler sees (here an exception that is not an Exception, standing in for SIGKILL/OOM) keeps
    the table last flushed to --output; --resume then does the rest."""

    class Killed(BaseException):
        pass

    good = make_folder(tmp_path / "data", 40)
    out = tmp_path / "labels.csv"
    args = ["predict", str(tmp_path / "data"), "--model", str(TINY), "-o", str(out), "--quiet"]
    monkeypatch.setattr(cli, "FLUSH_SECONDS", 0.0)  # flush after every prediction,
    monkeypatch.setattr(cli, "SPECTRA_PER_PREDICTION", 1)  # which is after every file
    first = _CountingRead(instruments.read, stop_at=25, exc=Killed)
    monkeypatch.setattr(instruments, "read", first)
    with pytest.raises(Killed):
        cli.main(args)
    done = pd.read_csv(out)
    assert sorted(done["source"]) == [p for p in first.calls if p in set(good)]
    monkeypatch.setattr(instruments, "read", first.real)
    assert cli.main(args + ["--resume"]) == 1
    _check_complete(out, good, capsys.readouterr().err)
