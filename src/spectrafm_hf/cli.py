"""The `spectrafm` command.

    spectrafm predict PATH... [--model NAME_OR_DIR] [--labels FE_H ...] [--output table.csv|.fits|.parquet]
    spectrafm attention FILE --label FE_H --plot attention.png
    spectrafm synth --instrument apogee --n 1000 [--observed] [--snr 100] --output set.parquet
    spectrafm finetune CONFIG.yaml [--field value ...]       (scripts/finetune.py's arguments)
    spectrafm evaluate --model DIR --data set.parquet
    spectrafm info MODEL
    spectrafm push FOLDER ORG/NAME [--private | --public]
    spectrafm install [--model spectrafm-base]               (puts the default model in the local HF cache)

The console script is `spectrafm_launcher.main`: it answers ``--help``, ``--version`` and argument errors from
`build_parser` without importing torch or transformers, then runs `main`. This module imports only the standard
library and numpy at module level (the launcher loads it on its own to build the parser); everything else is
imported inside the commands.

Exit codes: 0 = everything worked; 1 = some inputs failed (files or single spectra; the others were processed and
written); 2 = nothing could be done (bad arguments, no model, no readable input, an output that would overwrite an
input or is read-only, an unreadable --resume table, another run writing the same output); 3 = the predictions were
made but --output could not be written: they are in the fallback file named on stderr (or on stdout); 130 = stopped
by Ctrl-C (predict first writes what is done).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import gzip
import hashlib
import io
import json
import os
import re
import stat
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "spectrafm-base"
OK, PARTIAL, FAILED, WRITE_FAILED = 0, 1, 2, 3
INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
FLUSH_SECONDS = 60.0  # predict --output: rewrite the table at most this often while running (for --resume)
SPECTRA_PER_PREDICTION = 64  # predict: spectra of consecutive files share forward passes (small files fill a batch)


def _err(msg):
    print(f"spectrafm: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------- helpers
def expand_paths(items) -> list[str]:
    """Files, folders (every file inside, recursively) and globs -> a sorted list of files."""
    out = []
    for item in items:
        if os.path.isdir(item):
            out += sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and not p.name.startswith("."))
        elif any(c in item for c in "*?["):
            out += sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
        else:
            out.append(item)
    seen = set()
    return [p for p in out if not (p in seen or seen.add(p))]


# table suffix -> (format, gzip-compressed); the longest matching suffix wins
TABLE_FORMATS = {".csv": ("csv", False), ".txt": ("csv", False), ".tsv": ("tsv", False), ".parquet": ("parquet", False),
                 ".fits": ("fits", False), ".fit": ("fits", False), ".csv.gz": ("csv", True),
                 ".tsv.gz": ("tsv", True), ".fits.gz": ("fits", True), ".ecsv": ("ecsv", False)}


PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".tif", ".tiff", ".webp")


class UsageError(ValueError):
    """A bad argument, output or --resume table: reported in one line, exit code 2."""


def table_format(path) -> tuple[str, bool]:
    """(format, gzip) of a table file from its name; a ValueError listing the supported suffixes otherwise."""
    name = Path(path).name.lower()
    for suffix in sorted(TABLE_FORMATS, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return TABLE_FORMATS[suffix]
    raise UsageError(f"{path}: unknown table format (from the file name); use one of {', '.join(TABLE_FORMATS)}")


def _plain_value(v):
    """numpy scalars / 0-d arrays / bytes -> plain Python values, so every writer takes them."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return v


def _text_columns(table) -> list:
    """Columns of Python objects or strings (pandas >= 3 gives strings their own dtype)."""
    import pandas as pd

    return [c for c in table.columns if table[c].dtype == object or isinstance(table[c].dtype, pd.StringDtype)]


def _plain_columns(table):
    table = table.copy()
    for col in _text_columns(table):
        values = table[col].map(_plain_value)
        kinds = {type(v) for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))}
        if len(kinds) > 1 or (kinds and not kinds <= {str, int, float, bool}):  # mixed types: all as text
            values = values.map(lambda v: None if v is None else str(v))
        table[col] = values
    return table


def _is_read_only(path) -> bool:
    mode = os.stat(path).st_mode
    return not (stat.S_IMODE(mode) & 0o222) or not os.access(path, os.W_OK)


def write_table(table, path):
    """Write a pandas table as CSV/TSV, FITS or ECSV (units in the header) or Parquet (optionally .gz), atomically: a
    temporary file renamed over the target, removed when anything fails. A read-only target is refused."""
    path = Path(path)
    fmt, gz = table_format(path)
    if path.exists() and _is_read_only(path):
        raise PermissionError(errno.EACCES, "the file is read-only; not replacing it", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    table = _plain_columns(table)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # never a user's file
    os.close(fd)
    tmp = Path(tmp)
    try:
        if fmt in ("csv", "tsv"):
            table.to_csv(tmp, index=False, sep="," if fmt == "csv" else "\t", compression="gzip" if gz else None)
        elif fmt == "parquet":
            table.to_parquet(tmp, index=False)
        elif fmt == "ecsv":  # astropy's text table: the units (K, dex...) travel in its header
            _astropy_table(table).write(tmp, format="ascii.ecsv", overwrite=True)
        else:
            data = _fits_bytes(table)
            with (gzip.open(tmp, "wb") if gz else open(tmp, "wb")) as f:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def _astropy_table(table, fits=False):
    """An astropy Table of a prediction table, its label columns with their units (astropy's names: K, dex...).
    ``fits``: non-ASCII text as UTF-8 bytes (FITS strings are ASCII) and no units (`_fits_bytes` writes them: astropy
    would drop "dex")."""
    import pandas as pd
    from astropy.table import Table

    from .pipeline import label_unit

    table = table.copy()
    utf8 = {}
    for col in _text_columns(table):  # no "object" columns: numbers or strings
        try:
            table[col] = pd.to_numeric(table[col])
        except (ValueError, TypeError):
            table[col] = table[col].map(lambda v: "" if v is None else str(v))
            if fits and not table[col].map(str.isascii).all():
                utf8[col] = np.array([v.encode("utf-8") for v in table[col]])
    astropy_table = Table.from_pandas(table)
    for col, values in utf8.items():
        astropy_table.replace_column(col, values)
    for col in table.columns if not fits else []:
        astropy_table[col].unit = label_unit(col)
    return astropy_table


def _fits_bytes(table) -> bytes:
    from astropy.io import fits

    from .pipeline import label_unit

    hdu = fits.table_to_hdu(_astropy_table(table, fits=True))
    for i, col in enumerate(table.columns, start=1):  # units in the header; "dex" is written as text
        unit = label_unit(col)
        if unit:
            hdu.header[f"TUNIT{i}"] = unit
    hdu.header["ORIGIN"] = "spectrafm_hf"
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    return buffer.getvalue()


def read_table(path):
    import pandas as pd

    fmt, _ = table_format(path)
    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt in ("fits", "ecsv"):
        from astropy.table import Table

        table = Table.read(path, format="ascii.ecsv" if fmt == "ecsv" else None).to_pandas()
        for col in _text_columns(table):  # FITS strings come back as (UTF-8) bytes
            table[col] = table[col].map(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
        return table
    return pd.read_csv(path, sep="," if fmt == "csv" else "\t")


def _load_pipeline(name, device=None, batch_size=None, bf16=False, compile=False, revision=None):
    """The pipeline of ``--model`` (a folder, embedded name or Hub id) at ``--revision`` (a Hub branch, tag or
    commit; None: main)."""
    from .hub import resolve_model
    from .pipeline import SpectraFMPipeline

    kwargs = {} if revision is None else {"revision": revision}
    where = resolve_model(name, **kwargs)
    if revision is not None and Path(where).is_dir():
        raise ValueError(f"--revision {revision}: {name} is a local folder or an embedded model, which have no "
                         "revisions; --revision is for Hub ids")
    return SpectraFMPipeline.from_pretrained(where, device=device, batch_size=batch_size,
                                             bf16=bf16, compile=compile, **kwargs)


def _prepare(spectrum, pipe):
    """Continuum-normalise spectra that need it: the processor decides (metadata first) and uses the training data's
    continuum method (`SpectraFMProcessor.prepare`)."""
    return pipe.processor.prepare(spectrum)


def _flags(row, pipe) -> str:
    """The row's flags: one source of truth, `spectrafm_hf.pipeline.row_flags` (documented in its FLAGS)."""
    from .pipeline import row_flags

    return row_flags(row, pipe.processor)


def _predict_files(pipe, files, args):
    """One prediction for the spectra of several files; a table per file, in order, each row tagged with its source."""
    spectra = [s for _, file_spectra in files for s in file_spectra]
    if not spectra:
        return []
    table = pipe.predict(spectra, labels=args.labels, seed=args.seed, n_repeats=args.n_repeats)
    # absolute: --resume from another working directory still knows the file
    table["source"] = [os.path.abspath(path) for path, file_spectra in files for _ in file_spectra]
    table["hdu"] = [s.meta.get("hdu") for s in spectra]
    table["row"] = [s.meta.get("row") for s in spectra]
    if "object_id" not in table:
        table["object_id"] = [s.meta.get("object_id") for s in spectra]
    table["flag"] = [_flags(r, pipe) for r in table.to_dict("records")]
    bounds = np.cumsum([0] + [len(file_spectra) for _, file_spectra in files])
    return [table.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:])]


def _where(spectrum) -> str:
    """' (hdu 1, row 2)' for a spectrum of a multi-spectrum file, '' otherwise."""
    parts = [f"{k} {spectrum.meta[k]}" for k in ("hdu", "row") if spectrum.meta.get(k) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def model_identity(name, revision=None) -> tuple[str, str]:
    """(model, revision) written on every predicted row: the embedded name or Hub id (a local folder: its absolute
    path), and the Hub commit, or for a folder the first 12 hex digits of the SHA-256 of its config and weights."""
    from .hub import embedded_checkpoints, resolve_model

    where = Path(resolve_model(name))
    if where.is_dir():
        model = str(name) if str(name) in embedded_checkpoints() and not Path(name).is_dir() else str(where.resolve())
        digest = hashlib.sha256()
        for f in sorted(where.iterdir()):
            if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name.endswith("config.json")):
                digest.update(f.name.encode())
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
        return model, digest.hexdigest()[:12]
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(str(name), "config.json", revision=revision)
    return str(name), Path(config).parent.name if isinstance(config, str) else "unknown"


class OutputLock:
    """``.<name>.lock`` beside an output table, held while a run writes it: a second run on the same output stops
    at once instead of one run's rows silently replacing the other's. An flock (released by the OS when the process
    dies, so a killed run leaves no stale lock); without fcntl, an O_EXCL file holding the pid."""

    def __init__(self, output):
        output = Path(output)
        self.path = output.with_name(f".{output.name}.lock")
        self.fd = None

    def _busy(self, fd=None):
        with contextlib.suppress(OSError, ValueError):
            pid = (os.pread(fd, 32, 0) if fd is not None else self.path.read_bytes()).decode().strip()
            if pid:
                return UsageError(f"another spectrafm run (pid {pid}) is writing {self.path.name[1:-5]} "
                                  f"(lock {self.path}); wait for it to finish or write to another --output")
        return UsageError(f"another spectrafm run is writing {self.path.name[1:-5]} (lock {self.path}); wait for it "
                          f"to finish or write to another --output")

    def acquire(self):
        try:
            import fcntl
        except ImportError:  # no flock: an exclusive create
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise self._busy() from None
        else:
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    error = self._busy(fd)
                    os.close(fd)
                    raise error from None
                try:  # the holder may have removed the file between our open and flock: lock the one there now
                    if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
            self.fd = fd
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def release(self):
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = None


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)  # resolved paths, symlinks and hard links alike
    except OSError:
        return False


def _check_write_target(path, inputs, what):
    """Refuse an output that is an input (any spelling, symlink or hard link), a folder or read-only; check that
    its folder can be written to (the nearest existing parent is a writable folder)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file name")
    if p.exists():
        clash = next((i for i in inputs if _same_file(i, p)), None)
        if clash is not None:
            raise UsageError(f"{what} {path} is the input file {clash}; refusing to overwrite an input")
        if _is_read_only(p):
            raise UsageError(f"{what} {path} is read-only; refusing to replace it")
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: the folder {parent} is not writable")


def _read_previous(path, model, revision):
    """The --resume table, checked: readable, not empty, complete rows, made by this model."""
    try:
        previous = read_table(path)
    except Exception as e:  # noqa: BLE001 - any reader error: one line, exit 2
        raise UsageError(f"--resume: cannot read {path} ({type(e).__name__}: {e}); it is damaged or not a table of "
                         f"spectrafm predict: move it away or write to another --output") from None
    if previous.empty:
        raise UsageError(f"--resume: {path} is empty; delete it or write to another --output")
    missing = [c for c in ("source", "model", "model_revision") if c not in previous.columns]
    if missing:
        raise UsageError(f"--resume: {path} has no {missing} column(s): not written by this spectrafm predict, so "
                         f"which model made its rows is unknown; write to another --output")
    incomplete = previous.index[previous[["source", "model", "model_revision"]].isna().any(axis=1)]
    if len(incomplete):
        raise UsageError(f"--resume: {path} row {incomplete[0] + 1} is incomplete (truncated or damaged table); "
                         f"repair it or write to another --output")
    made_by = set(zip(previous["model"].astype(str), previous["model_revision"].astype(str)))
    # the same weights (revision) under another name or folder are the same model; an unknown revision needs the name
    other = [(m, r) for m, r in sorted(made_by) if r != revision or (revision == "unknown" and m != model)]
    if other:
        others = ", ".join(f"{m} (revision {r})" for m, r in other)
        raise UsageError(f"--resume: {path} holds predictions of {others}; this run uses {model} (revision "
                         f"{revision}); resume with that --model or write to another --output")
    return previous


def _write_or_rescue(table, output) -> bool:
    """Write the table; when that fails, leave the rows in a CSV beside it, in the temp folder or on stdout (named
    on stderr). True when the output itself was written."""
    try:
        write_table(table, output)
        return True
    except Exception as e:  # noqa: BLE001 - whatever failed, the rows must survive
        _err(f"cannot write {output}: {type(e).__name__}: {e}")
    rescue = f"{Path(output).name}.rescued-{os.getpid()}.csv"
    for candidate in (Path(output).with_name(rescue), Path(tempfile.gettempdir()) / f"spectrafm-{rescue}"):
        try:
            write_table(table, candidate)
        except Exception as e:  # noqa: BLE001
            _err(f"cannot write {candidate} either: {type(e).__name__}: {e}")
            continue
        _err(f"the {len(table)} rows are in {candidate}")
        return False
    _err(f"the {len(table)} rows follow on stdout")
    print(table.to_csv(index=False), end="")
    return False


# ---------------------------------------------------------------------------------------------------- commands
def cmd_predict(args) -> int:
    from .survey import cmd_predict_survey, launched_world_size

    try:
        if getattr(args, "dataset", False) or launched_world_size() > 1:  # several processes or --dataset: survey.py
            return cmd_predict_survey(args)
        return _predict(args)
    except UsageError as e:
        _err(str(e))
        return FAILED


def _read_spectra(path, pipe, args, failures):
    """The usable spectra of one file; a spectrum that cannot be used is reported alone (with its row)."""
    from .instruments import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spectra = read(path)
    if not spectra:
        raise ValueError("no spectrum in this file")
    if args.rows == "first":
        spectra = spectra[:1]
    good, errors = [], []
    for s in spectra:
        try:
            if s.n_good == 0:
                raise ValueError("no usable pixel (all flux NaN/masked or ivar 0)")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                good.append(_prepare(s, pipe))
        except Exception as e:  # noqa: BLE001 - one bad spectrum must not take its file's others down
            errors.append((_where(s), f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)))
    if not good:  # nothing usable: the file failed (one message)
        raise ValueError("; ".join(f"{w.strip(' ()')}: {m}" if w else m for w, m in errors))
    for where, msg in errors:
        failures.append((path, where, msg))
        _err(f"FAILED {path}{where}: {msg}")
    return good


def _predict(args) -> int:
    import pandas as pd

    if args.resume and not args.output:
        raise UsageError("--resume needs --output (the table to resume)")
    if args.labels is not None and len(set(args.labels)) != len(args.labels):
        raise UsageError(f"--labels names a label twice: {args.labels}")
    paths = expand_paths(args.paths)
    if not paths:
        _err("no input files found")
        return FAILED
    output = Path(args.output) if args.output else None
    if output is not None:
        table_format(output)
        if args.resume and output.exists():  # the table being resumed is not an input, even inside an input folder
            paths = [p for p in paths if not _same_file(p, output)]
        _check_write_target(output, paths, "--output")
    if args.plot:
        if Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
            raise UsageError(f"--plot {args.plot}: use a file name ending in one of {', '.join(PLOT_SUFFIXES)}")
        _check_write_target(args.plot, paths, "--plot")
    lock, created, wrote = None, [], False
    try:
        if output is not None:  # the folder and the lock now, so an unwritable folder or a busy output stop us here
            created = [d for d in [output.absolute().parent, *output.absolute().parent.parents] if not d.exists()]
            try:
                output.parent.mkdir(parents=True, exist_ok=True)
                lock = OutputLock(output).acquire()
            except OSError as e:
                raise UsageError(f"--output {output}: cannot write in its folder ({type(e).__name__}: {e})") from None
        code, wrote = _run_predict(args, paths, output, pd)
        return code
    finally:
        if lock is not None:
            lock.release()
        if not wrote:  # nothing written: leave no folders of ours behind
            for d in created:
                with contextlib.suppress(OSError):
                    d.rmdir()


def _run_predict(args, paths, output, pd):
    """The predictions of cmd_predict once its arguments are checked; returns (exit code, output written)."""
    try:
        pipe = _load_pipeline(args.model, args.device, args.batch_size, args.bf16, args.compile, args.revision)
        model, revision = model_identity(args.model, args.revision)
    except Exception as e:  # noqa: BLE001 - report any loading problem in one line
        _err(f"cannot load model {args.model!r}: {e}")
        return FAILED, False
    unknown = [n for n in args.labels or [] if n not in pipe.label_names]
    if unknown:
        raise UsageError(f"--labels: {args.model} does not predict {unknown}; it predicts {pipe.label_names}")
    done_sources = set()
    previous = None
    if args.resume and output.exists():
        previous = _read_previous(output, model, revision)
        # the same file however it is spelled (relative, absolute, through a link)
        done_sources = {os.path.realpath(p) for p in previous["source"].astype(str)}
    todo = [p for p in paths if os.path.realpath(p) not in done_sources]
    frames, failures, n_spectra, t0 = [], [], 0, time.time()
    n_done, interrupted, last_flush, failed_files = 0, False, time.time(), set()

    def result_table():
        return pd.concat(([previous] if previous is not None else []) + frames, ignore_index=True)

    show_progress = len(todo) > 5 and sys.stderr.isatty() and not args.quiet
    iterator = todo
    if show_progress:
        from tqdm.auto import tqdm

        iterator = tqdm(todo, unit="file", desc="predict")
    pending = []  # files read, not yet predicted: (path, spectra)

    def fail_file(path, msg):
        nonlocal n_done
        failures.append((path, "", msg))
        failed_files.add(path)
        _err(f"FAILED {path}: {msg}")
        n_done += 1

    def predict_alone(path, spectra):
        """A file whose prediction failed: each spectrum alone, so one the model refuses fails by itself."""
        try:
            return _predict_files(pipe, [(path, spectra)], args)
        except Exception:  # noqa: BLE001
            pass
        tables, errors = [], []
        for s in spectra:
            try:
                tables += _predict_files(pipe, [(path, [s])], args)
            except Exception as e:  # noqa: BLE001
                errors.append((_where(s), f"{type(e).__name__}: {e}"))
        if not tables:
            raise ValueError("; ".join(f"{w.strip(' ()')}: {m}" if w else m for w, m in errors))
        for where, msg in errors:
            failures.append((path, where, msg))
            _err(f"FAILED {path}{where}: {msg}")
        return [pd.concat(tables, ignore_index=True)]

    flush_failed = False

    def predict_pending():
        nonlocal n_spectra, n_done, last_flush, flush_failed
        try:
            results = _predict_files(pipe, pending, args)
        except Exception:  # noqa: BLE001 - a spectrum the model refuses: find it, keep the others
            results = []
            for path, spectra in pending:
                try:
                    results += predict_alone(path, spectra)
                except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                    fail_file(path, str(e))
        for table in results:
            table["model"], table["model_revision"] = model, revision
            frames.append(table)
            n_spectra += len(table)
            n_done += 1
        pending.clear()
        if output is not None and time.time() - last_flush > FLUSH_SECONDS:
            # a hard kill (OOM, SIGKILL, a lost node) keeps everything up to here: rerun with --resume
            try:
                write_table(result_table(), output)
            except Exception as e:  # noqa: BLE001 - the run goes on; the final write says where the rows went
                if not flush_failed:
                    _err(f"warning: cannot update {output} while running ({type(e).__name__}: {e})")
                flush_failed = True
            last_flush = time.time()

    try:
        for path in iterator:
            try:
                spectra = _read_spectra(path, pipe, args, failures)
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                fail_file(path, str(e) if str(path) in str(e) else f"{type(e).__name__}: {e}")
                continue
            pending.append((path, spectra))
            if sum(len(file_spectra) for _, file_spectra in pending) >= SPECTRA_PER_PREDICTION:
                predict_pending()
        predict_pending()
    except KeyboardInterrupt:  # Ctrl-C / SIGINT: keep what is done, say how to continue
        interrupted = True
    written = write_failed = False
    if frames or previous is not None:
        result = result_table()
        if output is not None:
            written = _write_or_rescue(result, output)
            write_failed = not written
        else:
            print(result.to_csv(index=False), end="")
        if args.plot and len(result) and {"TEFF", "LOGG"} <= set(result.columns) and not interrupted:
            from .plots import plot_kiel

            plot_kiel(result["TEFF"], result["LOGG"], result.get("FE_H"), path=args.plot)
    elapsed = time.time() - t0
    n_bad_spectra = len(failures) - len(failed_files)
    summary = (f"{n_spectra} spectra from {n_done - len(failed_files)} files in {elapsed:.1f} s"
               + (f"; {len(failed_files)} files failed" if failed_files else "")
               + (f"; {n_bad_spectra} spectra failed in files whose other spectra were kept" if n_bad_spectra else "")
               + (f"; {len(paths) - len(todo)} already done" if len(paths) != len(todo) else "")
               + (f"; wrote {output}" if written else ""))
    print(summary, file=sys.stderr)
    if write_failed:
        return WRITE_FAILED, False
    if interrupted:
        _err(f"interrupted after {n_done} of {len(todo)} files"
             + (f"; rerun with --resume -o {output} to do the other {len(todo) - n_done}" if output else ""))
        return INTERRUPTED, written
    if not frames and previous is None and failures:
        return FAILED, written
    return (PARTIAL if failures else OK), written


def cmd_attention(args) -> int:
    from .instruments import read
    from .lines import top_attended_lines
    from .plots import plot_attention

    try:
        for option, target in (("--output", args.output), ("--plot", args.plot)):
            if target:
                if option == "--output":
                    table_format(target)
                _check_write_target(target, [args.file], option)
    except UsageError as e:
        _err(str(e))
        return FAILED
    try:
        pipe = _load_pipeline(args.model, args.device, revision=args.revision)
        spectrum = _prepare(read(args.file, strict=True)[args.index], pipe)
        table = pipe.attention(spectrum, args.label, seed=args.seed)
    except Exception as e:  # noqa: BLE001
        _err(f"{args.file}: {e}")
        return FAILED
    top = top_attended_lines(table, n=5)
    if top:
        print("most attended lines: " + ", ".join(f"{name} ({frac:.1%})" for _, name, frac in top), file=sys.stderr)
    if args.output:
        write_table(table, args.output)
    if args.plot:
        plot_attention(table, args.plot, label=args.label, title=f"{Path(args.file).name}: {args.label} attention")
        print(f"wrote {args.plot}", file=sys.stderr)
    if not args.output and not args.plot:
        print(table.to_csv(index=False), end="")
    return OK


def cmd_synth(args) -> int:
    import pyarrow.parquet as pq

    from . import synth
    from .data import arrays_to_table

    s = synth.generate(args.n, instrument=args.instrument, seed=args.seed, snr=args.snr, observed=args.observed)
    table = arrays_to_table([f"{args.instrument}-{args.seed}-{i}" for i in range(args.n)], args.instrument,
                            s.wavelength, s.flux, labels=s.labels, label_err=getattr(s, "label_err", None),
                            ivar=getattr(s, "ivar", None), mask=getattr(s, "mask", None))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    print(f"wrote {args.n} {'observed-domain' if args.observed else 'synthetic'} {args.instrument} spectra to {out}",
          file=sys.stderr)
    return OK


def cmd_finetune(args) -> int:
    from .training.run import parse_args, run_training

    model_args, data_args, training_args = parse_args(args.rest)
    if not model_args.model_name_or_path:
        model_args.model_name_or_path = DEFAULT_MODEL
    try:
        _, metrics = run_training(model_args, data_args, training_args)
    except (ValueError, KeyError, FileNotFoundError) as e:  # bad data or arguments: one clear line, exit 2
        _err(f"finetune: {e}")
        return FAILED
    print(json.dumps({k: v for k, v in metrics.items() if k.endswith(("rmse", "coverage68"))}, indent=1))
    print(f"wrote {Path(training_args.output_dir) / 'final'}", file=sys.stderr)
    return OK


def cmd_evaluate(args) -> int:
    import datasets

    from .data import column_values
    from .training.metrics import label_metrics

    try:
        if args.output:
            table_format(args.output)
            _check_write_target(args.output, [args.data], "--output")
        pipe = _load_pipeline(args.model, args.device, revision=args.revision)
        ds = datasets.Dataset.from_parquet(args.data) if args.data.endswith(".parquet") else \
            datasets.load_from_disk(args.data)
    except Exception as e:  # noqa: BLE001
        _err(str(e))
        return FAILED
    names = args.labels or pipe.label_names
    missing = [n for n in names if n not in ds.column_names]
    if args.labels and missing:  # asked for by name: the data must have them
        _err(f"{args.data}: no column for the labels {missing}; the columns found are {ds.column_names}")
        return FAILED
    if len(missing) == len(names):
        _err(f"{args.data}: none of the model's labels {names} is a column; the columns found are {ds.column_names}")
        return FAILED
    if missing:
        _err(f"note: {args.data} has no column for {missing}; metrics for the others")
    table = pipe.predict(ds, labels=names, seed=args.seed)
    metrics = {}
    for name in names:
        if name in ds.column_names:
            true = column_values(ds, name)
            table[f"{name}_true"] = true
            metrics[name] = label_metrics(table[name], true, table[f"{name}_err"])
    if args.output:
        write_table(table, args.output)
    print(json.dumps(metrics, indent=1))
    return OK


def cmd_info(args) -> int:
    from .hub import resolve_model

    try:
        pipe = _load_pipeline(args.model, "cpu", revision=args.revision)
    except Exception as e:  # noqa: BLE001
        _err(f"cannot load {args.model!r}: {e}")
        return FAILED
    cfg, proc = pipe.model.config, pipe.processor
    path = Path(resolve_model(args.model))
    print(f"model:       {args.model} ({path})")
    print(f"parameters:  {pipe.model.num_parameters():,}  (hidden {cfg.hidden_size}, context {cfg.context_length})")
    print(f"labels:      {', '.join(cfg.label_names)}")
    for n, c, s in zip(proc.label_names, proc.label_centers, proc.label_scales):
        print(f"  {n:8s} centre {c:10.4g}  scale {s:8.4g}")
    for n, probe in proc.linear_probes.items():  # pipe.fit_linear_probe
        states = " + query states" if probe.get("features") == "embedding+queries" else ""
        print(f"  {n:8s} {probe.get('method', 'ridge')} linear probe on the embedding{states} + "
              f"{', '.join(probe['inputs']) or 'nothing else'}: fitted on "
              f"{probe['n_fit']} spectra, sigma {probe['sigma']:.4g}")
    cov = proc.wavelength_coverage or "not recorded"
    print(f"wavelength:  {cov} A (vacuum)")
    print(f"flux:        {proc.flux_normalization} normalisation"
          + (", divided by the median first" if proc.divide_by_median else ""))
    info_path = path / "training_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        print(f"trained:     {info.get('created')}; data {info.get('data')}")
    card = path / "README.md"
    if card.is_file():
        print("card:        " + card.read_text().split("\n---\n", 1)[-1].strip().splitlines()[0][:100])
    return OK


def cmd_push(args) -> int:
    from . import hub

    if not hasattr(hub, "push_pipeline"):
        _err("this version cannot push")
        return FAILED
    try:
        info = hub.push_pipeline(args.folder, args.repo_id, private=args.private)
    except Exception as e:  # noqa: BLE001
        _err(f"push failed: {e}")
        return FAILED
    print(f"pushed {args.folder} to {args.repo_id}: {getattr(info, 'commit_url', info)}")
    files = getattr(info, "uploaded_files", None) or []
    print(f"uploaded {len(files)} files: {', '.join(files)}")
    return OK


def cmd_push_dataset(args) -> int:
    """Publish spectra (Parquet files/folder, or a dataset builder config) as a Hub dataset with its card."""
    from .data import load_published_dataset, load_spectra_dataset, push_dataset

    source = args.source
    try:
        if os.path.exists(source) or any(c in source for c in "*?["):
            files = source
            if os.path.isdir(source):  # splits from the file names (train-*.parquet, test-*.parquet), else train
                files = {}
                for f in sorted(Path(source).rglob("*.parquet")):
                    split = f.name.split("-")[0].split(".")[0]
                    files.setdefault(split if split in ("train", "validation", "test") else "train", []).append(str(f))
                if not files:
                    _err(f"no .parquet file in {source}")
                    return FAILED
            dsd = load_published_dataset(data_files=files)
        else:
            dsd = load_spectra_dataset(source, **json.loads(args.builder_kwargs or "{}"))
    except Exception as e:  # noqa: BLE001 - one line, no traceback
        _err(f"cannot read {source!r}: {e}")
        return FAILED
    try:
        files = push_dataset(dsd, args.repo_id, subset=args.subset, private=args.private, revision=args.revision)
    except Exception as e:  # noqa: BLE001
        _err(f"push failed: {e}")
        return FAILED
    rows = ", ".join(f"{k} {len(v)}" for k, v in dsd.items())
    print(f"pushed {rows} spectra to dataset {args.repo_id} ({args.subset}); the repo holds {len(files)} files")
    return OK


def cmd_install(args) -> int:
    from . import hub

    src = hub.resolve_model(args.model)
    if not Path(src).is_dir():
        _err(f"{args.model!r} is neither a folder nor a checkpoint embedded in the package")
        return FAILED
    dest = hub.install_to_cache(src, repo_id=args.repo_id or Path(args.model).name)
    print(f"installed {src} as {args.repo_id or Path(args.model).name} in {dest}")
    return OK


# ---------------------------------------------------------------------------------------------------- parser
def positive_int(text):
    """argparse type: an integer >= 1 (argparse names the argument in its error and exits with 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def package_version() -> str:
    """``spectrafm_hf.__version__``, read from the package's ``__init__.py``: the parser must not import the package
    (torch, transformers)."""
    text = Path(__file__).with_name("__init__.py").read_text(encoding="utf-8")
    found = re.search(r"^__version__ = [\"']([^\"']+)[\"']", text, flags=re.MULTILINE)
    return found.group(1) if found else "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spectrafm",
        description="Stellar labels (Teff, logg, [Fe/H], [Mg/Fe], [O/Fe]) with uncertainties from spectra of any "
                    "instrument, with SpectraFM (Koblischke & Bovy 2024).",
        epilog="Exit codes: 0 ok, 1 some inputs failed (the rest were written), 2 nothing could be done (bad "
               "arguments or output, unreadable --resume table, output in use by another run), 3 predictions made "
               "but --output not writable (the rows are in the fallback file named on stderr), 130 interrupted "
               "(Ctrl-C; predict first writes what is done).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_opts(q):
        q.add_argument("--model", default=DEFAULT_MODEL, help="folder, embedded name or Hub id (default: %(default)s)")
        q.add_argument("--revision", default=None, help="Hub branch, tag or commit of --model (default: main)")
        q.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
        q.add_argument("--seed", type=int, default=0, help="seed of the pixel subsets (default: 0)")

    q = sub.add_parser("predict", help="labels for spectrum files (any supported format, auto-detected)",
                       description="Predict labels for files, folders or globs. One row per spectrum: each label, its "
                                   "1-sigma uncertainty and between-subset scatter, pixels used, a flag when the "
                                   "spectrum lies outside the model's training domain, and the source file/HDU/row. "
                                   "Files and single spectra that fail are reported and skipped (a file's other "
                                   "spectra are kept). Every row names the model and its revision.")
    q.add_argument("paths", nargs="+", help="files, folders or globs")
    model_opts(q)
    q.add_argument("--labels", nargs="+", default=None, help="labels to predict (default: all the model's)")
    q.add_argument("--output", "-o", default=None,
                   help="table.csv | .tsv | .fits | .ecsv | .parquet (.csv.gz, .tsv.gz, .fits.gz too; FITS and ECSV "
                        "carry the units; default: stdout). Never "
                        "an input file or a read-only file; one run at a time per output (a lock file beside it)")
    q.add_argument("--resume", action="store_true",
                   help="skip files already in --output and append the rest (the table is rewritten every minute "
                        "while running and on Ctrl-C, so an interrupted run can be resumed); the table must come "
                        "from the same --model (its model and model_revision columns)")
    q.add_argument("--rows", choices=["all", "first"], default="all",
                   help="for multi-spectrum files: every spectrum or only the first (e.g. apStar's combined row)")
    q.add_argument("--n-repeats", type=positive_int, default=1, help="independent pixel permutations per spectrum")
    q.add_argument("--batch-size", type=positive_int, default=None,
                   help="pixel subsets per forward pass (default: sized to the CPU cache; 512 on a GPU)")
    q.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast: for GPUs and CPUs with bf16 units (AVX-512 BF16, AMX); slow on others")
    q.add_argument("--compile", action="store_true",
                   help="torch.compile the network: ~1.1x faster on many spectra, after a first call of tens of s")
    q.add_argument("--plot", default=None, help="also write a Kiel diagram of the predictions (PNG)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    survey = q.add_argument_group("surveys (also used whenever launched with several processes: accelerate launch "
                                  "--multi_gpu --num_processes N -m spectrafm_hf.cli predict ..., or torchrun)")
    survey.add_argument("--dataset", action="store_true",
                        help="PATHS is one `datasets` dataset, read streaming: Parquet file(s)/folder/glob, a builder "
                             "config (synthetic_apogee, ...) or a Hub dataset id")
    survey.add_argument("--split", default="train", help="--dataset split (default: %(default)s)")
    survey.add_argument("--dataset-config", default=None, help="--dataset subset (configuration) on the Hub")
    survey.add_argument("--chunk-size", type=positive_int, default=512,
                        help="files or dataset rows per Parquet part (<output>.parts/); a killed process loses at "
                             "most one part (default: %(default)s)")
    survey.add_argument("--keep-parts", action="store_true",
                        help="keep <output>.parts/ (Parquet parts + manifests) after merging them into --output")
    q.set_defaults(func=cmd_predict)

    q = sub.add_parser("attention", help="where a label query looks, per wavelength (table and/or plot)")
    q.add_argument("file")
    model_opts(q)
    q.add_argument("--label", default="FE_H")
    q.add_argument("--index", type=int, default=0, help="which spectrum of a multi-spectrum file (default 0)")
    q.add_argument("--plot", default=None, help="PNG with the spectrum, the attention and known lines")
    q.add_argument("--output", "-o", default=None, help="attention table (.csv/.fits/.parquet)")
    q.set_defaults(func=cmd_attention)

    q = sub.add_parser("synth", help="make a synthetic (or observed-domain) set of spectra as Parquet")
    q.add_argument("--instrument", default="apogee")
    q.add_argument("--n", type=int, default=1000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--snr", type=float, default=None, help="add noise at this S/N")
    q.add_argument("--observed", action="store_true", help="the observed domain (realism layer, physics gap)")
    q.add_argument("--output", "-o", required=True, help="a .parquet file in the package's dataset schema")
    q.set_defaults(func=cmd_synth)

    q = sub.add_parser("finetune", help="fine-tune a checkpoint (same arguments as scripts/finetune.py)",
                       description="spectrafm finetune CONFIG.yaml [--field value ...]; see scripts/configs/.")
    q.add_argument("rest", nargs=argparse.REMAINDER)
    q.set_defaults(func=cmd_finetune)

    q = sub.add_parser("evaluate", help="metrics of a model on a labelled set (Parquet in the dataset schema)")
    model_opts(q)
    q.add_argument("--data", required=True, help="a .parquet file (e.g. from `spectrafm synth`) or a saved dataset")
    q.add_argument("--labels", nargs="+", default=None)
    q.add_argument("--output", "-o", default=None, help="per-star predictions table")
    q.set_defaults(func=cmd_evaluate)

    q = sub.add_parser("info", help="what a model predicts, from which wavelengths, trained on what")
    q.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    q.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model (default: main)")
    q.set_defaults(func=cmd_info)

    q = sub.add_parser("push", help="publish a model folder (with its card) to the Hugging Face Hub")
    q.add_argument("folder")
    q.add_argument("repo_id")
    vis = q.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=None,
                     help="create the repo private (default: the Hub's default for you or your organisation)")
    vis.add_argument("--public", dest="private", action="store_false", help="create the repo public")
    q.set_defaults(func=cmd_push)

    q = sub.add_parser("push-dataset", help="publish spectra as a Hugging Face Hub dataset (Parquet + card)")
    q.add_argument("source", help="Parquet file, folder or glob in the package's schema, or a dataset config name "
                                  "(e.g. observed_apogee)")
    q.add_argument("repo_id")
    q.add_argument("--subset", default="default", help="the dataset configuration name (e.g. apogee)")
    q.add_argument("--builder-kwargs", default=None, help="JSON arguments of a dataset config, e.g. '{\"n_train\": 5000}'")
    q.add_argument("--revision", default=None)
    vis = q.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=None,
                     help="create the repo private (default: the Hub's default for you or your organisation)")
    vis.add_argument("--public", dest="private", action="store_false", help="create the repo public")
    q.set_defaults(func=cmd_push_dataset)

    q = sub.add_parser("install", help="put a model into the local HF cache so AutoModel.from_pretrained(name) "
                                       "works offline")
    q.add_argument("--model", default=DEFAULT_MODEL)
    q.add_argument("--repo-id", default=None, help="name in the cache (default: the model's name)")
    q.set_defaults(func=cmd_install)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
