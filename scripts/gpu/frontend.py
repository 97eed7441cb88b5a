#!/usr/bin/env python3
"""dynsup GPU demo frontend: no GPU; watches the prefill/decode workers through NATS and etcd.

    python3 scripts/gpu/frontend.py            # listens on DYNSUP_PORT (default 8100)

  GET /health   200 while NATS is connected and etcd answers (503 otherwise)
  GET /workers  JSON: the workers registered in etcd (dynsup-gpu/<cluster>/workers/...) and, per worker,
                the last heartbeat seen on NATS (dynsup-gpu.<cluster>.heartbeat.>) and its age

scripts/gpu/gpu-check.sh reads /workers to check that every GPU replica registered itself with the UUID of
the GPU dynsup gave it and is heartbeating. Exits 3 if NATS or etcd is unreachable at start, 5 if NATS
is lost later; SIGTERM: exit 0.
"""

from __future__ import annotations

import json
import os
import faulthandler
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dynsup_cp import ControlPlaneError, Etcd, Nats, connect_with_deadline, token  # noqa: E402

WORKER = os.environ.get("DYNSUP_WORKER") or f"frontend-{os.getpid()}"


def log(msg: str, **kv) -> None:
    extra = (" " + json.dumps(kv, separators=(",", ":"))) if kv else ""
    print(f"{time.strftime('%H:%M:%S')} {WORKER} {msg}{extra}", flush=True)


def main() -> int:
    cluster = token(os.environ.get("DYNSUP_CLUSTER", "local"))
    port = int(os.environ.get("DYNSUP_PORT") or 8100)
    nats_url, etcd_eps = os.environ.get("NATS_SERVER"), os.environ.get("ETCD_ENDPOINTS")
    if not nats_url or not etcd_eps:
        log("FATAL: NATS_SERVER and ETCD_ENDPOINTS must be set (dynsup sets them)")
        return 2
    # SIGUSR1 prints every thread's stack to the log (the GPU check asks when a stop takes too long).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: (log("SIGTERM"), stop.set()))
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = float(os.environ.get("DEMO_CONNECT_DEADLINE") or 15)
    try:
        nc = connect_with_deadline(lambda: Nats(nats_url, WORKER), f"NATS at {nats_url}", deadline, log)
        etcd = Etcd(etcd_eps, timeout=2.0)
        connect_with_deadline(etcd.status, f"etcd at {etcd_eps}", deadline, log)
    except ControlPlaneError as e:
        log(f"FATAL: {e}")
        return 3

    beats: dict[str, dict] = {}
    lock = threading.Lock()

    def on_beat(subject: str, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        with lock:
            beats[str(msg.get("worker") or subject.rsplit(".", 1)[-1])] = {**msg, "_seen": time.time()}

    def on_bye(subject: str, payload: bytes) -> None:
        with lock:
            beats.pop(subject.rsplit(".", 1)[-1], None)

    nc.subscribe(f"dynsup-gpu.{cluster}.heartbeat.>", on_beat)
    nc.subscribe(f"dynsup-gpu.{cluster}.bye.>", on_bye)
    nc.flush()
    prefix = f"dynsup-gpu/{cluster}/workers/"

    def workers() -> dict:
        regs = {}
        for k, v in etcd.get_prefix(prefix).items():
            try:
                regs[k[len(prefix):]] = json.loads(v)
            except ValueError:
                regs[k[len(prefix):]] = {"raw": v}
        now = time.time()
        with lock:
            hb = {w: {**{k: v for k, v in b.items() if k != "_seen"}, "age_s": round(now - b["_seen"], 1)} for w, b in beats.items()}
        return {"cluster": cluster, "registered": regs, "heartbeats": hb}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            path = self.path.split("?")[0]
            try:
                if path in ("/health", "/"):
                    if nc.lost.is_set():
                        raise ControlPlaneError(nc.lost_reason)
                    etcd.status()
                    code, body = 200, {"status": "ok", "nats": nats_url, "etcd": etcd_eps}
                elif path == "/workers":
                    code, body = 200, workers()
                else:
                    code, body = 404, {"error": "not found"}
            except ControlPlaneError as e:
                code, body = 503, {"status": "unavailable", "error": str(e)}
            data = (json.dumps(body) + "\n").encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    try:
        srv = ThreadingHTTPServer((os.environ.get("DEMO_HEALTH_HOST", "127.0.0.1"), port), Handler)
    except OSError as e:
        log(f"FATAL: cannot listen on port {port}: {e}")
        return 6
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    log("frontend up", port=port, nats=nats_url, etcd=etcd_eps)
    last = 0.0
    while not stop.wait(1.0):
        if nc.lost.is_set():
            log(f"FATAL: {nc.lost_reason}")
            return 5
        if time.time() - last >= 15:
            last = time.time()
            try:
                w = workers()
                log("workers", registered=sorted(w["registered"]), heartbeating=sorted(w["heartbeats"]))
            except ControlPlaneError as e:
                log(f"etcd: {e}")
    srv.shutdown()
    nc.close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
