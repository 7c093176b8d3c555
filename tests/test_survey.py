"""Survey-scale prediction (issue 17): `spectrafm predict` across processes (accelerate launch / torchrun on CPU),
streaming `datasets` input, resumable Parquet parts, and tables identical to a single-process run.

The multi-process tests start real 2-process jobs (gloo on CPU) with the tiny checkpoint; each takes ~20-40 s on
2 shared cores."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, TINY

from spectrafm_hf.cli import main

WL = np.linspace(15200.0, 16900.0, 96)
BIN = Path(sys.executable).parent
needs_launchers = pytest.mark.skipif(not (BIN / "accelerate").exists() or not (BIN / "torchrun").exists(),
                                     reason="accelerate / torchrun not installed beside this Python")


def write_dataset(folder: Path, n=37, bad_row=5) -> Path:
    """``n`` spectra in the package's schema as two Parquet files; row ``bad_row`` has no usable pixel."""
    from spectrafm_hf.data import arrays_to_table

    folder.mkdir(parents=True, exist_ok=True)
    flux = 1 - 0.1 * np.random.default_rng(0).random((n, WL.size))
    flux[:, :10] *= np.linspace(0.9, 1.1, n)[:, None]  # spectra differ in more than noise
    if bad_row is not None:
        flux[bad_row] = np.nan
    ids = [f"star{i:03d}" for i in range(n)]
    half = n // 2
    for j, sl in enumerate([slice(0, half), slice(half, n)]):
        pq.write_table(arrays_to_table(ids[sl], "apogee", WL, flux[sl]), folder / f"train-{j:05d}.parquet")
    return folder


def write_files(folder: Path) -> list[Path]:
    """Spectrum files for `spectrafm predict`: 5-row npz files (one with a bad row), single CSVs, a broken file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(5):
        flux = 1 - 0.1 * rng.random((5, WL.size))
        if i == 2:
            flux[3] = np.nan
        p = folder / f"multi{i}.npz"
        np.savez(p, wavelength=WL, flux=flux, object_id=np.array([f"m{i}-{k}" for k in range(5)]))
        paths.append(p)
    for i in range(3):
        p = folder / f"single{i}.csv"
        flux = 1 - 0.1 * rng.random(WL.size)
        p.write_text("wavelength,flux\n" + "\n".join(f"{a:.3f},{b:.5f}" for a, b in zip(WL, flux)) + "\n")
        paths.append(p)
    (folder / "broken.fits").write_bytes(b"not a fits file")
    return sorted(paths + [folder / "broken.fits"])


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launch(launcher, *argv, env=None, timeout=600):
    """`spectrafm predict` in 2 CPU processes, as a user starts it."""
    if launcher == "accelerate":  # on a machine without GPUs --multi_gpu starts CPU processes (gloo)
        cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port()]
    else:
        cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
               free_port()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(REPO / "src"), **(env or {})}
    res = subprocess.run([*cmd, "-m", "spectrafm_hf.cli", "predict", *map(str, argv), "--model", str(TINY)],
                         capture_output=True, text=True, env=env, timeout=timeout)
    return res.returncode, res.stderr


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame):
    """Same columns, rows and order, every non-float value equal; floats equal to float32 precision. The network
    runs in float32 and batches of other sizes round differently (~1e-7 relative), so a label, its _err and its
    _scatter (a small difference of near-equal subset values) may differ by ~1e-7 of the label's own scale."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    floats = [c for c in a.columns if a[c].dtype.kind == "f"]
    pd.testing.assert_frame_equal(a.drop(columns=floats), b.drop(columns=floats), check_exact=True)
    for col in floats:
        base = col.removesuffix("_err").removesuffix("_scatter")
        scale = float(np.nanmax(np.abs(a[base]))) if base in a else 1.0
        np.testing.assert_allclose(b[col], a[col], rtol=1e-6, atol=1e-6 * max(scale, 1.0), err_msg=col)


def test_streaming_dataset_in_one_process(tmp_path, tiny_pipeline, capsys):
    """--dataset reads Parquet shards as a stream, in Parquet parts; a bad row is reported and skipped; the values
    are those of SpectraFMPipeline.predict on the same spectra; the parts folder is gone after the merge."""
    from spectrafm_hf.data.schema import row_to_spectrum
    from spectrafm_hf.survey import open_stream_dataset

    data = write_dataset(tmp_path / "data")
    stream = open_stream_dataset(str(data))
    assert type(stream).__name__ == "IterableDataset"
    out = tmp_path / "labels.parquet"
    code = main(["predict", "--dataset", str(data), "-o", str(out), "--model", str(TINY), "--chunk-size", "8"])
    err = capsys.readouterr().err
    assert code == 1 and "row 5" in err and "no usable pixel" in err
    table = pd.read_parquet(out)
    assert table["row"].tolist() == [i for i in range(37) if i != 5]
    assert table["object_id"].tolist() == [f"star{i:03d}" for i in range(37) if i != 5]
    assert set(table["source"]) == {str(data.resolve())}
    assert set(table["model_revision"]) == {table["model_revision"][0]} and len(table["model_revision"][0]) == 12
    rows = [r for r in stream if r["object_id"] != "star005"]
    direct = tiny_pipeline.predict([row_to_spectrum(r) for r in rows])
    for col in ("TEFF", "LOGG", "FE_H", "FE_H_err", "n_subsets"):
        np.testing.assert_allclose(table[col], direct[col], rtol=1e-6)
    assert not (tmp_path / "labels.parquet.parts").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "labels.parquet"]  # no lock or temp left

    # the same from Python
    api_out = tmp_path / "api.parquet"
    result = tiny_pipeline.predict_distributed(data, api_out, dataset=True, chunk_size=5)
    assert result.exit_code == 1 and result.n_spectra == 36 and result.n_failures == 1 and result.n_chunks == 8
    assert_same_table(pd.read_parquet(api_out).drop(columns=["model"]), table.drop(columns=["model"]))


def test_parts_folder_needs_resume_and_same_settings(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", n=12, bad_row=None)
    out = tmp_path / "labels.parquet"
    base = ["predict", "--dataset", str(data), "-o", str(out), "--model", str(TINY), "--chunk-size", "4"]
    assert main(base + ["--keep-parts"]) == 0
    first = pd.read_parquet(out)
    parts = tmp_path / "labels.parquet.parts"
    assert sorted(p.name for p in parts.glob("part-*.parquet")) == [f"part-0000000{k}.parquet" for k in range(3)]
    capsys.readouterr()
    assert main(base) == 2  # an earlier run's parts: never silently mixed with or replaced by a new run's
    assert "--resume" in capsys.readouterr().err
    assert main(base + ["--resume", "--seed", "3"]) == 2  # resuming with other settings would mix two runs
    assert "seed: 0 then, 3 now" in capsys.readouterr().err
    os.remove(out)
    assert main(base + ["--resume"]) == 0  # every chunk done: the parts are merged again, nothing predicted
    assert "(0 predicted by this run" in capsys.readouterr().err
    assert_same_table(pd.read_parquet(out), first)
    assert not parts.exists()


def test_dataset_errors_are_named(tmp_path, capsys):
    assert main(["predict", "--dataset", str(tmp_path / "nothing-*.parquet"), "-o", str(tmp_path / "o.parquet"),
                 "--model", str(TINY)]) == 2
    assert "no file matches" in capsys.readouterr().err
    data = write_dataset(tmp_path / "data", n=4, bad_row=None)
    assert main(["predict", "--dataset", str(data), "--split", "test", "-o", str(tmp_path / "o.parquet"),
                 "--model", str(TINY)]) == 2
    assert "no split 'test'" in capsys.readouterr().err
    assert main(["predict", "--dataset", str(data), "--model", str(TINY)]) == 2
    assert "--output is needed" in capsys.readouterr().err
    shard = data / "train-00000.parquet"
    before = shard.read_bytes()
    assert main(["predict", "--dataset", str(shard), "-o", str(shard), "--model", str(TINY)]) == 2
    assert "refusing to overwrite an input" in capsys.readouterr().err
    assert shard.read_bytes() == before
    assert main(["predict", "--dataset", str(data), "-o", str(data / "labels.parquet"), "--model", str(TINY)]) == 2
    assert "inside the --dataset folder" in capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == ["train-00000.parquet", "train-00001.parquet"]
    assert not list(tmp_path.glob("o.parquet*"))


@needs_launchers
def test_two_processes_write_the_single_process_table(tmp_path):
    """accelerate launch, 2 CPU processes, files input: the merged table equals `spectrafm predict`'s (one
    process): same rows, order and values; the same failures are reported and the same exit code (1) returned."""
    files = write_files(tmp_path / "in")
    single = tmp_path / "single.parquet"
    assert main(["predict", *map(str, files), "-o", str(single), "--model", str(TINY), "--quiet"]) == 1
    code, err = launch("accelerate", tmp_path / "in", "-o", tmp_path / "two.parquet", "--chunk-size", "2")
    assert code == 1, err[-3000:]
    assert "broken.fits" in err and "row 3" in err
    assert "by 2 processes" in err
    two = pd.read_parquet(tmp_path / "two.parquet")
    assert len(two) == 5 * 5 - 1 + 3
    assert_same_table(two, pd.read_parquet(single))


@needs_launchers
def test_killed_rank_resumes_without_loss_or_duplicates(tmp_path):
    """torchrun, 2 CPU processes on a streamed dataset: rank 1 dies abruptly after 2 parts; --resume does only the
    missing chunks and the merged table equals a one-process run: nothing lost, nothing twice."""
    data = write_dataset(tmp_path / "data")
    out = tmp_path / "labels.parquet"
    code, err = launch("torchrun", "--dataset", data, "-o", out, "--chunk-size", "4",
                       env={"SPECTRAFM_SURVEY_KILL_AFTER": "1:2"})
    assert code != 0 and not out.exists(), err[-3000:]
    parts = tmp_path / "labels.parquet.parts"
    rank1 = [json.loads(line) for line in (parts / "manifest-rank1.jsonl").read_text().splitlines()]
    assert [r["chunk"] for r in rank1] == [1, 3]  # round robin: rank 1 owns the odd chunks; it died after two
    code, err = launch("torchrun", "--dataset", data, "-o", out, "--chunk-size", "4", "--resume")
    assert code == 1, err[-3000:]  # the bad row 5
    assert "row 5" in err
    resumed = pd.read_parquet(out)
    assert not parts.exists()
    assert resumed["object_id"].is_unique and len(resumed) == 36
    one = tmp_path / "one.parquet"
    assert main(["predict", "--dataset", str(data), "-o", str(one), "--model", str(TINY), "--chunk-size", "4"]) == 1
    assert_same_table(resumed, pd.read_parquet(one))


def test_torn_manifest_line_is_redone(tmp_path, capsys):
    """A rank killed while writing its manifest line leaves half a line: that chunk is redone on --resume, and the
    records appended after it stay readable."""
    data = write_dataset(tmp_path / "data", n=12, bad_row=None)
    out = tmp_path / "labels.parquet"
    base = ["predict", "--dataset", str(data), "-o", str(out), "--model", str(TINY), "--chunk-size", "4"]
    assert main(base + ["--keep-parts"]) == 0
    first = pd.read_parquet(out)
    parts = tmp_path / "labels.parquet.parts"
    manifest = parts / "manifest-rank0.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])  # chunk 2's record torn
    (parts / "part-00000002.parquet").unlink()
    os.remove(out)
    capsys.readouterr()
    assert main(base + ["--resume", "--keep-parts"]) == 0
    assert "(4 predicted by this run" in capsys.readouterr().err  # chunk 2 only
    assert_same_table(pd.read_parquet(out), first)
    assert sorted(json.loads(line)["chunk"] for line in manifest.read_text().splitlines()
                  if line.endswith("}")) == [0, 1, 2]
