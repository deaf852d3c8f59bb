"""A loopback HTTP server that answers the few Hugging Face Hub calls snapshot_download makes.

It serves the files of one local folder as one repo at one commit and records every
request, so tests can check what conceptvec downloads (and what it never asks for).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


class FakeHub:
    """Serve ``files`` as ``repo_id`` on 127.0.0.1; ``requested`` lists fetched file names."""

    def __init__(self, repo_id: str, files: dict[str, bytes]):
        self.repo_id = repo_id
        self.files = files
        self.requested: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes = b"", headers=None, head=False):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _route(self, head: bool):
                path = self.path.split("?")[0]
                api = f"/api/models/{hub.repo_id}"
                resolve = f"/{hub.repo_id}/resolve/"
                if path.startswith(api + "/tree/"):
                    listing = [
                        {
                            "type": "file",
                            "path": n,
                            "size": len(b),
                            "oid": hashlib.sha1(b).hexdigest(),
                        }
                        for n, b in hub.files.items()
                    ]
                    return self._send(200, json.dumps(listing).encode(), head=head)
                if path.startswith(api + "/revision/"):
                    info = {
                        "id": hub.repo_id,
                        "sha": COMMIT,
                        "siblings": [{"rfilename": n} for n in hub.files],
                    }
                    return self._send(200, json.dumps(info).encode(), head=head)
                if path.startswith(resolve):
                    name = path[len(resolve) :].split("/", 1)[1]
                    if not head:
                        hub.requested.append(name)
                    if name not in hub.files:
                        return self._send(404, headers={"X-Error-Code": "EntryNotFound"}, head=head)
                    body = hub.files[name]
                    headers = {
                        "X-Repo-Commit": COMMIT,
                        "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
                    }
                    return self._send(200, body, headers, head=head)
                return self._send(404, head=head)

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @classmethod
    def from_folder(cls, repo_id: str, folder: Path, extra: dict[str, bytes] | None = None):
        """Serve every file of ``folder`` (plus ``extra``) as ``repo_id``."""
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        return cls(repo_id, {**files, **(extra or {})})

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
