"""Minimal NATS and etcd clients over raw TCP / HTTP, standard library only.

The GPU machines have PyTorch but nothing can be pip-installed there, so the demo workers speak the
protocols directly, using only what dynsup gives every worker: NATS_SERVER (nats://HOST:PORT) and
ETCD_ENDPOINTS (http://HOST:PORT[,...]).

- NATS: the text protocol (INFO / CONNECT / PUB / SUB / MSG / PING / PONG). A reader thread answers the
  server's PINGs and delivers MSGs; if the connection drops, `lost` is set and the owner decides (the
  demo workers exit non-zero, so dynsup restarts them).
- etcd v3: the JSON gateway (POST /v3/kv/put, /v3/kv/range, /v3/lease/grant|keepalive|revoke), keys and
  values base64-encoded, 64-bit ids as decimal strings.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Optional


class ControlPlaneError(Exception):
    pass


# --------------------------------------------------------------------------------------------------
# NATS


class Nats:
    def __init__(self, url: str, name: str, timeout: float = 5.0):
        u = urllib.parse.urlparse(url if "://" in url else f"nats://{url}")
        if not u.hostname:
            raise ControlPlaneError(f"bad NATS url {url!r}")
        self.url = url
        self.host, self.port = u.hostname, u.port or 4222
        self.name = name
        self.lost = threading.Event()
        self.lost_reason = ""
        self._wlock = threading.Lock()
        self._subs: dict[int, Callable[[str, bytes], None]] = {}
        self._next_sid = 1
        self._pong = threading.Event()
        self._closing = False
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as e:
            raise ControlPlaneError(f"cannot connect to NATS at {self.host}:{self.port}: {e}") from e
        self._sock.settimeout(timeout)
        self._rfile = self._sock.makefile("rb")
        line = self._rfile.readline()
        if not line.startswith(b"INFO "):
            raise ControlPlaneError(f"NATS at {self.host}:{self.port} did not send INFO (got {line[:80]!r})")
        self.info = json.loads(line[5:])
        connect = {"verbose": False, "pedantic": False, "name": name, "lang": "python-raw", "version": "0.1", "protocol": 1}
        self._send(f"CONNECT {json.dumps(connect)}\r\nPING\r\n".encode())
        # Until the first PONG, read synchronously: -ERR here means the server refused us.
        while True:
            line = self._rfile.readline()
            if not line:
                raise ControlPlaneError("NATS closed the connection during CONNECT")
            if line.startswith(b"PONG"):
                break
            if line.startswith(b"-ERR"):
                raise ControlPlaneError(f"NATS refused CONNECT: {line.decode(errors='replace').strip()}")
            if line.startswith(b"PING"):
                self._send(b"PONG\r\n")
        self._sock.settimeout(None)
        threading.Thread(target=self._reader, name="nats-reader", daemon=True).start()

    def _send(self, data: bytes) -> None:
        with self._wlock:
            self._sock.sendall(data)

    def _fail(self, why: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = why
            self.lost.set()

    def _reader(self) -> None:
        try:
            while True:
                line = self._rfile.readline()
                if not line:
                    raise ControlPlaneError("connection closed by server")
                if line.startswith(b"PING"):
                    self._send(b"PONG\r\n")
                elif line.startswith(b"PONG"):
                    self._pong.set()
                elif line.startswith(b"MSG "):
                    parts = line.decode().split()
                    # MSG <subject> <sid> [reply-to] <#bytes>
                    subject, sid, n = parts[1], int(parts[2]), int(parts[-1])
                    payload = self._rfile.read(n + 2)[:n]
                    cb = self._subs.get(sid)
                    if cb:
                        try:
                            cb(subject, payload)
                        except Exception:  # a bad message must not kill the connection
                            pass
                elif line.startswith(b"-ERR"):
                    raise ControlPlaneError(line.decode(errors="replace").strip())
                # +OK, INFO updates: ignore
        except Exception as e:  # noqa: BLE001
            if not self._closing:
                self._fail(f"NATS connection lost: {e}")

    def publish(self, subject: str, payload: bytes | str) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        if self.lost.is_set():
            raise ControlPlaneError(self.lost_reason)
        try:
            self._send(f"PUB {subject} {len(payload)}\r\n".encode() + payload + b"\r\n")
        except OSError as e:
            self._fail(f"NATS publish failed: {e}")
            raise ControlPlaneError(self.lost_reason) from e

    def subscribe(self, subject: str, cb: Callable[[str, bytes], None]) -> int:
        sid = self._next_sid
        self._next_sid += 1
        self._subs[sid] = cb
        self._send(f"SUB {subject} {sid}\r\n".encode())
        return sid

    def flush(self, timeout: float = 2.0) -> bool:
        """Round trip to the server (PING/PONG): true once everything sent before has been processed."""
        self._pong.clear()
        try:
            self._send(b"PING\r\n")
        except OSError as e:
            self._fail(f"NATS flush failed: {e}")
            return False
        return self._pong.wait(timeout)

    def close(self) -> None:
        self._closing = True
        try:
            self.flush(1.0)
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


# --------------------------------------------------------------------------------------------------
# etcd (v3 JSON gateway)


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _prefix_end(prefix: bytes) -> bytes:
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


class Etcd:
    def __init__(self, endpoints: str, timeout: float = 3.0):
        self.endpoints = [e.strip().rstrip("/") for e in endpoints.split(",") if e.strip()]
        if not self.endpoints:
            raise ControlPlaneError("no etcd endpoint")
        self.endpoints = [e if "://" in e else f"http://{e}" for e in self.endpoints]
        self.timeout = timeout

    def call(self, path: str, body: dict) -> dict:
        last: Optional[Exception] = None
        data = json.dumps(body).encode()
        for ep in self.endpoints:
            req = urllib.request.Request(f"{ep}{path}", data=data, headers={"content-type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    text = r.read().decode()
                # keepalive is a stream: one JSON object per line; the first is ours.
                return json.loads(text.splitlines()[0]) if text.strip() else {}
            except urllib.error.HTTPError as e:
                raise ControlPlaneError(f"etcd {ep}{path}: HTTP {e.code}: {e.read()[:200]!r}") from e
            except (OSError, ValueError) as e:
                last = e
        raise ControlPlaneError(f"etcd {','.join(self.endpoints)}{path}: {last}")

    def status(self) -> dict:
        return self.call("/v3/maintenance/status", {})

    def grant(self, ttl: int) -> str:
        r = self.call("/v3/lease/grant", {"TTL": ttl})
        if "ID" not in r:
            raise ControlPlaneError(f"etcd lease grant: {r}")
        return str(r["ID"])

    def keepalive(self, lease: str) -> int:
        """Renew; returns the lease's TTL (0 or missing = the lease no longer exists)."""
        r = self.call("/v3/lease/keepalive", {"ID": lease})
        return int((r.get("result") or {}).get("TTL", 0))

    def revoke(self, lease: str) -> None:
        self.call("/v3/lease/revoke", {"ID": lease})

    def put(self, key: str, value: str, lease: Optional[str] = None) -> None:
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        self.call("/v3/kv/put", body)

    def get_prefix(self, prefix: str) -> dict[str, str]:
        p = prefix.encode()
        r = self.call("/v3/kv/range", {"key": _b64(p), "range_end": _b64(_prefix_end(p))})
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode() for kv in r.get("kvs", [])}


def connect_with_deadline(fn: Callable[[], object], what: str, deadline_s: float, log: Callable[[str], None]):
    """Retry `fn` until it succeeds or `deadline_s` passes (control plane still starting); raise the last error."""
    end = time.monotonic() + deadline_s
    last: Optional[Exception] = None
    while time.monotonic() < end:
        try:
            return fn()
        except ControlPlaneError as e:
            last = e
            time.sleep(0.5)
    raise ControlPlaneError(f"cannot reach {what} within {deadline_s:g}s: {last}")


def token(s: str) -> str:
    """A NATS subject token / etcd key segment: no '.', '*', '>', '/' or whitespace."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s) or "_"
