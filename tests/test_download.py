"""The DR17 downloader against a REAL local HTTP server (stdlib http.server on 127.0.0.1, port 0, in a thread)
that serves the committed fixture files in the SAS folder layout. No test reaches any non-loopback address."""

from __future__ import annotations

import hashlib
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from spectrafm_hf.download import (
    DR17_BASE_URL,
    DownloadError,
    StarRow,
    download_dr17,
    download_file,
    dr17_url,
    parse_sha1sum,
    read_allstar,
)
from spectrafm_hf.instruments import read

FIX = Path(__file__).resolve().parent / "fixtures" / "apogee"
ASPCAP = FIX / "TESTONLY_aspcapStar-format_2M19485057+5005279.fits"
APSTAR = FIX / "apStar-dr17-2M19485057+5005279.fits"
STAR = StarRow("2M19485057+5005279", "apo25m", "K04_083+13")
MISSING = StarRow("2M00000000+0000000", "apo25m", "K04_083+13")
LCO = StarRow("2M19485057+5005279", "lco25m", "SOUTHFIELD")


def sha1(path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


class _Handler(SimpleHTTPRequestHandler):
    """Serves ``server.root``; ``server.fail`` maps a URL path to a list of faults consumed one per request:
    an int HTTP status, ``"short"`` (announce more bytes than sent) or ``"html"`` (an error page with status 200)."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def translate_path(self, path):
        return str(self.server.root / path.split("?", 1)[0].lstrip("/"))

    def do_GET(self):
        with self.server.lock:
            self.server.requests.append(self.path)
            faults = self.server.fail.get(self.path)
            fault = faults.pop(0) if faults else None
        if isinstance(fault, int):
            self.send_error(fault)
            return
        if fault == "html":
            body = b"<html><body>Service temporarily unavailable</body></html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if fault == "short":
            body = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def sas(tmp_path, monkeypatch):
    """A loopback HTTP server holding a miniature SAS: the fixture aspcapStar and apStar of one star."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "www"
    base = root / "sas" / "dr17" / "apogee" / "spectro"
    asp = base / "aspcap" / "dr17" / "synspec_rev1" / STAR.telescope / STAR.field
    aps = base / "redux" / "dr17" / "stars" / STAR.telescope / STAR.field
    lco = base / "redux" / "dr17" / "stars" / LCO.telescope / LCO.field
    for folder in (asp, aps, lco):
        folder.mkdir(parents=True)
    shutil.copy(ASPCAP, asp / f"aspcapStar-dr17-{STAR.apogee_id}.fits")
    shutil.copy(APSTAR, aps / f"apStar-dr17-{STAR.apogee_id}.fits")
    shutil.copy(APSTAR, lco / f"asStar-dr17-{LCO.apogee_id}.fits")
    (asp / "checksums.sha1sum").write_text(f"{sha1(ASPCAP)}  aspcapStar-dr17-{STAR.apogee_id}.fits\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.root, server.fail, server.requests, server.lock = root, {}, [], threading.Lock()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    host, port = server.server_address
    assert host == "127.0.0.1"
    server.base_url = f"http://127.0.0.1:{port}/sas/dr17/apogee/spectro"
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _path_of(server, url):
    return url.split(f":{server.server_address[1]}", 1)[1]


def no_partial_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


# ---------------------------------------------------------------------- URLs and allStar
def test_dr17_urls():
    assert dr17_url(STAR) == (f"{DR17_BASE_URL}/aspcap/dr17/synspec_rev1/apo25m/K04_083+13/"
                              "aspcapStar-dr17-2M19485057+5005279.fits")
    assert dr17_url(STAR, "apStar").endswith("/redux/dr17/stars/apo25m/K04_083+13/apStar-dr17-2M19485057+5005279.fits")
    assert dr17_url(LCO, "apStar").endswith("/stars/lco25m/SOUTHFIELD/asStar-dr17-2M19485057+5005279.fits")
    assert dr17_url(STAR, base_url="http://mirror/x/").startswith("http://mirror/x/aspcap/")
    with pytest.raises(ValueError, match="kind"):
        dr17_url(STAR, "apVisit")
    with pytest.raises(ValueError, match="incomplete"):
        dr17_url(StarRow("2M1", "", "F"))
    assert parse_sha1sum(f"{'a' * 40}  *x.fits\nnot a line\n") == {"x.fits": "a" * 40}


def _write_allstar(path, rows):
    ids, tels, fields = zip(*rows)
    cols = [fits.Column("APOGEE_ID", "30A", array=[i + "  " for i in ids]),
            fits.Column("TELESCOPE", "8A", array=list(tels)), fits.Column("FIELD", "20A", array=list(fields)),
            fits.Column("SNR", "E", array=np.arange(len(rows), dtype=np.float32))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path)
    return path


def test_read_allstar(tmp_path):
    f = _write_allstar(tmp_path / "allStar.fits", [tuple(vars(STAR).values()), tuple(vars(MISSING).values())])
    rows = read_allstar(f)
    assert rows == [STAR, MISSING]  # padding stripped
    assert read_allstar(f, ids=[MISSING.apogee_id]) == [MISSING]
    assert read_allstar(f, rows=np.array([False, True])) == [MISSING]
    bad = tmp_path / "notallstar.fits"
    fits.BinTableHDU.from_columns([fits.Column("X", "E", array=[1.0])]).writeto(bad)
    with pytest.raises(ValueError, match="lacks columns") as e:
        read_allstar(bad)
    assert str(bad) in str(e.value)


# ---------------------------------------------------------------------- downloads
def test_download_from_allstar_caches_and_reports_failures(sas, tmp_path):
    allstar = _write_allstar(tmp_path / "allStar.fits", [tuple(vars(STAR).values()), tuple(vars(MISSING).values()),
                                                          tuple(vars(STAR).values())])  # duplicate row
    dest = tmp_path / "spectra"
    report = download_dr17(allstar, dest, base_url=sas.base_url, backoff=0)
    assert len(report.results) == 2  # the duplicate row is fetched once
    (ok,) = report.downloaded
    (bad,) = report.failed
    assert ok.path == dest / "apo25m" / "K04_083+13" / "aspcapStar-dr17-2M19485057+5005279.fits"
    assert ok.path.read_bytes() == ASPCAP.read_bytes()
    assert "HTTP 404" in bad.error and MISSING.apogee_id in bad.url and MISSING.apogee_id in bad.error
    assert "1 downloaded, 0 cached, 1 failed" in report.summary()
    (s,) = read(ok.path)  # the downloaded file is a readable aspcapStar
    assert s.meta["format"] == "apogee_aspcapstar" and s.meta["object_id"] == STAR.apogee_id
    assert no_partial_files(dest)
    n_requests = len(sas.requests)
    again = download_dr17([STAR], dest, base_url=sas.base_url, backoff=0)
    assert [r.status for r in again.results] == ["cached"] and len(sas.requests) == n_requests  # no new request


def test_download_apstar_and_asstar(sas, tmp_path):
    report = download_dr17([STAR, LCO], tmp_path, kind="apStar", base_url=sas.base_url, backoff=0, workers=2)
    assert sorted(r.path.name for r in report.downloaded) == ["apStar-dr17-2M19485057+5005279.fits",
                                                              "asStar-dr17-2M19485057+5005279.fits"]
    for r in report.downloaded:
        assert r.path.read_bytes() == APSTAR.read_bytes()
        assert read(r.path)[0].meta["format"] == "apogee_apstar"


def test_sha1_checks(sas, tmp_path):
    name = ASPCAP.name.replace("TESTONLY_aspcapStar-format_", "aspcapStar-dr17-")
    # known good sha1
    good = download_dr17([STAR], tmp_path / "a", base_url=sas.base_url, sha1={name: sha1(ASPCAP)}, backoff=0)
    assert good.results[0].status == "downloaded"
    # wrong sha1: the file is refused and nothing is left under the final name
    wrong = download_dr17([STAR], tmp_path / "b", base_url=sas.base_url, sha1={name: "0" * 40}, retries=1, backoff=0)
    (r,) = wrong.failed
    assert "sha1 mismatch" in r.error and r.url in r.error
    assert not r.path.exists() and no_partial_files(tmp_path / "b")
    # per-folder checksum file fetched from the server
    via_file = download_dr17([STAR], tmp_path / "c", base_url=sas.base_url,
                             checksum_url="{folder_url}/checksums.sha1sum", backoff=0)
    assert via_file.results[0].status == "downloaded"
    missing_sums = download_dr17([STAR], tmp_path / "d", base_url=sas.base_url,
                                 checksum_url="{folder_url}/nope.sha1sum", backoff=0, retries=0)
    assert "checksum file unavailable" in missing_sums.failed[0].error
    # a corrupt cached copy is replaced when its sha1 is known
    target = good.results[0].path
    target.write_bytes(b"SIMPLE  = corrupted")
    fixed = download_dr17([STAR], tmp_path / "a", base_url=sas.base_url, sha1={name: sha1(ASPCAP)}, backoff=0)
    assert fixed.results[0].status == "downloaded" and target.read_bytes() == ASPCAP.read_bytes()


def test_retries_on_server_errors(sas, tmp_path):
    url = dr17_url(STAR, base_url=sas.base_url)
    path = _path_of(sas, url)
    sas.fail[path] = [500, 503]
    assert download_file(url, tmp_path / "x.fits", retries=3, backoff=0) == "downloaded"
    assert sas.requests.count(path) == 3
    sas.fail[path] = [500, 500, 500]
    with pytest.raises(DownloadError, match="HTTP 500") as e:
        download_file(url, tmp_path / "y.fits", retries=1, backoff=0)
    assert url in str(e.value) and not (tmp_path / "y.fits").exists()
    sas.fail[path] = [404]
    before = sas.requests.count(path)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(url, tmp_path / "z.fits", retries=5, backoff=0)
    assert sas.requests.count(path) == before + 1  # a 404 is not retried


def test_short_transfers_and_error_pages_are_never_kept(sas, tmp_path):
    url = dr17_url(STAR, base_url=sas.base_url)
    path = _path_of(sas, url)
    sas.fail[path] = ["short", "short"]
    with pytest.raises(DownloadError, match="closed after|IncompleteRead"):
        download_file(url, tmp_path / "short.fits", retries=1, backoff=0)
    assert not (tmp_path / "short.fits").exists() and no_partial_files(tmp_path)
    sas.fail[path] = ["short"]  # one bad transfer, then a good one
    assert download_file(url, tmp_path / "ok.fits", retries=2, backoff=0) == "downloaded"
    assert (tmp_path / "ok.fits").read_bytes() == ASPCAP.read_bytes()
    sas.fail[path] = ["html"]
    with pytest.raises(DownloadError, match="did not send a FITS"):
        download_file(url, tmp_path / "html.fits", retries=0, backoff=0)
    # an existing good file survives a failed forced re-download (atomic replace)
    sas.fail[path] = [500]
    with pytest.raises(DownloadError):
        download_file(url, tmp_path / "ok.fits", overwrite=True, retries=0, backoff=0)
    assert (tmp_path / "ok.fits").read_bytes() == ASPCAP.read_bytes()
