#!/usr/bin/env python3
"""dynsup GPU demo worker: behaves like a disaggregated prefill or decode worker, on one GPU.

    python3 scripts/gpu/demo_worker.py --role prefill|decode [--kv-gib 4] [--report-every 5]

What it does, with only the environment dynsup gives every worker:
  - CUDA_VISIBLE_DEVICES: the GPU(s) it may use (it uses the first visible one, cuda:0). Empty means
    "no GPU": it refuses to start unless CPU is allowed (--allow-cpu / DEMO_ALLOW_CPU=1).
  - allocates a KV-cache-like buffer (--kv-gib, default 4 GiB, bf16) on that GPU and keeps it for its
    whole life, so nvidia-smi shows the memory the way it shows a real worker's;
  - runs real matrix work in a loop: prefill = batched large GEMMs (tokens x hidden x hidden) whose
    output is written into the KV cache; decode = many small steps (batch x hidden GEMV-like GEMM plus
    attention over a slice of the KV cache), and logs device, throughput (TFLOP/s, tokens/s) and memory
    every --report-every seconds;
  - DYNSUP_PORT: serves GET /health (503 until it is registered and has done its first GPU step, 200
    after, JSON with its stats);
  - NATS_SERVER / ETCD_ENDPOINTS: registers itself in etcd under a lease
    (dynsup-gpu/<cluster>/workers/<role>/<worker>, value JSON with its GPU's UUID) and publishes a
    heartbeat on NATS every 2 s (dynsup-gpu.<cluster>.heartbeat.<role>.<worker>). Both through raw
    TCP / HTTP (dynsup_cp.py): nothing needs installing. Unreachable at start (within
    DEMO_CONNECT_DEADLINE, 15 s) or lost later: exit non-zero, so dynsup restarts it.
  - SIGTERM/SIGINT: stops the loop, revokes its etcd lease (deregisters), frees the GPU, exits 0.
  - DEMO_FAMILY (comma-separated replica names, or "all"): a worker named there also starts a family, the
    way MPI launchers and daemonizing libraries do: a child (same process group) and, from the child, a
    `setsid` grandchild (own session and process group), each holding DEMO_FAMILY_GIB (default 1) GiB
    on the worker's GPU and writing to the leader's stdout. The leader never waits for or stops them:
    only dynsup can (scripts/gpu/gpu_check.py kills the leader with -9 and looks for them).

    python3 scripts/gpu/demo_worker.py --role holder [--hold-gib 1] [--spawn-grandchild]
  is one member of such a family: it holds the memory (on the CPU, at most --cpu-kv-mib, when there is no
  GPU), prints a line every --report-every seconds, exits 0 on SIGTERM/SIGINT; nothing else.

Exit codes: 0 stopped by signal, 2 usage, 3 control plane unreachable, 4 no GPU, 5 control plane lost,
6 health port busy, 1 anything else.

Without PyTorch (or without a GPU, when allowed) it falls back to numpy, or to pure Python, on the CPU
with a small buffer, so the script can be exercised on a machine with no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dynsup_cp import ControlPlaneError, Etcd, Nats, connect_with_deadline, token  # noqa: E402

EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NO_GPU, EXIT_CP_LOST, EXIT_PORT = 2, 3, 4, 5, 6
LEASE_TTL_S = 10
HEARTBEAT_S = 2.0

WORKER = os.environ.get("DYNSUP_WORKER") or f"demo-{os.getpid()}"


def log(msg: str, **kv) -> None:
    t = time.strftime("%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
    extra = (" " + json.dumps(kv, separators=(",", ":"))) if kv else ""
    print(f"{t} {WORKER} {msg}{extra}", flush=True)


def die(code: int, msg: str) -> None:
    log(f"FATAL: {msg}")
    sys.stdout.flush()
    os._exit(code)


def sig(x: float) -> float:
    """Round for display: 1 decimal from 10 up, 3 significant digits below."""
    return round(x, 1) if x >= 10 else float(f"{x:.3g}")


def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


# --------------------------------------------------------------------------------------------------
# Compute backends


class TorchBackend:
    """Prefill/decode work on cuda:0 (the first GPU in CUDA_VISIBLE_DEVICES), or on the CPU (fallback)."""

    def __init__(self, torch, device: str, kv_bytes: int, hidden: int, tokens: int, batch: int, ctx: int):
        self.t = torch
        self.device = device
        self.dtype = torch.bfloat16 if device == "cuda" else torch.float32
        esize = 2 if device == "cuda" else 4
        self.hidden = hidden
        self.slots = max(tokens, ctx, kv_bytes // (hidden * esize))
        self.tokens, self.batch, self.ctx = tokens, batch, min(ctx, self.slots)
        g = torch.Generator(device=device).manual_seed(1234 + int(os.environ.get("DYNSUP_REPLICA_INDEX", "0") or 0))
        # The KV cache: [slots, hidden]. Filled (not just reserved) so its memory is really in use.
        self.kv = torch.empty((self.slots, hidden), dtype=self.dtype, device=device)
        self.kv.normal_(0, 0.02, generator=g)
        self.w = torch.randn((hidden, hidden), dtype=self.dtype, device=device, generator=g) / hidden**0.5
        self.x = torch.randn((tokens, hidden), dtype=self.dtype, device=device, generator=g)
        self.q = torch.randn((batch, hidden), dtype=self.dtype, device=device, generator=g)
        self.off = 0
        self.sync()

    def sync(self) -> None:
        if self.device == "cuda":
            self.t.cuda.synchronize()

    def prefill(self, n: int) -> float:
        """n batched GEMMs of [tokens, hidden] x [hidden, hidden], each written into the KV ring. Returns FLOPs."""
        for _ in range(n):
            out = self.x @ self.w
            if self.off + self.tokens > self.slots:
                self.off = 0
            self.kv[self.off : self.off + self.tokens].copy_(out)
            self.off += self.tokens
        self.sync()
        return 2.0 * self.tokens * self.hidden * self.hidden * n

    def decode(self, steps: int) -> float:
        """steps decode steps for `batch` sequences: projection + attention over ctx KV slots. Returns tokens."""
        t = self.t
        h = self.q
        for _ in range(steps):
            h = h @ self.w
            if self.off + self.ctx > self.slots:
                self.off = 0
            kv = self.kv[self.off : self.off + self.ctx]
            p = t.softmax((h @ kv.T).float() * self.hidden**-0.5, dim=-1).to(self.dtype)
            h = p @ kv
            h = h / (h.float().norm(dim=-1, keepdim=True).to(self.dtype) + 1e-3)
            self.off += 1
        self.q = h
        self.sync()
        return float(self.batch * steps)

    def flops_per_decode_token(self) -> float:
        return 2.0 * self.hidden * self.hidden + 4.0 * self.ctx * self.hidden

    def memory(self) -> dict:
        if self.device != "cuda":
            return {"kv_mib": round(self.kv.numel() * self.kv.element_size() / 2**20)}
        free, total = self.t.cuda.mem_get_info()
        return {
            "kv_mib": round(self.kv.numel() * self.kv.element_size() / 2**20),
            "allocated_mib": round(self.t.cuda.memory_allocated() / 2**20),
            "reserved_mib": round(self.t.cuda.memory_reserved() / 2**20),
            "device_used_mib": round((total - free) / 2**20),
            "device_total_mib": round(total / 2**20),
        }

    def release(self) -> None:
        del self.kv, self.w, self.x, self.q
        if self.device == "cuda":
            self.t.cuda.empty_cache()


class NumpyBackend:
    """CPU fallback without PyTorch."""

    def __init__(self, np, kv_bytes: int, hidden: int, tokens: int, batch: int, ctx: int):
        self.np = np
        rng = np.random.default_rng(1234)
        self.hidden = hidden
        self.slots = max(tokens, ctx, kv_bytes // (hidden * 4))
        self.tokens, self.batch, self.ctx = tokens, batch, min(ctx, self.slots)
        self.kv = rng.standard_normal((self.slots, hidden), dtype=np.float32) * 0.02
        self.w = rng.standard_normal((hidden, hidden), dtype=np.float32) / hidden**0.5
        self.x = rng.standard_normal((tokens, hidden), dtype=np.float32)
        self.q = rng.standard_normal((batch, hidden), dtype=np.float32)
        self.off = 0

    def prefill(self, n: int) -> float:
        for _ in range(n):
            out = self.x @ self.w
            if self.off + self.tokens > self.slots:
                self.off = 0
            self.kv[self.off : self.off + self.tokens] = out
            self.off += self.tokens
        return 2.0 * self.tokens * self.hidden * self.hidden * n

    def decode(self, steps: int) -> float:
        np = self.np
        h = self.q
        for _ in range(steps):
            h = h @ self.w
            if self.off + self.ctx > self.slots:
                self.off = 0
            kv = self.kv[self.off : self.off + self.ctx]
            s = (h @ kv.T) * self.hidden**-0.5
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            h = (s / s.sum(axis=-1, keepdims=True)) @ kv
            h = h / (np.linalg.norm(h, axis=-1, keepdims=True) + 1e-3)
            self.off += 1
        self.q = h
        return float(self.batch * steps)

    def flops_per_decode_token(self) -> float:
        return 2.0 * self.hidden * self.hidden + 4.0 * self.ctx * self.hidden

    def memory(self) -> dict:
        return {"kv_mib": round(self.kv.nbytes / 2**20)}

    def release(self) -> None:
        del self.kv


class PythonBackend:
    """Last resort (no numpy either): tiny pure-Python matrix products, so the control flow still runs."""

    def __init__(self, kv_bytes: int, hidden: int = 32, tokens: int = 32, batch: int = 4, ctx: int = 32):
        self.hidden, self.tokens, self.batch, self.ctx = hidden, tokens, batch, ctx
        self.kv = bytearray(kv_bytes)
        self.w = [[((i * 31 + j * 17) % 13 - 6) / 13 for j in range(hidden)] for i in range(hidden)]

    def _mm(self, rows: int) -> None:
        w, n = self.w, self.hidden
        v = [1.0] * n
        for _ in range(rows):
            v = [sum(v[k] * w[k][j] for k in range(n)) / n for j in range(n)]

    def prefill(self, n: int) -> float:
        for _ in range(n):
            self._mm(self.tokens)
        return 2.0 * self.tokens * self.hidden * self.hidden * n

    def decode(self, steps: int) -> float:
        for _ in range(steps):
            self._mm(self.batch)
        return float(self.batch * steps)

    def flops_per_decode_token(self) -> float:
        return 2.0 * self.hidden * self.hidden

    def memory(self) -> dict:
        return {"kv_mib": round(len(self.kv) / 2**20)}

    def release(self) -> None:
        self.kv = bytearray()


def make_backend(args) -> tuple[object, dict]:
    """Pick the backend; returns (backend, facts about the device for logs, etcd and /health)."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    facts: dict = {"cuda_visible_devices": cvd}
    torch = None
    if args.device != "cpu":
        try:
            import torch as _torch  # noqa: PLC0415

            torch = _torch
        except ImportError:
            torch = None
    use_cuda = bool(torch is not None and args.device != "cpu" and torch.cuda.is_available())
    if args.device == "cuda" and not use_cuda:
        die(EXIT_NO_GPU, f"--device cuda but no GPU is visible (CUDA_VISIBLE_DEVICES={cvd!r}, torch={'yes' if torch else 'no'})")
    if not use_cuda and not args.allow_cpu:
        die(EXIT_NO_GPU, f"no GPU visible (CUDA_VISIBLE_DEVICES={cvd!r}, torch={'yes' if torch else 'missing'}); "
                         "pass --allow-cpu or DEMO_ALLOW_CPU=1 to run on the CPU")
    if use_cuda:
        if cvd is None:
            log("WARNING: CUDA_VISIBLE_DEVICES is not set: every GPU is visible (not started by dynsup?)")
        props = torch.cuda.get_device_properties(0)
        uuid = str(getattr(props, "uuid", "") or "")
        if uuid and not uuid.startswith("GPU-"):
            uuid = f"GPU-{uuid}"
        facts.update(
            device="cuda",
            visible_gpus=torch.cuda.device_count(),
            gpu_name=props.name,
            gpu_uuid=uuid or None,
            gpu_pci_bus_id=getattr(props, "pci_bus_id", None),
            gpu_total_mib=round(props.total_memory / 2**20),
            torch=torch.__version__,
        )
        torch.backends.cuda.matmul.allow_tf32 = True
        kv = int(args.kv_gib * 2**30)
        be = TorchBackend(torch, "cuda", kv, args.hidden, args.tokens, args.batch, args.ctx)
        return be, facts
    kv = int(min(args.kv_gib * 2**30, args.cpu_kv_mib * 2**20))
    hidden, tokens, batch, ctx = min(args.hidden, 256), min(args.tokens, 256), min(args.batch, 16), min(args.ctx, 512)
    if torch is not None:
        facts.update(device="cpu", backend="torch", torch=torch.__version__)
        return TorchBackend(torch, "cpu", kv, hidden, tokens, batch, ctx), facts
    try:
        import numpy as np  # noqa: PLC0415

        facts.update(device="cpu", backend="numpy")
        return NumpyBackend(np, kv, hidden, tokens, batch, ctx), facts
    except ImportError:
        facts.update(device="cpu", backend="python")
        return PythonBackend(kv), facts


# --------------------------------------------------------------------------------------------------
# Health endpoint


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.ready = False
        self.info: dict = {}
        self.stats: dict = {}

    def snapshot(self) -> dict:
        with self.lock:
            return {"status": "ok" if self.ready else "starting", "worker": WORKER, "pid": os.getpid(), **self.info, "stats": dict(self.stats)}


def serve_health(state: State, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            snap = state.snapshot()
            if self.path.split("?")[0] in ("/health", "/healthz", "/"):
                code = 200 if snap["status"] == "ok" else 503
            elif self.path.startswith("/stats"):
                code = 200
            else:
                code, snap = 404, {"error": "not found"}
            body = (json.dumps(snap) + "\n").encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):  # quiet: dynsup's health checks poll every second
            pass

    try:
        srv = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        die(EXIT_PORT, f"cannot serve /health on {host}:{port}: {e}")
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="health", daemon=True).start()
    return srv


# --------------------------------------------------------------------------------------------------
# Family: a child and a setsid grandchild holding GPU memory (the orphans of issue 12)


def family_wanted() -> bool:
    names = [x.strip() for x in os.environ.get("DEMO_FAMILY", "").split(",") if x.strip()]
    return "all" in names or WORKER in names


def start_family(gib: float) -> None:
    """Start the child (which starts the setsid grandchild). Inherits stdout/stderr; never waited for."""
    import subprocess  # noqa: PLC0415

    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", "holder", "--hold-gib", str(gib), "--spawn-grandchild"],
                             stdin=subprocess.DEVNULL)
    log("family: started child", pid=child.pid, hold_gib=gib)


def holder(args) -> int:
    """A family member: hold memory on the worker's GPU (or the CPU) until signalled."""
    import subprocess  # noqa: PLC0415

    kind = "child" if args.spawn_grandchild else "grandchild"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    buf = None
    where = "cpu"
    torch = None
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        try:
            import torch as _torch  # noqa: PLC0415

            torch = _torch if _torch.cuda.is_available() else None
        except ImportError:
            torch = None
    if torch is not None:
        buf = torch.empty(int(args.hold_gib * 2**30), dtype=torch.uint8, device="cuda")
        buf.fill_(1)
        torch.cuda.synchronize()
        where = f"cuda:0 ({torch.cuda.get_device_name(0)})"
        mib = round(buf.numel() / 2**20)
    else:
        n = int(min(args.hold_gib * 2**30, args.cpu_kv_mib * 2**20))
        buf = bytearray(b"\x01") * n  # written, so it is resident
        mib = round(n / 2**20)
    try:
        log(f"family {kind} holding {mib} MiB on {where} [CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}]",
            pid=os.getpid(), ppid=os.getppid(), pgid=os.getpgid(0), sid=os.getsid(0))
    except OSError:
        pass
    if args.spawn_grandchild:
        # start_new_session: setsid() in the new process: it leaves our process group and session.
        gc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", "holder", "--hold-gib", str(args.hold_gib)],
                              stdin=subprocess.DEVNULL, start_new_session=True)
        log("family: started setsid grandchild", pid=gc.pid)
    n = 0
    while not stop.wait(max(0.5, args.report_every)):
        n += 1
        try:
            log(f"family {kind} still holding {mib} MiB", beat=n)
        except OSError:
            pass  # stdout gone: keep holding, as a real orphan would
    del buf
    return 0


# --------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=["prefill", "decode", "holder"], required=True)
    ap.add_argument("--hold-gib", type=float, default=env_float("DEMO_FAMILY_GIB", 1.0), help="holder / family: GiB each member holds")
    ap.add_argument("--spawn-grandchild", action="store_true", help="holder: also start a setsid grandchild holder")
    ap.add_argument("--kv-gib", type=float, default=env_float("DEMO_KV_GIB", 4.0), help="KV cache size on the GPU (GiB; env DEMO_KV_GIB)")
    ap.add_argument("--cpu-kv-mib", type=float, default=64, help="KV cache cap on the CPU fallback (MiB)")
    ap.add_argument("--report-every", type=float, default=env_float("DEMO_REPORT_EVERY", 5.0), help="seconds between stats lines")
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--tokens", type=int, default=8192, help="prefill: tokens per GEMM (batch x sequence)")
    ap.add_argument("--batch", type=int, default=64, help="decode: sequences per step")
    ap.add_argument("--ctx", type=int, default=4096, help="decode: KV slots each step attends over")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--allow-cpu", action="store_true", default=os.environ.get("DEMO_ALLOW_CPU", "") in ("1", "true", "yes"))
    ap.add_argument("--duty", type=float, default=env_float("DEMO_DUTY", 1.0), help="fraction of time spent computing (0-1]")
    ap.add_argument("--host", default=os.environ.get("DEMO_HEALTH_HOST", "127.0.0.1"), help="address /health listens on")
    ap.add_argument("--port", type=int, default=int(os.environ.get("DYNSUP_PORT") or 0), help="health port (default DYNSUP_PORT)")
    args = ap.parse_args()
    if args.role == "holder":
        return holder(args)
    role = args.role
    cluster = os.environ.get("DYNSUP_CLUSTER", "local")
    nats_url, etcd_eps = os.environ.get("NATS_SERVER"), os.environ.get("ETCD_ENDPOINTS")
    if not nats_url or not etcd_eps:
        die(EXIT_USAGE, "NATS_SERVER and ETCD_ENDPOINTS must be set (dynsup sets them)")
    if not 0 < args.duty <= 1:
        die(EXIT_USAGE, "--duty must be in (0, 1]")

    stop = threading.Event()

    def on_signal(sig, _frame):
        if not stop.is_set():
            log(f"{signal.Signals(sig).name}: stopping")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    state = State()
    if args.port:
        serve_health(state, args.host, args.port)

    # 1. The control plane, before touching the GPU: a worker that cannot register is useless.
    deadline = env_float("DEMO_CONNECT_DEADLINE", 15.0)
    try:
        nc = connect_with_deadline(lambda: Nats(nats_url, WORKER), f"NATS at {nats_url}", deadline, log)
        etcd = Etcd(etcd_eps)
        connect_with_deadline(etcd.status, f"etcd at {etcd_eps}", deadline, log)
    except ControlPlaneError as e:
        die(EXIT_UNREACHABLE, str(e))
    log("connected", nats=nats_url, etcd=etcd_eps, nats_server=nc.info.get("server_name"))

    # 2. The GPU.
    t0 = time.monotonic()
    backend, facts = make_backend(args)
    mem = backend.memory()
    log(f"{role} worker on {facts.get('gpu_name') or facts.get('device')}", init_s=round(time.monotonic() - t0, 2), **facts, **mem)
    if family_wanted():
        start_family(args.hold_gib)

    # 3. Register (etcd, under a lease) and heartbeat (NATS).
    key = f"dynsup-gpu/{token(cluster)}/workers/{role}/{token(WORKER)}"
    subject = f"dynsup-gpu.{token(cluster)}.heartbeat.{role}.{token(WORKER)}"
    reg = {"worker": WORKER, "role": role, "pid": os.getpid(), "host": socket.gethostname(), "port": args.port or None,
           "started": time.time(), **facts, "kv_mib": mem.get("kv_mib")}
    lost = {"why": ""}
    try:
        lease = etcd.grant(LEASE_TTL_S)
        etcd.put(key, json.dumps(reg), lease)
    except ControlPlaneError as e:
        die(EXIT_UNREACHABLE, f"cannot register in etcd: {e}")
    log("registered", key=key, lease_ttl_s=LEASE_TTL_S)
    lease_box = {"id": lease}

    def keepalive():
        failing_since = None
        while not stop.wait(LEASE_TTL_S / 3):
            try:
                if etcd.keepalive(lease_box["id"]) <= 0:  # lease gone (etcd restarted without data): again
                    lease_box["id"] = etcd.grant(LEASE_TTL_S)
                    etcd.put(key, json.dumps(reg), lease_box["id"])
                    log("re-registered (lease was lost)")
                failing_since = None
            except ControlPlaneError as e:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > LEASE_TTL_S:
                    lost["why"] = f"etcd unreachable for more than {LEASE_TTL_S}s: {e}"
                    stop.set()
                    return

    def heartbeat():
        n = 0
        while not stop.wait(HEARTBEAT_S):
            n += 1
            with state.lock:
                payload = {"worker": WORKER, "role": role, "seq": n, "t": time.time(), "gpu_uuid": facts.get("gpu_uuid"), **state.stats}
            try:
                nc.publish(subject, json.dumps(payload))
            except ControlPlaneError as e:
                lost["why"] = str(e)
                stop.set()
                return

    threading.Thread(target=keepalive, name="etcd-keepalive", daemon=True).start()
    threading.Thread(target=heartbeat, name="nats-heartbeat", daemon=True).start()
    with state.lock:
        state.info = {"role": role, **facts}

    # 4. The work loop.
    iters = 0
    work = 0.0
    window_t, window_work = time.monotonic(), 0.0
    busy = 0.0
    while not stop.is_set():
        if nc.lost.is_set():
            lost["why"] = nc.lost_reason
            break
        t1 = time.monotonic()
        done = backend.prefill(4) if role == "prefill" else backend.decode(32)
        dt = time.monotonic() - t1
        busy += dt
        work += done
        window_work += done
        iters += 1
        if args.duty < 1:
            time.sleep(dt * (1 - args.duty) / args.duty)
        if iters == 1:
            with state.lock:
                state.ready = True
            log("ready: first step done", step_ms=round(dt * 1000, 1))
            window_t, window_work = time.monotonic(), 0.0  # the first step (warm-up) is not a sample
            continue
        now = time.monotonic()
        if now - window_t >= args.report_every:
            el = now - window_t
            if role == "prefill":
                stats = {"tflops": sig(window_work / el / 1e12)}
                head = f"prefill {stats['tflops']} TFLOP/s"
            else:
                tps = window_work / el
                stats = {"tokens_per_s": round(tps), "tflops": sig(tps * backend.flops_per_decode_token() / 1e12)}
                head = f"decode {stats['tokens_per_s']} tokens/s ({stats['tflops']} TFLOP/s)"
            stats.update(backend.memory(), iters=iters)
            with state.lock:
                state.stats = stats
            log(f"{head} on {facts.get('gpu_name') or facts.get('device')} [CUDA_VISIBLE_DEVICES={facts['cuda_visible_devices']}]", **stats)
            window_t, window_work = now, 0.0

    # 5. Stop: deregister, free, exit.
    with state.lock:
        state.ready = False
    if lost["why"]:
        die(EXIT_CP_LOST, f"control plane lost: {lost['why']}")
    try:
        etcd.revoke(lease_box["id"])
        nc.publish(f"dynsup-gpu.{token(cluster)}.bye.{role}.{token(WORKER)}", json.dumps({"worker": WORKER}))
        nc.close()
    except ControlPlaneError as e:
        log(f"deregistration failed (the lease expires by itself): {e}")
    backend.release()
    log("stopped", iters=iters)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        die(1, f"{type(e).__name__}: {e}")
