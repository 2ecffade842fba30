"""The CLI's side of the admin API: a small synchronous client that says clearly what went wrong."""

from __future__ import annotations

import json
import os
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"


class AdminError(Exception):
    """The daemon refused, failed or could not be reached; the message is for the operator."""


class AdminClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 10.0):
        self.url = (url or os.environ.get("LLMGATE_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("LLMGATE_ADMIN_TOKEN", "")
        self.timeout = timeout
        import getpass  # here and in call(), not at the top: `llmgate --help` imports this module too
        import socket

        self.actor = f"{getpass.getuser()}@{socket.gethostname()}"

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> Any:
        import urllib.error
        import urllib.parse
        import urllib.request

        url = (
            self.url
            + path
            + ("?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None}) if query else "")
        )
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "X-LLMgate-Actor": self.actor}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read())["error"]["message"]
            except Exception:
                message = err.reason
            hint = " (set LLMGATE_ADMIN_TOKEN)" if err.code == 401 and not self.token else ""
            raise AdminError(f"{method} {path}: {err.code} {message}{hint}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise AdminError(f"cannot reach the gateway at {self.url}: {reason} (is it running? use --url)") from None

    def get(self, path: str, **query) -> Any:
        return self.call("GET", path, query=query or None)

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.call("POST", path, body or {})
