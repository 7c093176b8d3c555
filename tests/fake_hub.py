"""An in-process fake of the Hugging Face Hub HTTP API, for offline push/pull tests over real HTTP.

It speaks enough of the protocol for the real ``huggingface_hub`` / ``transformers`` / ``datasets`` clients:

* ``POST /api/repos/create``, ``POST /api/validate-yaml``, ``GET /api/whoami-v2``;
* ``GET|HEAD /api/{models,datasets,spaces}/<org>/<name>[/revision/<rev>]`` (repo info with ``sha`` and siblings),
  ``.../tree/<rev>[/<path>]`` (``?recursive=``), ``POST .../paths-info/<rev>``, ``GET .../refs``,
  ``POST .../branch/<name>``;
* ``POST .../preupload/<rev>`` (decides "regular" vs "lfs" per file), ``POST .../commit/<rev>`` (NDJSON:
  header, file, lfsFile, deletedFile, deletedFolder);
* git-LFS: ``POST /[datasets/]<org>/<name>.git/info/lfs/objects/batch`` answered with basic-transfer upload
  actions that point at ``PUT /_lfs/<sha256>``;
* downloads: ``GET|HEAD /[datasets/]<org>/<name>/resolve/<rev>/<path>`` (with ``Range`` support).

Every commit is kept (a commit id is a sha1 of its tree and parent), so files can be fetched by branch name or by
commit id. File contents are stored once, by sha256, under ``root``. Xet is not emulated: clients must run with
``HF_HUB_DISABLE_XET=1`` (or ``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``) so that LFS-mode files go
through the plain LFS API. Server-side failures answer 4xx, never 5xx, so the client does not back off and retry.

    with FakeHub(tmp_path / "hub") as hub:
        ...  # point clients at hub.endpoint; inspect hub.files("org/x"), hub.read("org/x", "config.json")
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["FakeHub", "HubError"]

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"


class HubError(Exception):
    """An HTTP error answer: status, message and the ``X-Error-Code`` the client maps to an exception."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.extra = status, message, code, commit, extra


@dataclass(frozen=True)
class Entry:
    """One file of a commit's tree."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str  # git blob id of the content (regular) or of the LFS pointer (lfs)


@dataclass
class Commit:
    oid: str
    parent: str | None
    tree: dict[str, Entry]
    title: str
    date: str


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class _Request:
    def __init__(self, handler: BaseHTTPRequestHandler, method: str):
        self.handler, self.method = handler, method
        url = urlsplit(handler.path)
        # split before unquoting: revisions such as "refs%2Fconvert%2Fparquet" are one segment
        self.segments = [unquote(s) for s in url.path.split("/")[1:]]
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.headers = handler.headers
        self.body = self._read_body()

    def _read_body(self) -> bytes:
        rfile = self.handler.rfile
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(rfile.read(size))
                rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return rfile.read(n) if n else b""

    def json(self):
        return json.loads(self.body or b"{}")


class FakeHub:
    """A Hub-protocol server on ``host:port`` (port 0: a free one) storing everything under ``root``.

    Args:
        root: folder for the content-addressed file store.
        lfs: declare files with `LFS_SUFFIXES` (or larger than `LFS_THRESHOLD`) as "lfs" in /preupload, so
            their bytes go through the LFS batch API and a PUT (needed by ``DatasetDict.push_to_hub``, which
            deletes its temporary shards between pre-upload and commit). ``lfs=False`` makes every file
            "regular" (sent inline in the commit).
    """

    LFS_SUFFIXES = (".safetensors", ".parquet", ".arrow", ".bin", ".pt", ".pth", ".h5", ".npy", ".npz", ".fits")
    LFS_THRESHOLD = 10 * 1024 * 1024

    def __init__(self, root, host: str = "127.0.0.1", port: int = 0, lfs: bool = True):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fake Hub only listens on the loopback interface")
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.lfs = lfs
        # visibility of a repo created without "private"/"visibility" (an organisation that defaults to private)
        self.default_private = False
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        # (method, path, Authorization header or None) of every request: which token each call sent
        self.authorizations: list[tuple[str, str, str | None]] = []
        self.errors: list[str] = []  # tracebacks of requests the server failed on (a bug here, or in a client)
        self._lock = threading.RLock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_HEAD(self):
                hub._handle(self, "HEAD")

            def do_POST(self):
                hub._handle(self, "POST")

            def do_PUT(self):
                hub._handle(self, "PUT")

            def do_DELETE(self):
                hub._handle(self, "DELETE")

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://{host}:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "FakeHub":
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def client_env(self, hf_home) -> dict[str, str]:
        """Environment variables that point a fresh client process at this server."""
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": "hf_fake",
            "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }

    # ------------------------------------------------------------------ inspection helpers
    def tokens_sent(self) -> set[str | None]:
        """The bearer tokens (None: no Authorization header) of every request but the LFS object uploads (those
        go to the URL the batch answer gave, without a token, as on the real Hub)."""
        out = set()
        for _, path, auth in list(self.authorizations):
            if not path.startswith("/_lfs/"):
                out.add(auth.split(" ", 1)[1] if auth and auth.lower().startswith("bearer ") else auth)
        return out

    def _repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        try:
            return self.repos[(repo_type, repo_id)]
        except KeyError:
            raise HubError(404, f"Repository {repo_type}/{repo_id} not found", "RepoNotFound") from None

    def _commit(self, repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision, revision)
        if oid not in repo.commits:
            raise HubError(404, f"Revision {revision!r} not found in {repo.id}", "RevisionNotFound")
        return repo.commits[oid]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        """Paths of the files at ``revision``."""
        with self._lock:
            return sorted(self._commit(self._repo(repo_id, repo_type), revision).tree)

    def read(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        with self._lock:
            entry = self._commit(self._repo(repo_id, repo_type), revision).tree[path]
        return (self.blob_dir / entry.sha256).read_bytes()

    def is_lfs(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bool:
        with self._lock:
            return self._commit(self._repo(repo_id, repo_type), revision).tree[path].lfs

    def history(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> list[str]:
        """Commit titles from newest to oldest."""
        return [title for _, title in self.commits(repo_id, repo_type, branch)]

    def commits(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> list[tuple[str, str]]:
        """(commit id, title) from newest to oldest."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            out, oid = [], repo.branches.get(branch)
            while oid is not None:
                out.append((oid, repo.commits[oid].title))
                oid = repo.commits[oid].parent
            return out

    # ------------------------------------------------------------------ storage
    def _store(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_dir / sha
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha

    def _entry(self, sha256: str, size: int, lfs: bool) -> Entry:
        if lfs:
            return Entry(sha256, size, True, _git_blob_oid(_lfs_pointer(sha256, size)))
        return Entry(sha256, size, False, _git_blob_oid((self.blob_dir / sha256).read_bytes()))

    def _new_commit(self, repo: Repo, branch: str, tree: dict[str, Entry], title: str) -> Commit:
        parent = repo.branches.get(branch)
        digest = hashlib.sha1(json.dumps([parent, title, len(repo.commits), sorted(
            (p, e.sha256) for p, e in tree.items())]).encode()).hexdigest()
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"  # the format the client parses
        commit = Commit(digest, parent, dict(tree), title, date)
        repo.commits[digest] = commit
        repo.branches[branch] = digest
        return commit

    # ------------------------------------------------------------------ HTTP plumbing
    def _handle(self, handler: BaseHTTPRequestHandler, method: str):
        status = 500
        try:
            req = _Request(handler, method)
            status, body, headers = self._route(req)
        except HubError as e:
            status = e.status
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            if e.commit:
                headers["X-Repo-Commit"] = e.commit
            body = {"error": e.message, **e.extra}
        except Exception:  # a bug: answer 400 (a 5xx would make the client retry with back-off for ~20 s)
            tb = traceback.format_exc()
            self.errors.append(tb)
            status, body, headers = 400, {"error": "fake hub failure:\n" + tb}, {}
        self.requests.append((method, urlsplit(handler.path).path, status))
        self.authorizations.append((method, urlsplit(handler.path).path, handler.headers.get("Authorization")))
        self._reply(handler, status, body, headers, head=(method == "HEAD"))

    @staticmethod
    def _reply(handler, status: int, body, headers: dict, head: bool):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **headers}
        handler.send_response(status)
        for k, v in headers.items():
            handler.send_header(k, v)
        if "Content-Length" not in headers:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head and body:
            handler.wfile.write(body)

    def _route(self, req: _Request):
        seg, m = req.segments, req.method
        if seg[:2] == ["api", "whoami-v2"]:
            return 200, {"type": "user", "name": "user", "fullname": "Fake User", "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"role": "write"}}}, {}
        if seg[:3] == ["api", "repos", "create"] and m == "POST":
            return self._create_repo(req.json())
        if seg[:2] == ["api", "validate-yaml"] and m == "POST":
            return self._validate_yaml(req.json())
        if len(seg) >= 4 and seg[0] == "api" and seg[1] in REPO_TYPES:
            return self._api(req, REPO_TYPES[seg[1]], f"{seg[2]}/{seg[3]}", seg[4:])
        if len(seg) == 2 and seg[0] == "_lfs" and m == "PUT":
            return self._lfs_put(seg[1], req.body)
        repo_type = "model"
        rest = seg
        if seg and seg[0] in REPO_TYPES and seg[0] != "models":
            repo_type, rest = REPO_TYPES[seg[0]], seg[1:]
        if len(rest) == 6 and rest[1].endswith(".git") and rest[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(repo_type, f"{rest[0]}/{rest[1][:-4]}", req.json())
        if len(rest) >= 5 and rest[2] == "resolve" and m in ("GET", "HEAD"):
            return self._resolve(req, repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        raise HubError(404, f"fake hub: no route for {m} {'/'.join(seg)}")

    # ------------------------------------------------------------------ endpoints
    def _create_repo(self, body: dict):
        repo_type = body.get("type") or "model"
        name = body["name"]
        repo_id = name if "/" in name else f"{body.get('organization') or 'user'}/{name}"
        if body.get("private") is not None:
            private = bool(body["private"])
        elif body.get("visibility") is not None:
            private = body["visibility"] == "private"
        else:
            private = self.default_private
        url = f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo: {url}", "RepoAlreadyExists",
                               url=url)
            repo = Repo(repo_type, repo_id, bool(private))
            sha = self._store(GITATTRIBUTES)
            self._new_commit(repo, "main", {".gitattributes": self._entry(sha, len(GITATTRIBUTES), False)},
                             "initial commit")
            self.repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    @staticmethod
    def _validate_yaml(body: dict):
        text = body.get("content") or ""
        match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
            if meta is not None and not isinstance(meta, dict):
                raise ValueError("the front matter is not a mapping")
        except Exception as e:  # noqa: BLE001
            return 400, {"errors": [{"message": f"invalid YAML metadata: {e}"}]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _api(self, req: _Request, repo_type: str, repo_id: str, rest: list[str]):
        m = req.method
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            action = rest[0] if rest else None
            if action is None and m in ("GET", "HEAD"):
                return self._info(repo, "main")
            if action == "revision" and len(rest) >= 2 and m in ("GET", "HEAD"):
                return self._info(repo, "/".join(rest[1:]))
            if action == "refs" and m == "GET":
                branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                            for b, oid in sorted(repo.branches.items())]
                return 200, {"branches": branches, "tags": [], "converts": []}, {}
            if action == "branch" and len(rest) >= 2 and m == "POST":
                branch = "/".join(rest[1:])
                start = self._commit(repo, req.json().get("startingPoint") or "main")
                if branch in repo.branches:
                    raise HubError(409, f"branch {branch} already exists", "BranchAlreadyExists")
                repo.branches[branch] = start.oid
                return 200, {}, {}
            if action == "tree" and len(rest) >= 2 and m == "GET":
                recursive = req.query.get("recursive", "").lower() in ("1", "true")
                return self._tree(repo, rest[1], "/".join(rest[2:]), recursive)
            if action == "paths-info" and len(rest) >= 2 and m == "POST":
                return self._paths_info(repo, rest[1], req)
            if action == "preupload" and m == "POST":
                return self._preupload(req.json())
            if action == "commit" and len(rest) >= 2 and m == "POST":
                return self._commit_ndjson(repo, "/".join(rest[1:]), req.body)
        raise HubError(404, f"fake hub: no route for {m} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    def _info(self, repo: Repo, revision: str):
        commit = self._commit(repo, revision)
        info = {
            "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24],
            "id": repo.id,
            "sha": commit.oid,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "lastModified": commit.date,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": [{"rfilename": p} for p in sorted(commit.tree)],
        }
        if repo.type == "model":
            info["modelId"] = repo.id
        if "README.md" in commit.tree:
            text = (self.blob_dir / commit.tree["README.md"].sha256).read_text("utf-8")
            match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.S)
            meta = yaml.safe_load(match.group(1)) if match else None
            if isinstance(meta, dict):
                info["cardData"] = meta
        return 200, info, {}

    def _entry_json(self, path: str, entry: Entry) -> dict:
        out = {"type": "file", "path": path, "oid": entry.git_oid, "size": entry.size}
        if entry.lfs:
            out["lfs"] = {"oid": entry.sha256, "size": entry.size,
                          "pointerSize": len(_lfs_pointer(entry.sha256, entry.size))}
        return out

    @staticmethod
    def _folder_json(path: str, tree: dict[str, Entry]) -> dict:
        inside = sorted(f"{p}:{e.git_oid}" for p, e in tree.items() if p.startswith(path + "/"))
        return {"type": "directory", "path": path, "oid": hashlib.sha1("\n".join(inside).encode()).hexdigest()}

    def _tree(self, repo: Repo, revision: str, path: str, recursive: bool):
        commit = self._commit(repo, revision)
        path = path.strip("/")
        prefix = path + "/" if path else ""
        if path and path in commit.tree:  # the real Hub lists a folder; a file path is not a folder
            raise HubError(404, f"{path} is not a folder", "EntryNotFound", commit.oid)
        files, folders = [], set()
        for p in sorted(commit.tree):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix):].split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                files.append(self._entry_json(p, commit.tree[p]))
        if path and not files and not folders:
            raise HubError(404, f"{path} not found at {revision}", "EntryNotFound", commit.oid)
        return 200, [self._folder_json(f, commit.tree) for f in sorted(folders)] + files, {}

    def _paths_info(self, repo: Repo, revision: str, req: _Request):
        commit = self._commit(repo, revision)
        if "json" in (req.headers.get("Content-Type") or ""):
            paths = req.json().get("paths", [])
        else:
            paths = parse_qs(req.body.decode()).get("paths", [])
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.tree:
                out.append(self._entry_json(path, commit.tree[path]))
            elif any(p.startswith(path + "/") for p in commit.tree):
                out.append(self._folder_json(path, commit.tree))
        return 200, out, {}

    def _preupload(self, body: dict):
        def mode(f):
            big = f["size"] >= self.LFS_THRESHOLD or f["path"].lower().endswith(self.LFS_SUFFIXES)
            return "lfs" if self.lfs and f["size"] > 0 and big else "regular"

        return 200, {"files": [{"path": f["path"], "uploadMode": mode(f), "shouldIgnore": False}
                               for f in body.get("files", [])]}, {}

    def _lfs_batch(self, repo_type: str, repo_id: str, body: dict):
        with self._lock:
            self._repo(repo_id, repo_type)
        if body.get("operation") != "upload":
            raise HubError(400, "the fake hub only implements LFS uploads (downloads go through /resolve)")
        objects = []
        for obj in body.get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"]}
            if not (self.blob_dir / obj["oid"]).exists():  # no "actions": the client skips the upload
                item["actions"] = {"upload": {"href": f"{self.endpoint}/_lfs/{obj['oid']}", "header": {}}}
            objects.append(item)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def _lfs_put(self, oid: str, body: bytes):
        if not re.fullmatch(r"[0-9a-f]{64}", oid):
            raise HubError(400, f"bad LFS object id {oid!r}")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"LFS upload does not match its sha256 {oid}")
        self._store(body)
        return 200, b"", {}

    def _commit_ndjson(self, repo: Repo, revision: str, body: bytes):
        if revision not in repo.branches:
            raise HubError(404, f"branch {revision!r} not found in {repo.id}", "RevisionNotFound")
        tree = dict(repo.commits[repo.branches[revision]].tree)
        title = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                title = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent and parent != repo.branches[revision]:
                    raise HubError(412, f"parent commit {parent} is not the head of {revision}")
            elif key == "file":
                data = base64.b64decode(value["content"]) if value.get("encoding", "base64") == "base64" \
                    else value["content"].encode()
                tree[value["path"]] = self._entry(self._store(data), len(data), False)
            elif key == "lfsFile":
                if not (self.blob_dir / value["oid"]).exists():
                    raise HubError(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                tree[value["path"]] = self._entry(value["oid"], value["size"], True)
            elif key == "deletedFile":
                if tree.pop(value["path"], None) is None:
                    raise HubError(404, f"cannot delete {value['path']}: no such file", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                for p in [p for p in tree if p.startswith(folder)]:
                    del tree[p]
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        commit = self._new_commit(repo, revision, tree, title)
        url = f"{self.endpoint}/{URL_PREFIX[repo.type]}{repo.id}"
        return 200, {"commitUrl": f"{url}/commit/{commit.oid}", "commitOid": commit.oid,
                     "commitMessage": title, "pullRequestUrl": None}, {}

    def _resolve(self, req: _Request, repo_type: str, repo_id: str, revision: str, path: str):
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            commit = self._commit(repo, revision)
            entry = commit.tree.get(path)
        if entry is None:
            raise HubError(404, f"{path} not found in {repo_id} at {revision}", "EntryNotFound", commit.oid)
        etag = entry.sha256 if entry.lfs else entry.git_oid
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry.size)})
        data = (self.blob_dir / entry.sha256).read_bytes()
        status = 200
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", (req.headers.get("Range") or "").strip())
        if rng and (rng.group(1) or rng.group(2)):
            if rng.group(1):
                start = int(rng.group(1))
                end = min(int(rng.group(2)), entry.size - 1) if rng.group(2) else entry.size - 1
            else:  # suffix range: the last N bytes
                start, end = max(entry.size - int(rng.group(2)), 0), entry.size - 1
            if start >= entry.size:
                headers["Content-Range"] = f"bytes */{entry.size}"
                return 416, b"", headers
            data, status = data[start:end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        return status, data, headers
