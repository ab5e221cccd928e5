# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""A local stand-in for the Hugging Face Hub, for the tests that upload (tests/hub, tests/models/test_conversion.py,
tests/training): the real huggingface_hub code runs down to HTTP, against `FakeHub`, a threaded HTTP server on
127.0.0.1 that implements the few endpoints huggingface_hub uses to create a repository and commit to it:

    POST /api/repos/create                          create the repository (409 when it exists)
    POST /api/validate-yaml                         check the README.md metadata (sent before hashing files)
    POST /api/models/{ns}/{name}/branch/{branch}    create a branch (only with --revision)
    POST /api/models/{ns}/{name}/preupload/{rev}    answer "regular" for every file: no LFS / xet transfer
    POST /api/models/{ns}/{name}/commit/{rev}       ndjson: a header line, then one line per file, base64

Anything else gets a 404 and is recorded in `FakeHub.unexpected`, which the tests require to stay empty.
No network: the server only listens on the loopback interface.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from huggingface_hub import constants
from huggingface_hub.utils._http import close_session


FAKE_TOKEN = "hf_fake_token_for_tests_0123456789"
FAKE_USER = "fake-user"


class FakeHub:
    """A minimal, in-memory Hub: repositories, branches and the files committed to them."""

    def __init__(self, token: str = FAKE_TOKEN):
        self.token = token
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.unexpected: list[tuple[str, str]] = []
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.commits: list[dict] = []  # {"repo_id", "revision", "summary", "files": {path: bytes}}
        self.validated_readmes: list[str] = []
        hub_state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                hub_state._dispatch(self)

            do_POST = do_PUT = do_HEAD = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # ------------------------------------------------------------------------------------------ plumbing

    @staticmethod
    def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(handler.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    handler.rfile.readline()
                    return body
                body += handler.rfile.read(size)
                handler.rfile.readline()
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None):
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def _dispatch(self, handler: BaseHTTPRequestHandler):
        path = urlsplit(handler.path).path
        body = self._read_body(handler)
        with self.lock:
            self.requests.append((handler.command, path))
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return self._reply(handler, 401, {"error": "Invalid credentials in Authorization header"})
        parts = path.strip("/").split("/")  # split before unquoting: a quoted revision may hold "%2F"
        method = handler.command
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(handler, json.loads(body))
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._validate_yaml(handler, json.loads(body))
        if method == "POST" and len(parts) == 6 and parts[:2] == ["api", "models"]:
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], unquote(parts[5])
            if repo_id not in self.repos:
                return self._reply(handler, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if action == "preupload":
                return self._preupload(handler, repo_id, revision, json.loads(body))
            if action == "commit":
                return self._commit(handler, repo_id, revision, body)
            if action == "branch":
                return self._create_branch(handler, repo_id, revision)
        with self.lock:
            self.unexpected.append((method, path))
        return self._reply(handler, 404, {"error": f"FakeHub does not implement {method} {path}"})

    # ----------------------------------------------------------------------------------------- endpoints

    def _create_repo(self, handler, payload: dict):
        assert payload.get("type", "model") == "model", payload
        repo_id = f"{payload.get('organization') or FAKE_USER}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        with self.lock:
            if repo_id in self.repos:
                return self._reply(handler, 409, {"error": "You already created this model repo", "url": url})
            self.repos[repo_id] = {"private": payload.get("visibility") == "private", "branches": {"main": {}}}
        return self._reply(handler, 200, {"url": url, "name": repo_id, "id": hashlib.sha1(url.encode()).hexdigest()})

    def _validate_yaml(self, handler, payload: dict):
        content = payload["content"]
        with self.lock:
            self.validated_readmes.append(content)
        errors = []
        if content.startswith("---\n"):
            try:
                metadata = yaml.safe_load(content.split("---\n", 2)[1])
                if metadata is not None and not isinstance(metadata, dict):
                    errors.append({"message": "metadata must be a mapping"})
            except (yaml.YAMLError, IndexError) as error:
                errors.append({"message": f"invalid YAML: {error}"})
        return self._reply(handler, 400 if errors else 200, {"errors": errors, "warnings": []})

    def _create_branch(self, handler, repo_id: str, branch: str):
        with self.lock:
            branches = self.repos[repo_id]["branches"]
            if branch in branches:
                return self._reply(handler, 409, {"error": "Reference already exists"})
            branches[branch] = dict(branches["main"])
        return self._reply(handler, 200, {})

    def _preupload(self, handler, repo_id: str, revision: str, payload: dict):
        if revision not in self.repos[repo_id]["branches"]:
            return self._reply(handler, 404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
        files = [
            {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
            for item in payload["files"]
        ]
        return self._reply(handler, 200, {"files": files, "commitOid": "0" * 40})

    def _commit(self, handler, repo_id: str, revision: str, body: bytes):
        assert handler.headers.get("Content-Type") == "application/x-ndjson"
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header, operations = lines[0], lines[1:]
        assert header["key"] == "header", header
        files: dict[str, bytes] = {}
        for operation in operations:
            if operation["key"] != "file":  # lfsFile, deletedFile, ...: never asked for by this stand-in
                return self._reply(handler, 400, {"error": f"FakeHub cannot handle {operation['key']}"})
            value = operation["value"]
            assert value["encoding"] == "base64", value
            files[value["path"]] = base64.b64decode(value["content"])
        with self.lock:
            branches = self.repos[repo_id]["branches"]
            if revision not in branches:
                return self._reply(handler, 404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
            branches[revision].update(files)
            oid = hashlib.sha1(f"{repo_id}@{revision}#{len(self.commits)}".encode()).hexdigest()
            self.commits.append(
                {"repo_id": repo_id, "revision": revision, "summary": header["value"]["summary"], "files": files}
            )
        return self._reply(
            handler, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}
        )


@pytest.fixture
def fake_hub(monkeypatch):
    """A running FakeHub, with huggingface_hub pointed at it and allowed to reach it."""
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
        # CI runs with HF_HUB_OFFLINE=1, which makes huggingface_hub refuse every HTTP request. It is read into
        # `constants` at import time, so only this test (through the fixture) switches it off, to reach the
        # stand-in on 127.0.0.1; monkeypatch restores it afterwards.
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        close_session()  # a fresh HTTP client, built with the environment above
        yield server
        close_session()


def cli_env(server_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_TOKEN=FAKE_TOKEN, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env["HF_HUB_OFFLINE"] = "0"  # this child process may reach the local stand-in (see the fixture's comment)
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if server_url:
        env["HF_ENDPOINT"] = server_url
    return env
