"""Survey-scale prediction: many processes (Accelerate / torchrun), streaming `datasets` inputs, resumable Parquet
parts, bounded memory.

    accelerate launch --multi_gpu --num_processes 8 -m spectrafm_hf.cli predict apStar/ -o labels.parquet
    torchrun --nproc_per_node 2 -m spectrafm_hf.cli predict --dataset shards/ -o labels.parquet   # 2 CPU processes
    spectrafm predict --dataset my-org/apogee-observed --split test -o labels.parquet              # one process

(`accelerate launch --cpu` always starts a single process; on a machine without GPUs `--multi_gpu` starts CPU
processes that talk over gloo.)

The work is a stable list of chunks: ``chunk_size`` consecutive files of the sorted input list, or ``chunk_size``
consecutive rows of the dataset stream. Chunk ``k`` belongs to rank ``k % world_size`` (round robin: the ranks
stay within one chunk of each other). A rank writes each finished chunk as ``<output>.parts/part-<k>.parquet``
(a temporary file renamed into place) and then appends a line to its ``manifest-rank<r>.jsonl`` (flushed and
fsynced): a chunk is done exactly when a manifest names it, so a rank killed mid-way loses only the chunk it was
working on and ``--resume`` redoes just the chunks no manifest names (with any number of processes). When every
rank is done, rank 0 merges the parts in chunk order into ``<output>``: the rows and their order are those of a
single-process run, and so are the values to float32 precision (every spectrum's pixel subsets are seeded by
itself, not by its batch; only the rounding of differently sized batches differs). Merging Parquet streams part by
part, so no process ever holds more than a chunk of spectra or a part of the table.

With a dataset, every rank reads the stream in Arrow batches of ``chunk_size`` rows and turns only its own chunks
into spectra (the others are skipped without being decoded into spectra), so the global row order never depends
on the number of processes or on how the dataset is sharded (`datasets.distributed.split_dataset_by_node` gives no
global order, and reads every row on every rank anyway unless the shard count divides by the world size). Nothing
is cached on disk; the price is that each rank reads the whole stream (for a Hub dataset: downloads it once per
rank), which is small beside the network's cost per spectrum.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace


__all__ = ["SurveyResult", "cmd_predict_survey", "launched_world_size", "open_stream_dataset", "predict_survey"]

CHUNK_SIZE = 512  # files or dataset rows per part: a killed rank redoes at most this much
MANIFEST_VERSION = 1
# test hook: "RANK:N" makes that rank exit abruptly (os._exit, no cleanup) after writing N parts
KILL_ENV = "SPECTRAFM_SURVEY_KILL_AFTER"


@dataclass
class SurveyResult:
    """What `predict_survey` did (the same on every rank, except ``rss_mb``/``spectra_per_rank`` detail)."""

    exit_code: int
    output: str | None
    n_spectra: int = 0
    n_failures: int = 0
    n_chunks: int = 0
    seconds: float = 0.0
    ranks: list = field(default_factory=list)  # per rank: spectra, chunks, seconds, peak RSS (MiB)


def launched_world_size() -> int:
    """Processes started by accelerate launch / torchrun / mpirun (1 when run plainly)."""
    for name in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        with contextlib.suppress(ValueError):
            if int(os.environ.get(name, "1")) > 1:
                return int(os.environ[name])
    return 1


def _err(msg):
    print(f"spectrafm: {msg}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used: throughput per CPU second does not depend on how busy
    the machine is."""
    t = os.times()
    return t.user + t.system


def peak_rss_mb() -> float:
    """This process's peak resident memory (MiB; 0 where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ---------------------------------------------------------------------------------------------------- processes
class _Group:
    """The ranks of this run: Accelerate's PartialState when launched with several processes, else one process."""

    def __init__(self, cpu: bool):
        self.state = None
        if launched_world_size() > 1:
            from accelerate import PartialState

            # a rank may wait long for the slowest one at the end: no 30-minute collective timeout
            self.state = PartialState(cpu=cpu, timeout=datetime.timedelta(hours=48))
        self.rank = self.state.process_index if self.state else 0
        self.size = self.state.num_processes if self.state else 1
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.size))
        self.device = self.state.device if self.state else None

    def broadcast(self, obj):
        """rank 0's ``obj`` on every rank."""
        if self.size == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank (waits for all of them)."""
        if self.size == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])


# ---------------------------------------------------------------------------------------------------- inputs
def open_stream_dataset(spec: str, split: str = "train", config: str | None = None, builder_kwargs=None):
    """A `datasets.IterableDataset` (streaming: nothing cached, rows read as needed) from

    - Parquet files: a file, a folder (its ``*.parquet``, recursively) or a glob;
    - a config of the package's builder (`spectrafm_hf.data.SpectraFMDatasets`, e.g. ``synthetic_apogee``);
    - a Hub dataset id in the package's schema (``config`` = its subset).
    """
    from .data.builder import SpectraFMDatasets
    from .data.publish import load_published_dataset

    import datasets

    from .data.schema import require_columns

    path = Path(spec)
    if path.is_dir():  # datasets names the splits from the file names (train-*.parquet, test-*.parquet, ...)
        if not any(path.rglob("*.parquet")):
            raise ValueError(f"--dataset {spec}: no .parquet files in this folder")
        dsd = datasets.load_dataset("parquet", data_dir=str(path), streaming=True)
    elif path.is_file() or any(c in spec for c in "*?["):
        files = sorted(glob.glob(spec, recursive=True)) if not path.is_file() else [spec]
        if not files:
            raise ValueError(f"--dataset {spec}: no file matches")
        if split != "train":
            raise ValueError(f"--dataset {spec}: Parquet files given by name are one split, 'train' (asked for "
                             f"{split!r}); give the folder to have splits named from the file names")
        dsd = load_published_dataset(data_files={"train": files}, streaming=True)
    elif spec in SpectraFMDatasets.builder_configs:
        builder = SpectraFMDatasets(config_name=spec, **(builder_kwargs or {}))
        return builder.as_streaming_dataset(split=split)
    else:
        dsd = load_published_dataset(spec, config, streaming=True)
    if split not in dsd:
        raise ValueError(f"--dataset {spec}: no split {split!r}; it has {list(dsd)}")
    ds = dsd[split]
    require_columns(list(ds.features or {}), ["wavelength", "flux"], what=f"--dataset {spec}",
                    hint="rows need the package's schema (spectrafm_hf.data)")
    return ds


def _local_dataset_files(spec: str, output) -> list[str]:
    """The Parquet files of a local --dataset (an --output among them is refused by the caller); an --output inside
    a --dataset folder is refused here: its parts and table would become rows of the dataset on the next run."""
    from .cli import UsageError

    path = Path(spec)
    if path.is_dir():
        out = Path(output).absolute()
        if path.resolve() in out.resolve().parents or path.resolve() in out.parents:
            raise UsageError(f"--output {output} is inside the --dataset folder {spec}; write it elsewhere")
        return [str(p) for p in path.rglob("*.parquet")]
    return sorted(glob.glob(spec, recursive=True)) if not path.is_file() else [spec]


def _dataset_source(spec: str) -> str:
    """The ``source`` written on rows from a dataset: absolute for local files, else the name as given."""
    return os.path.abspath(spec) if os.path.exists(spec) else spec


def _arrow_spectra(table, first_row: int):
    """Rows of an Arrow batch in the package's schema -> (row number, Spectrum or the error) per row."""
    from .data.schema import arrow_rows, row_to_spectrum

    out = []
    for i, row in enumerate(arrow_rows(table)):
        try:
            spectrum = row_to_spectrum(row)
            spectrum.meta["row"] = first_row + i
            out.append((first_row + i, spectrum))
        except Exception as e:  # noqa: BLE001 - one bad row must not stop its chunk
            out.append((first_row + i, e))
    return out


# ---------------------------------------------------------------------------------------------------- parts
def parts_folder(output) -> Path:
    output = Path(output)
    return output.with_name(f"{output.name}.parts")


def _part_name(chunk: int) -> str:
    return f"part-{chunk:08d}.parquet"


def _done_chunks(folder: Path) -> dict:
    """chunk -> its manifest record, from every rank's manifest (a torn last line of a killed rank is ignored)."""
    done = {}
    for manifest in sorted(folder.glob("manifest-rank*.jsonl")):
        for line in manifest.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("rows", 0) == 0 or (folder / record["part"]).is_file():
                    done[record["chunk"]] = record
    return done


def _write_part(table, folder: Path, chunk: int):
    from .cli import write_table

    write_table(table, folder / _part_name(chunk))  # a temporary file renamed into place


def _append_manifest(handle, record):
    handle.write(json.dumps(record) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------------- predicting
class _ChunkPredictor:
    """Predicts the spectra of one chunk like ``spectrafm predict`` does: shared forward passes, and when the model
    refuses a spectrum, each file / spectrum alone so the bad one fails by itself."""

    def __init__(self, pipe, opts, model, revision):
        self.pipe, self.opts, self.model, self.revision = pipe, opts, model, revision

    def tables(self, groups, failures):
        """groups: [(source, [spectra])] -> a table per group that produced rows (failures appended)."""
        from .cli import _predict_files, _where

        groups = [(src, sp) for src, sp in groups if sp]
        if not groups:
            return []
        try:
            return _predict_files(self.pipe, groups, self.opts)
        except Exception:  # noqa: BLE001 - find the spectra the model refuses, keep the others
            pass
        tables = []
        for source, spectra in groups:
            for s in spectra:
                try:
                    tables += _predict_files(self.pipe, [(source, [s])], self.opts)
                except Exception as e:  # noqa: BLE001
                    failures.append([source, _where(s), f"{type(e).__name__}: {e}"])
                    _err(f"FAILED {source}{_where(s)}: {type(e).__name__}: {e}")
        return tables

    def finish(self, tables, source_override=None):
        import pandas as pd

        if not tables:
            return None
        table = pd.concat(tables, ignore_index=True)
        if source_override is not None:
            table["source"] = source_override
        table["model"], table["model_revision"] = self.model, self.revision
        return table


def _file_chunks(paths, chunk_size):
    return [paths[i: i + chunk_size] for i in range(0, len(paths), chunk_size)]


def _predict_file_chunk(predictor, files, opts):
    from .cli import _read_spectra

    failures, groups = [], []
    for path in files:
        try:
            found = []
            groups.append((path, _read_spectra(path, predictor.pipe, opts, found)))  # prints its FAILED lines
            failures += [[str(p), w, m] for p, w, m in found]
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
            msg = str(e) if str(path) in str(e) else f"{type(e).__name__}: {e}"
            failures.append([str(path), "", msg])
            _err(f"FAILED {path}: {msg}")
    return predictor.finish(predictor.tables(groups, failures)), failures


def _predict_row_chunk(predictor, rows, source):
    from .cli import _prepare

    failures, good = [], []
    for row, item in rows:
        try:
            if isinstance(item, Exception):
                raise item
            if item.n_good == 0:
                raise ValueError("no usable pixel (all flux NaN/masked or ivar 0)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                good.append(_prepare(item, predictor.pipe))
        except Exception as e:  # noqa: BLE001 - a bad row fails alone
            msg = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            failures.append([source, f" (row {row})", msg])
            _err(f"FAILED {source} (row {row}): {msg}")
    tables = predictor.tables([(source, good)], failures)
    return predictor.finish(tables, source_override=source), failures


def _kill_after() -> tuple[int, int] | None:
    value = os.environ.get(KILL_ENV)
    if not value:
        return None
    rank, n = value.split(":")
    return int(rank), int(n)


def _work(group, predictor, opts, folder: Path, todo_chunks, n_chunks_known, iterate):
    """This rank's chunks: predict, write the part, then record it. Returns (spectra, failures, parts, chunks seen)."""
    kill = _kill_after()
    n_spectra = n_failures = n_parts = 0
    n_seen = 0
    path = folder / f"manifest-rank{group.rank}.jsonl"
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "a") as torn:  # a rank killed mid-line: end that line, so the next record stays readable
            torn.write("\n")
    with open(path, "a") as manifest:
        for chunk, payload in iterate():
            n_seen = chunk + 1
            if chunk % group.size != group.rank or chunk not in todo_chunks:
                continue
            table, failures = payload()
            if table is not None:
                _write_part(table, folder, chunk)
            _append_manifest(manifest, {"chunk": chunk, "part": _part_name(chunk),
                                        "rows": 0 if table is None else len(table), "failures": failures})
            n_spectra += 0 if table is None else len(table)
            n_failures += len(failures)
            n_parts += 1
            if kill and kill[0] == group.rank and n_parts >= kill[1]:
                os._exit(17)  # the test of a rank that dies without any cleanup
    return n_spectra, n_failures, n_parts, max(n_seen, n_chunks_known or 0)


# ---------------------------------------------------------------------------------------------------- merging
def merge_parts(folder: Path, n_chunks: int, output):
    """The parts of chunks 0..n_chunks-1, in order, into ``output``: Parquet streamed part by part (bounded
    memory), other formats through `cli.write_table`. Returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .cli import table_format, write_table

    parts = [folder / _part_name(k) for k in range(n_chunks) if (folder / _part_name(k)).is_file()]
    if not parts:
        return 0
    fmt, _ = table_format(output)
    schema = None
    if fmt == "parquet":
        try:
            schema = pa.unify_schemas([pq.read_schema(p).remove_metadata() for p in parts],
                                      promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            schema = None  # parts disagree on a column's type: the in-memory path settles it like one process does
    if schema is None:
        import pandas as pd

        table = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        write_table(table, output)
        return len(table)
    output = Path(output)
    tmp = output.with_name(f".{output.name}.merge-{os.getpid()}.tmp")
    n = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for p in parts:
                table = pq.read_table(p).replace_schema_metadata(None)
                table = table.select(schema.names) if set(table.column_names) == set(schema.names) else table
                for name in schema.names:  # a column a part lacks (never predicted there): nulls
                    if name not in table.column_names:
                        table = table.append_column(name, pa.nulls(len(table), schema.field(name).type))
                writer.write_table(table.select(schema.names).cast(schema))
                n += len(table)
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return n


# ---------------------------------------------------------------------------------------------------- the run
def cmd_predict_survey(args) -> int:
    """`spectrafm predict` under accelerate launch / torchrun, or on a --dataset. Raises cli.UsageError (exit 2)."""
    from .cli import FAILED, UsageError, _load_pipeline, model_identity

    if not args.output:
        raise UsageError("--output is needed with --dataset or several processes (each writes Parquet parts beside "
                         "it, then rank 0 merges them into it)")
    if args.plot:
        raise UsageError("--plot is not available with --dataset or several processes; plot the merged table")
    device = args.device
    if device is None and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        device = "cpu"  # accelerate launch --cpu
    if device is None and launched_world_size() > 1:
        import torch

        if torch.cuda.is_available():  # one GPU per process
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    try:
        pipe = _load_pipeline(args.model, device, args.batch_size, args.bf16, args.compile)
        model, revision = model_identity(args.model)
    except Exception as e:  # noqa: BLE001 - report any loading problem in one line
        _err(f"cannot load model {args.model!r}: {e}")
        return FAILED
    result = predict_survey(pipe, args.paths, args.output, dataset=args.dataset, split=args.split,
                            dataset_config=args.dataset_config, labels=args.labels, seed=args.seed,
                            n_repeats=args.n_repeats, rows=args.rows, chunk_size=args.chunk_size, resume=args.resume,
                            keep_parts=args.keep_parts, model=model, model_revision=revision)
    return result.exit_code


def _settings(opts, kind, inputs, chunk_size, model, revision):
    """What decides the chunks and their rows: a --resume must match it (the input list as a count and a hash, so
    a survey of a million files keeps a small record)."""
    import hashlib

    digest = hashlib.sha256("\n".join(map(str, inputs)).encode()).hexdigest()[:16]
    inputs = list(inputs) if len(inputs) <= 3 else f"{len(inputs)} files from {inputs[0]} (sha256 {digest})"
    return {"version": MANIFEST_VERSION, "kind": kind, "inputs": inputs, "chunk_size": chunk_size,
            "model": model, "model_revision": revision, "labels": opts.labels, "seed": opts.seed,
            "n_repeats": opts.n_repeats, "rows": getattr(opts, "rows", "all"),
            "split": getattr(opts, "split", None), "dataset_config": getattr(opts, "dataset_config", None)}


def _setup(output, resume, settings, inputs_for_clash):
    """rank 0: check the output, take its lock, create or check the parts folder. Returns (lock, error)."""
    from .cli import OutputLock, UsageError, _check_write_target, table_format

    try:
        table_format(output)
        _check_write_target(output, inputs_for_clash, "--output")
        folder = parts_folder(output)
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        try:
            lock = OutputLock(output).acquire()
        except OSError as e:
            raise UsageError(f"--output {output}: cannot write in its folder ({type(e).__name__}: {e})") from None
        try:
            recorded = folder / "survey.json"
            if folder.exists() and not resume:
                raise UsageError(f"{folder} holds the parts of an unfinished run: continue it with --resume, or "
                                 f"remove the folder to start again")
            if resume and recorded.is_file():
                before = json.loads(recorded.read_text())
                changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
                if changed:
                    what = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, a, b in
                                     ((k, *ab) for k, ab in changed.items()))
                    raise UsageError(f"--resume: {folder} was started with other settings ({what}); rerun with "
                                     f"those, or remove the folder to start again")
            elif resume and Path(output).exists() and not folder.exists():
                raise UsageError(f"--resume: {output} has no parts folder {folder.name}: it is finished, or was "
                                 f"written by a single-process run of `spectrafm predict` (resume that with the same "
                                 f"single-process command); write to another --output to start a new run")
            else:
                folder.mkdir(exist_ok=True)
                tmp = recorded.with_name(".survey.json.tmp")
                tmp.write_text(json.dumps(settings, indent=1))
                os.replace(tmp, recorded)
        except BaseException:
            lock.release()
            raise
        return lock, None
    except (UsageError, OSError) as e:
        return None, str(e)


def predict_survey(pipe, inputs, output, *, dataset: bool = False, split: str = "train",
                   dataset_config: str | None = None, labels=None, seed: int = 0, n_repeats: int = 1,
                   rows: str = "all", chunk_size: int = CHUNK_SIZE, resume: bool = False, keep_parts: bool = False,
                   model: str | None = None, model_revision: str | None = None, group=None) -> SurveyResult:
    """Predict ``inputs`` (files/folders/globs, or with ``dataset=True`` one dataset: Parquet files, a builder
    config or a Hub id) on every process of the launch, and write one ``output`` table (rank 0).

    Call it on every rank (the same arguments everywhere). Returns a `SurveyResult`; its ``exit_code`` follows
    ``spectrafm predict``: 0 ok, 1 some spectra/files failed or the run was interrupted, 2 nothing could be done,
    3 the parts are complete but the merged table could not be written (they stay in ``<output>.parts``).
    """
    from .cli import UsageError, expand_paths
    from .pipeline import _positive_int

    chunk_size = _positive_int("chunk_size", chunk_size)
    if group is None:
        group = _Group(cpu=pipe.device.type == "cpu")
    if group.size > 1 and pipe.device.type == "cpu":
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // max(1, group.local_size)))  # no oversubscription of the cores
    if group.size > 1 and pipe.device.type == "cuda" and group.device is not None and pipe.device != group.device:
        pipe.model.to(group.device)  # one GPU per rank
        pipe.device = group.device
    opts = SimpleNamespace(labels=labels, seed=seed, n_repeats=n_repeats, rows=rows, split=split,
                           dataset_config=dataset_config)
    if model is None:
        model = str(getattr(pipe, "name_or_path", "unknown"))
    if model_revision is None:
        from .cli import model_identity

        try:
            model, model_revision = model_identity(model)
        except Exception:  # noqa: BLE001 - a pipeline built in memory has no files to hash
            model_revision = "unknown"
    error, paths, stream = None, None, None
    try:
        if labels is not None:
            pipe._plan(labels)  # unknown labels fail before any work
            if len(set(labels)) != len(labels):
                raise UsageError(f"--labels names a label twice: {labels}")
        if dataset:
            if len(inputs) != 1:
                raise UsageError(f"--dataset takes one dataset, got {len(inputs)}: {inputs}")
            stream = open_stream_dataset(inputs[0], split=split, config=dataset_config)
            kind, recorded_inputs = "dataset", [_dataset_source(inputs[0])]
            paths = _local_dataset_files(inputs[0], output)
        else:
            paths = expand_paths(inputs)
            if resume:
                paths = [p for p in paths if not _same(p, output)]
            if not paths:
                raise UsageError("no input files found")
            kind, recorded_inputs = "files", [os.path.abspath(p) for p in paths]
    except (UsageError, ValueError, KeyError, FileNotFoundError) as e:
        error = f"{e.args[0] if isinstance(e, KeyError) and e.args else e}"
    settings = _settings(opts, "dataset" if dataset else "files", recorded_inputs if error is None else inputs,
                         chunk_size, model, model_revision)
    lock = None
    if group.rank == 0 and error is None:
        lock, error = _setup(output, resume, settings, paths or [])
    errors = group.gather(error)
    if any(errors):
        if group.rank == 0:
            _err(next(e for e in errors if e))
        return SurveyResult(2, None)
    folder = parts_folder(output)
    try:
        t0, c0 = time.time(), cpu_seconds()
        done = _done_chunks(folder)
        if kind == "files":
            chunks = _file_chunks(paths, chunk_size)
            todo = set(range(len(chunks))) - set(done)
            predictor = _ChunkPredictor(pipe, opts, model, model_revision)

            def iterate():
                for k, files in enumerate(chunks):
                    yield k, (lambda files=files: _predict_file_chunk(predictor, files, opts))

            n_known = len(chunks)
        else:
            source = recorded_inputs[0]
            predictor = _ChunkPredictor(pipe, opts, model, model_revision)
            todo = _NotIn(set(done))

            def iterate():
                for k, batch in enumerate(stream.with_format("arrow").iter(batch_size=chunk_size)):
                    if k % group.size != group.rank or k in done:
                        yield k, None  # counted, never decoded
                        continue
                    yield k, (lambda batch=batch, k=k: _predict_row_chunk(
                        predictor, _arrow_spectra(batch, k * chunk_size), source))

            n_known = None
        try:
            n_spectra, n_failures, n_parts, n_seen = _work(group, predictor, opts, folder, todo, n_known, iterate)
        except KeyboardInterrupt:
            _err(f"rank {group.rank}: interrupted; the finished chunks are in {folder}: rerun with --resume -o "
                 f"{output} to do the rest")
            return SurveyResult(1, None)
        seconds = time.time() - t0
        report = {"rank": group.rank, "spectra": n_spectra, "failures": n_failures, "chunks": n_parts,
                  "chunks_seen": n_seen, "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds() - c0, 3),
                  "peak_rss_mb": round(peak_rss_mb(), 1)}
        reports = group.gather(report)  # waits for every rank
        n_chunks = max(r["chunks_seen"] for r in reports)
        code = None
        if group.rank == 0:
            code = _finish(folder, n_chunks, output, keep_parts, reports, t0, earlier=set(done))
        code = group.broadcast(code)
        return SurveyResult(code, str(output), sum(r["spectra"] for r in reports),
                            sum(r["failures"] for r in reports), n_chunks, time.time() - t0, reports)
    finally:
        if lock is not None:
            lock.release()


class _NotIn:
    """``chunk in todo`` for a stream of unknown length: every chunk not done."""

    def __init__(self, done):
        self.done = done

    def __contains__(self, chunk):
        return chunk not in self.done


def _same(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _finish(folder, n_chunks, output, keep_parts, reports, t0, earlier=()) -> int:
    """rank 0, every rank done: check every chunk is recorded, merge, report; the exit code. ``earlier``: chunks
    done by an interrupted run, whose failures this run repeats (they were reported then)."""
    done = _done_chunks(folder)
    missing = [k for k in range(n_chunks) if k not in done]
    if missing:
        _err(f"chunks {missing[:10]} of {n_chunks} are not in any manifest of {folder}; rerun with --resume")
        return 1
    failures = [f for k in range(n_chunks) for f in done[k]["failures"]]
    old = [f for k in sorted(earlier) if k < n_chunks for f in done[k]["failures"]]
    for source, where, msg in old[:20]:
        _err(f"FAILED (in the interrupted run) {source}{where}: {msg}")
    if len(old) > 20:
        _err(f"... and {len(old) - 20} more failures of the interrupted run (in {folder}/manifest-rank*.jsonl)")
    n_rows = sum(done[k]["rows"] for k in range(n_chunks))
    written = False
    if n_rows:
        try:
            merge_parts(folder, n_chunks, output)
            written = True
        except Exception as e:  # noqa: BLE001 - the parts stay: nothing is lost
            _err(f"cannot write {output}: {type(e).__name__}: {e}; the {n_rows} rows are in {folder} (Parquet "
                 f"parts); rerun with --resume -o {output} to merge them again")
            return 3
    if (written or not n_rows) and not keep_parts:  # merged (or nothing to merge): the parts have served
        shutil.rmtree(folder, ignore_errors=True)
    n_spectra = sum(r["spectra"] for r in reports)
    seconds = time.time() - t0
    n_sources = len({f[0] for f in failures if not f[1]})
    print(f"{n_rows} spectra in {n_chunks} chunks by {len(reports)} processes ({n_spectra} predicted by this run in "
          f"{seconds:.1f} s)" + (f"; {len(failures)} failures ({n_sources} whole files)" if failures else "")
          + (f"; wrote {output}" if written else "; nothing to write"), file=sys.stderr, flush=True)
    for r in reports:
        print(f"rank {r['rank']}: {r['spectra']} spectra in {r['chunks']} chunks, {r['seconds']:.2f} s "
              f"({r['cpu_seconds']:.2f} CPU s), peak RSS {r['peak_rss_mb']:.0f} MiB", file=sys.stderr, flush=True)
    if not n_rows:
        return 2  # nothing predicted: every input failed, or there was none
    return 1 if failures else 0
