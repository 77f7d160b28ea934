"""Orthanc's REST API as one small interface, two ways in: over HTTP (workers, tools, tests) and in-process (the
plugin wraps `orthanc.RestApi*`). Standard library only."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import urllib.parse
from typing import Any


class OrthancError(Exception):
    """Orthanc answered with an error (status is the HTTP status, 0 when unknown)."""

    def __init__(self, method: str, uri: str, status: int, detail: str = "") -> None:
        super().__init__(f"{method} {uri}: HTTP {status} {detail}".strip())
        self.method, self.uri, self.status, self.detail = method, uri, status, detail

    @property
    def not_found(self) -> bool:
        return self.status == 404


class OrthancUnavailable(OrthancError):
    """Orthanc could not be reached (down, restarting, refused): worth retrying later."""


class OrthancApi:
    """JSON helpers over `request`, which subclasses implement."""

    def request(self, method: str, uri: str, body: bytes | None = None,
                content_type: str = "application/octet-stream") -> bytes:
        raise NotImplementedError

    def get(self, uri: str) -> bytes:
        return self.request("GET", uri)

    def get_json(self, uri: str) -> Any:
        return json.loads(self.get(uri))

    def post_json(self, uri: str, value: Any) -> Any:
        answer = self.request("POST", uri, json.dumps(value).encode(), "application/json")
        return json.loads(answer) if answer.strip() else None

    def post_dicom(self, data: bytes) -> dict[str, Any]:
        """Store one Part 10 file; Orthanc answers with its ID and Status ("Success" / "AlreadyStored")."""
        return json.loads(self.request("POST", "/instances", data, "application/dicom"))

    def put_text(self, uri: str, text: str) -> None:
        self.request("PUT", uri, text.encode("utf-8"), "text/plain")

    def delete(self, uri: str) -> None:
        self.request("DELETE", uri)


class HttpOrthanc(OrthancApi):
    """Orthanc over HTTP with Basic authentication; one keep-alive connection per thread."""

    def __init__(self, base_url: str, username: str = "", password: str = "", timeout: float = 120.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"expected http://host:port, got {base_url!r}")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.prefix = parsed.path.rstrip("/")
        self.timeout = timeout
        self._auth = ("Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()) if username else ""
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def request(self, method: str, uri: str, body: bytes | None = None,
                content_type: str = "application/octet-stream") -> bytes:
        headers = {"Accept": "*/*"}
        if self._auth:
            headers["Authorization"] = self._auth
        if body is not None:
            headers["Content-Type"] = content_type
        path = self.prefix + uri
        for attempt in (1, 2):  # a kept-alive connection the server closed is retried once on a fresh one
            try:
                conn = self._connection()
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop()
                if attempt == 2:
                    raise OrthancUnavailable(method, uri, 0, f"{type(exc).__name__}: {exc}") from exc
                continue
            except (OSError, http.client.HTTPException, socket.timeout) as exc:
                self._drop()
                raise OrthancUnavailable(method, uri, 0, f"{type(exc).__name__}: {exc}") from exc
            if response.status >= 400:
                detail = data[:300].decode("utf-8", "replace")
                if response.status in (502, 503, 504):
                    raise OrthancUnavailable(method, uri, response.status, detail)
                raise OrthancError(method, uri, response.status, detail)
            if response.getheader("Connection", "").lower() == "close":
                self._drop()
            return data
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._drop()
