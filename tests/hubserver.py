"""A small in-memory server speaking the part of the Hugging Face Hub protocol that huggingface_hub 2.x uses
to create repos, upload (preupload -> LFS batch -> PUT -> NDJSON commit) and download (model info, tree,
resolve). Loopback only; used as HF_ENDPOINT by the tests, with HF_HUB_DISABLE_XET=1."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
from urllib.parse import unquote, urlparse

USER = "tester"
LFS_SUFFIXES = (".safetensors", ".png", ".bin")


class Repo:
    def __init__(self):
        self.commits: dict[str, dict[str, bytes]] = {}
        self.branches: dict[str, str] = {}
        self.counter = 0

    def files(self, rev: str) -> dict[str, bytes] | None:
        sha = self.branches.get(rev, rev)
        return self.commits.get(sha)

    def commit(self, rev: str, files: dict[str, bytes]) -> str:
        self.counter += 1
        sha = hashlib.sha1(f"{self.counter}:{sorted(files)}".encode()).hexdigest()
        self.commits[sha] = files
        self.branches[rev] = sha
        return sha


class HubState:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.tokens: set[str] = set()
        self.fail: dict[str, int] = {}  # endpoint kind -> how many upcoming calls answer 500
        self.requests: list[str] = []
        self.lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState

    def log_message(self, *args):
        pass

    # -- plumbing ------------------------------------------------------------------------------------------
    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, data, headers=None):
        self._send(code, json.dumps(data).encode(), headers)

    def _error(self, code: int, message: str, error_code: str | None = None):
        self._json(code, {"error": message}, {"X-Error-Code": error_code} if error_code else None)

    def _body(self) -> bytes:
        return self.raw_body

    def _authorized(self) -> bool:
        auth = self.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            self.state.tokens.add(auth[7:])
            return True
        self._error(401, "Invalid credentials in Authorization header")
        return False

    def _failing(self, kind: str) -> bool:
        with self.state.lock:
            if self.state.fail.get(kind, 0) > 0:
                self.state.fail[kind] -= 1
                self._error(500, f"internal error during {kind}")
                return True
        return False

    @property
    def base(self) -> str:
        return f"http://{self.headers['Host']}"

    # -- routes --------------------------------------------------------------------------------------------
    def do_GET(self):
        self._route()

    def do_HEAD(self):
        self._route()

    def do_POST(self):
        self._route()

    def do_PUT(self):
        self._route()

    def _route(self):
        path = unquote(urlparse(self.path).path)
        # Read every body up front: one left unread would be parsed as the next request on this connection.
        self.raw_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.state.requests.append(f"{self.command} {path}")
        routes = [
            ("GET", r"/api/whoami-v2", self.whoami),
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", lambda: self._json(200, {"errors": [], "warnings": []})),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>.+)", self.preupload),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>.+)", self.commit),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>.+)", self.create_branch),
            ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", self.lfs_put),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self.tree),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>.+))?", self.model_info),
            ("GET|HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
        ]
        for methods, pattern, fn in routes:
            m = re.fullmatch(pattern, path)
            if m and self.command in methods.split("|"):
                return fn(**{k: v for k, v in m.groupdict().items()})
        self._error(404, f"no route for {self.command} {path}")

    def whoami(self):
        if self._authorized():
            self._json(200, {"name": USER, "type": "user", "orgs": [], "auth": {"accessToken": {"role": "write"}}})

    def create_repo(self):
        if not self._authorized():
            return
        data = json.loads(self._body())
        repo_id = f"{data.get('organization') or USER}/{data['name']}"
        url = {"url": f"{self.base}/{repo_id}", "name": repo_id}
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._json(409, {**url, "error": "You already created this model repo"})
            repo = self.state.repos[repo_id] = Repo()
            repo.commit("main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
        self._json(200, url)

    def _repo(self, repo: str) -> Repo | None:
        if repo not in self.state.repos:
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        return self.state.repos[repo]

    def create_branch(self, repo, rev):
        if self._authorized() and (r := self._repo(repo)):
            if rev in r.branches:
                return self._error(409, "Reference already exists")
            r.branches[rev] = r.branches["main"]
            self._json(200, {})

    def preupload(self, repo, rev):
        if not (self._authorized() and self._repo(repo)) or self._failing("preupload"):
            return
        files = json.loads(self._body())["files"]
        modes = [
            {
                "path": f["path"],
                "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                "shouldIgnore": False,
            }
            for f in files
        ]
        self._json(200, {"files": modes, "commitOid": self.state.repos[repo].branches.get(rev)})

    def lfs_batch(self, repo):
        if not (self._authorized() and self._repo(repo)) or self._failing("lfs_batch"):
            return
        objects = []
        for obj in json.loads(self._body())["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:  # no actions: the server already has it
                entry["actions"] = {"upload": {"href": f"{self.base}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        self._send(
            200, json.dumps({"transfer": "basic", "objects": objects}).encode(), ctype="application/vnd.git-lfs+json"
        )

    def lfs_put(self, oid):
        if self._failing("lfs_put"):
            return
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "sha256 mismatch")
        self.state.lfs[oid] = data
        self._send(200)

    def commit(self, repo, rev):
        if not (self._authorized() and (r := self._repo(repo))):
            return
        body = self._body()
        if self._failing("commit"):
            return
        files = dict(r.files(rev) or r.files("main") or {})
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    return self._error(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.state.lfs[value["oid"]]
            elif item["key"] in ("deletedFile", "deletedFolder"):
                files = {p: b for p, b in files.items() if p != value["path"] and not p.startswith(value["path"] + "/")}
        sha = r.commit(rev, files)
        self._json(200, {"commitUrl": f"{self.base}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

    def model_info(self, repo, rev=None):
        if (r := self._repo(repo)) is None:
            return
        files = r.files(rev or "main")
        if files is None:
            return self._error(404, "Revision not found", "RevisionNotFound")
        sha = r.branches.get(rev or "main", rev)
        self._json(
            200,
            {
                "id": repo,
                "modelId": repo,
                "sha": sha,
                "private": False,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": [{"rfilename": p} for p in sorted(files)],
            },
        )

    def tree(self, repo, rev, sub=None):
        if (r := self._repo(repo)) is None:
            return
        files = r.files(rev) or {}
        out = []
        for p, data in sorted(files.items()):
            if sub and not p.startswith(sub.rstrip("/") + "/"):
                continue
            entry = {"type": "file", "path": p, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            if p.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            out.append(entry)
        self._json(200, out)

    def resolve(self, repo, rev, file):
        if (r := self._repo(repo)) is None:
            return
        files = r.files(rev)
        if files is None:
            return self._error(404, "Revision not found", "RevisionNotFound")
        if file not in files:
            return self._error(404, "Entry not found", "EntryNotFound")
        data = files[file]
        headers = {"X-Repo-Commit": r.branches.get(rev, rev), "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        if file.endswith(LFS_SUFFIXES):
            headers.update({"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Linked-Size": str(len(data))})
        self._send(200, data, headers, ctype="application/octet-stream")


class HubServer:
    """with HubServer() as hub: ... hub.url is the HF_ENDPOINT; hub.state holds repos and LFS objects."""

    def __init__(self):
        self.state = HubState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
