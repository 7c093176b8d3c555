"""Download APOGEE DR17 spectra (aspcapStar / apStar) listed in an allStar file, for users with internet.

Standard library only (urllib). Files are cached: a file already in the destination folder is not fetched again
(unless its sha1 is known and differs). Writes are atomic: each download goes to a hidden temporary file in the
target folder and is renamed into place only when complete (and, when a sha1 is known, verified), so an
interrupted run never leaves a half-written spectrum under the final name. A failed file is reported (with its URL
and the reason) and the others go on.

URL layout on the SDSS Science Archive Server (DR17; shared/design/DATA.md 2d)::

    {base}/aspcap/dr17/synspec_rev1/{TELESCOPE}/{FIELD}/aspcapStar-dr17-{APOGEE_ID}.fits
    {base}/redux/dr17/stars/{TELESCOPE}/{FIELD}/apStar-dr17-{APOGEE_ID}.fits   (asStar-... for lco25m)

with ``base = https://data.sdss.org/sas/dr17/apogee/spectro`` (configurable, e.g. a local SAS mirror). Files are
stored as ``{dest}/{TELESCOPE}/{FIELD}/{filename}`` (the same APOGEE_ID can appear in several fields).

Checksums: SAS keeps per-folder ``*.sha1sum`` files (lines ``<sha1>  <filename>``) next to the spectra. Pass
``checksum_url="{folder_url}/<name of that file>"`` (a template with ``{folder_url}``, ``{telescope}``, ``{field}``)
to fetch and use them, or ``sha1={filename: sha1}`` with known values. Other backends (``sdss-access``,
``astroNN.apogee.downloader``) can fetch the same files; this module does not need them.

Example::

    from spectrafm_hf.download import download_dr17
    report = download_dr17("allStar-dr17-synspec_rev1.fits", "spectra/", kind="aspcapStar", max_files=100)
    print(report.summary())
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

__all__ = [
    "DR17_BASE_URL",
    "StarRow",
    "DownloadResult",
    "DownloadReport",
    "DownloadError",
    "read_allstar",
    "dr17_url",
    "download_file",
    "download_dr17",
    "parse_sha1sum",
]

DR17_BASE_URL = "https://data.sdss.org/sas/dr17/apogee/spectro"
ALLSTAR_DR17_URL = f"{DR17_BASE_URL}/aspcap/dr17/synspec_rev1/allStar-dr17-synspec_rev1.fits"
_CHUNK = 1 << 20
_USER_AGENT = "spectrafm_hf-downloader (python urllib)"


class DownloadError(OSError):
    """One file could not be downloaded; the message names the URL and the reason."""


@dataclass(frozen=True)
class StarRow:
    apogee_id: str
    telescope: str
    field: str


@dataclass
class DownloadResult:
    url: str
    path: Path
    status: str  # "downloaded", "cached" or "failed"
    error: str | None = None
    star: StarRow | None = None


@dataclass
class DownloadReport:
    results: list[DownloadResult] = field(default_factory=list)

    def _with(self, status):
        return [r for r in self.results if r.status == status]

    @property
    def downloaded(self) -> list[DownloadResult]:
        return self._with("downloaded")

    @property
    def cached(self) -> list[DownloadResult]:
        return self._with("cached")

    @property
    def failed(self) -> list[DownloadResult]:
        return self._with("failed")

    @property
    def paths(self) -> list[Path]:
        """Local paths of every file now present (downloaded or cached)."""
        return [r.path for r in self.results if r.status != "failed"]

    def summary(self) -> str:
        lines = [f"{len(self.downloaded)} downloaded, {len(self.cached)} cached, {len(self.failed)} failed"]
        lines += [f"  FAILED {r.url}: {r.error}" for r in self.failed]
        return "\n".join(lines)


# ------------------------------------------------------------------ allStar
def _text(v) -> str:
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    return str(v).strip()


def read_allstar(path, ids: Iterable[str] | None = None, rows=None) -> list[StarRow]:
    """``StarRow(APOGEE_ID, TELESCOPE, FIELD)`` for every row of an allStar FITS (HDU1), optionally only the
    ``ids`` given or the row indices/boolean mask ``rows``. Only those three columns are read, so the 4 GB DR17
    allStar is fine (memory-mapped)."""
    from astropy.io import fits

    p = Path(path)
    try:
        with fits.open(p, memmap=True) as hdul:
            if len(hdul) < 2 or not hasattr(hdul[1], "columns"):
                raise ValueError(f"{p}: HDU1 is not a table; not an allStar file")
            names = {c.upper(): c for c in hdul[1].columns.names}
            missing = [c for c in ("APOGEE_ID", "TELESCOPE", "FIELD") if c not in names]
            if missing:
                raise ValueError(f"{p}: allStar table lacks columns {missing} (has {hdul[1].columns.names[:10]}...)")
            data = hdul[1].data
            cols = [data[names[c]] for c in ("APOGEE_ID", "TELESCOPE", "FIELD")]
            if rows is not None:
                cols = [c[rows] for c in cols]
            out = [StarRow(_text(a), _text(t), _text(f)) for a, t, f in zip(*cols)]
    except OSError as exc:
        raise ValueError(f"{p}: cannot read the allStar file: {exc}") from exc
    if ids is not None:
        wanted = {str(i).strip() for i in ids}
        out = [r for r in out if r.apogee_id in wanted]
    return out


def dr17_url(star: StarRow, kind: str = "aspcapStar", base_url: str = DR17_BASE_URL) -> str:
    """The SAS URL of one star's DR17 file; ``kind`` is ``"aspcapStar"`` or ``"apStar"`` (asStar for lco25m)."""
    base = base_url.rstrip("/")
    if not (star.apogee_id and star.telescope and star.field):
        raise ValueError(f"incomplete allStar row {star}: APOGEE_ID, TELESCOPE and FIELD are all needed")
    if kind == "aspcapStar":
        return f"{base}/aspcap/dr17/synspec_rev1/{star.telescope}/{star.field}/aspcapStar-dr17-{star.apogee_id}.fits"
    if kind == "apStar":
        prefix = "asStar" if star.telescope.lower().startswith("lco") else "apStar"
        return f"{base}/redux/dr17/stars/{star.telescope}/{star.field}/{prefix}-dr17-{star.apogee_id}.fits"
    raise ValueError(f"kind must be 'aspcapStar' or 'apStar', got {kind!r}")


# ------------------------------------------------------------------ one file
def sha1_of(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_sha1sum(text: str) -> dict[str, str]:
    """``{filename: sha1}`` from ``sha1sum`` output lines (``<40 hex>  [*]<filename>``)."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 40:
            out[Path(parts[1].lstrip("*").strip()).name] = parts[0].lower()
    return out


def _retryable(exc) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError, OSError, http.client.HTTPException))


def _fetch_to(url: str, tmp_path: Path, timeout: float) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp_path, "wb") as out:
        expected = resp.headers.get("Content-Length")
        n = 0
        for chunk in iter(lambda: resp.read(_CHUNK), b""):
            out.write(chunk)
            n += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if expected is not None and n != int(expected):
        raise DownloadError(f"{url}: connection closed after {n} of {expected} bytes")


def download_file(url: str, path, sha1: str | None = None, overwrite: bool = False, retries: int = 3,
                  backoff: float = 1.0, timeout: float = 60.0, check_fits: bool = True) -> str:
    """Download ``url`` to ``path`` atomically; returns ``"downloaded"`` or ``"cached"``.

    A file already at ``path`` is kept (``"cached"``) unless ``overwrite`` or its sha1 differs from ``sha1``.
    Transient failures (connection errors, HTTP 5xx/408/429, short reads) are retried ``retries`` times with
    exponential ``backoff`` seconds; HTTP 4xx fails at once. With ``check_fits`` the payload must start like a FITS
    file (catches HTML error pages served with status 200). Raises :class:`DownloadError` naming the URL.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        if sha1 is None or sha1_of(path) == sha1.lower():
            return "cached"
    path.parent.mkdir(parents=True, exist_ok=True)
    last = None
    for attempt in range(retries + 1):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
        try:
            _fetch_to(url, tmp, timeout)
            if check_fits:
                with open(tmp, "rb") as fh:
                    head = fh.read(9)
                if head not in (b"SIMPLE  =",) and not head.startswith(b"\x1f\x8b"):
                    raise DownloadError(f"{url}: the server did not send a FITS file (starts with {head!r})")
            if sha1 is not None:
                got = sha1_of(tmp)
                if got != sha1.lower():
                    raise DownloadError(f"{url}: sha1 mismatch (expected {sha1.lower()}, got {got})")
            os.replace(tmp, path)
            return "downloaded"
        except urllib.error.HTTPError as exc:
            last = DownloadError(f"{url}: HTTP {exc.code} {exc.reason}")
            if not _retryable(exc):
                break
        except DownloadError as exc:  # short read, not FITS, sha1 mismatch: a corrupt transfer, try again
            last = exc
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            last = DownloadError(f"{url}: {type(exc).__name__}: {exc}")
            if not _retryable(exc):
                break
        finally:
            if tmp.exists():
                tmp.unlink()
        if attempt < retries and backoff > 0:
            time.sleep(backoff * 2**attempt)
    raise last if last is not None else DownloadError(f"{url}: failed")


# ------------------------------------------------------------------ many files
def _fetch_text(url: str, timeout: float) -> str:
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode("utf-8", "replace")


def download_dr17(
    allstar,
    dest,
    kind: str = "aspcapStar",
    base_url: str = DR17_BASE_URL,
    ids: Iterable[str] | None = None,
    max_files: int | None = None,
    overwrite: bool = False,
    sha1: dict[str, str] | None = None,
    checksum_url: str | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 60.0,
    workers: int = 1,
    progress: Callable[[DownloadResult], None] | None = None,
) -> DownloadReport:
    """Download the DR17 ``kind`` file of every star of ``allstar`` into ``dest`` (see the module docstring).

    Args:
        allstar: path of an allStar FITS, or an iterable of :class:`StarRow`.
        dest: destination folder (files go to ``dest/TELESCOPE/FIELD/``).
        kind: ``"aspcapStar"`` or ``"apStar"``.
        base_url: SAS base (``.../sas/dr17/apogee/spectro``) or a mirror with the same layout.
        ids: only these APOGEE_IDs.
        max_files: stop after this many stars.
        overwrite: fetch again even when cached.
        sha1: known ``{filename: sha1}``.
        checksum_url: template of the per-folder sha1sum URL (``{folder_url}``, ``{telescope}``, ``{field}``);
            fetched once per folder; a folder whose checksum file cannot be fetched is reported as failed.
        retries, backoff, timeout: per file (see :func:`download_file`).
        workers: parallel downloads (threads); 1 = sequential.
        progress: called with each :class:`DownloadResult` as it completes.

    Returns:
        A :class:`DownloadReport`; it never raises for a single failed file.
    """
    stars = list(read_allstar(allstar, ids=ids) if isinstance(allstar, (str, os.PathLike)) else allstar)
    if ids is not None and not isinstance(allstar, (str, os.PathLike)):
        wanted = {str(i).strip() for i in ids}
        stars = [s for s in stars if s.apogee_id in wanted]
    seen, unique = set(), []
    for s in stars:
        key = (s.apogee_id, s.telescope, s.field)
        if key not in seen:
            seen.add(key)
            unique.append(s)
    if max_files is not None:
        unique = unique[:max_files]
    dest = Path(dest)
    known = {k: v.lower() for k, v in (sha1 or {}).items()}
    folder_sums: dict[str, dict[str, str] | Exception] = {}
    sums_lock = threading.Lock()

    def one(star: StarRow) -> DownloadResult:
        try:
            url = dr17_url(star, kind, base_url)
        except ValueError as exc:
            return DownloadResult(url="", path=dest, status="failed", error=str(exc), star=star)
        name = url.rsplit("/", 1)[1]
        target = dest / star.telescope / star.field / name
        expected = known.get(name)
        if checksum_url is not None and expected is None:
            folder = url.rsplit("/", 1)[0]
            with sums_lock:
                if folder not in folder_sums:
                    curl = checksum_url.format(folder_url=folder, telescope=star.telescope, field=star.field)
                    try:
                        folder_sums[folder] = parse_sha1sum(_fetch_text(curl, timeout))
                    except Exception as exc:  # noqa: BLE001
                        folder_sums[folder] = DownloadError(f"{curl}: checksum file unavailable: {exc}")
                sums = folder_sums[folder]
            if isinstance(sums, Exception):
                return DownloadResult(url=url, path=target, status="failed", error=str(sums), star=star)
            expected = sums.get(name)
            if expected is None:
                return DownloadResult(url=url, path=target, status="failed",
                                      error=f"{name} is not listed in the folder's checksum file", star=star)
        try:
            status = download_file(url, target, sha1=expected, overwrite=overwrite, retries=retries,
                                   backoff=backoff, timeout=timeout)
            return DownloadResult(url=url, path=target, status=status, star=star)
        except DownloadError as exc:
            return DownloadResult(url=url, path=target, status="failed", error=str(exc), star=star)

    report = DownloadReport()
    if workers <= 1:
        for s in unique:
            r = one(s)
            report.results.append(r)
            if progress:
                progress(r)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for r in pool.map(one, unique):
                report.results.append(r)
                if progress:
                    progress(r)
    return report
