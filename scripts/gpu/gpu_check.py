#!/usr/bin/env python3
"""The checks of scripts/gpu/gpu-check.sh (which sets up node, nats-server and etcd first, then runs this).

Brings up clusters/gpu-local.yaml with `dynsup up -d` and checks with nvidia-smi, from the outside:
  1. pinning    every replica's processes (its process group: pgid == the replica's pid, and descendants
                that left it: same DYNSUP_TOKEN in their environment) run on exactly the GPUs dynsup
                assigned it (CUDA_VISIBLE_DEVICES, with CUDA_DEVICE_ORDER=PCI_BUS_ID, is the nvidia-smi
                index), replicas without GPUs on none, and no two replicas share a GPU; each worker
                registered in etcd the UUID of the GPU it saw, and heartbeats on NATS
  2. kill -9    of one GPU replica's leader. That replica (the "family" one: DEMO_FAMILY, issue 12) has
                started a child and, from it, a `setsid` grandchild that holds the leader's stdout, each
                holding GPU memory (DEMO_FAMILY_GIB, default 1 GiB) on its GPU. The node agent must see the
                leader dead at once (status: not running with the old pid), restart it within the restart
                delay + a few seconds (new pid, restarts + 1), and the old child and grandchild must leave
                nvidia-smi with their memory freed; the replacement (and its new family) is on the same
                GPU; the other replicas are untouched
  3. down       leaves no compute process of ours, all GPU memory back to what it was before, no process
                left (workers, their families, agents, NATS, etcd, the supervisor)
  1b. telemetry  status --json / status / /metrics show per replica its GPUs' memory (as nvidia-smi says) and
                utilisation, no process of another on them; a stray CUDA process started on a replica's GPU is
                listed under its `others` (owner none), and gone once killed (issue 14)
  4. kill -9 of the supervisor (after a second `up -d`): the node agents keep the workers for the lease
                (so a new `up` could adopt them), then stop them by themselves, families included, GPUs
                freed; `dynsup status` says not running; `down` cleans up

Prints a table per phase (replica, pid, assigned GPU, observed GPU, memory MiB, result) and PASS/FAIL per
check; exit 0 only if every check passes. Writes gpu-check.txt, gpu-check.json and the cluster's logs
(gpu-check-logs.tar.gz) to $OUT when it is set.

GPU_CHECK_FAKE=1: no GPU needed: nvidia-smi is replaced by the processes' own CUDA_VISIBLE_DEVICES and
RSS (workers run on the CPU), so the dynsup side of every check runs anywhere.
Other knobs: GPU_CHECK_GPUS (use this many GPUs, default all), GPU_CHECK_KV_GIB (KV cache per worker,
default 4), GPU_CHECK_FAMILY_GIB (GPU memory per family member, default 1), GPU_CHECK_UP_TIMEOUT (seconds,
default 300), GPU_CHECK_CGROUP=off (the agents use the process-group + token fallback instead of cgroups).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "clusters/gpu-local.yaml"
FAKE = os.environ.get("GPU_CHECK_FAKE", "") == "1"
OUT = os.environ.get("OUT") or ""
UP_TIMEOUT = int(os.environ.get("GPU_CHECK_UP_TIMEOUT") or 300)
LEASE_S = 10  # clusters/gpu-local.yaml `lease:`
RESTART_DELAY_S = 2.2  # clusters/gpu-local.yaml `restart.initialDelay` 2s, + the default jitter (10%)
SEEN_DEAD_S = 2.0  # "at once": status no longer shows the killed leader as running within this
RESTART_SLACK_S = 3.0  # the new pid in status within RESTART_DELAY_S + this
STATE_DIR = REPO / "clusters/.state/gpu-local"
FRONTEND = "http://127.0.0.1:8100"

T0 = time.monotonic()
transcript: list[str] = []
checks: list[dict] = []
tables: list[dict] = []
facts: dict = {"fake": FAKE}


def say(msg: str = "") -> None:
    line = msg if not msg or msg.startswith("  ") or msg.startswith("|") else f"[{time.monotonic() - T0:6.1f}s] {msg}"
    print(line, flush=True)
    transcript.append(line)


def check(name: str, ok: bool, detail: str) -> bool:
    checks.append({"check": name, "result": "PASS" if ok else "FAIL", "detail": detail})
    say(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return ok


def render(headers: list[str], rows: list[list[str]]) -> list[str]:
    w = [max(len(h), *(len(str(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(cells)) + " |"  # noqa: E731
    return [fmt(headers), "|" + "|".join("-" * (x + 2) for x in w) + "|", *(fmt(r) for r in rows)]


def table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    tables.append({"title": title, "headers": headers, "rows": rows})
    say(title)
    for line in render(headers, rows):
        say(line)


# --------------------------------------------------------------------------------------------------
# dynsup


def env_for_cluster(n_gpus: int) -> dict:
    """Fill the file's ${...}: one GPU per replica, prefill gets the odd one; 1 GPU: decode on the CPU."""
    e = dict(os.environ)
    e.update(
        GPUS=str(n_gpus),
        PREFILL_REPLICAS=str(max(1, (n_gpus + 1) // 2)),
        DECODE_REPLICAS=str(max(1, n_gpus // 2)),
        PREFILL_GPUS="1",
        DECODE_GPUS="1" if n_gpus >= 2 else "0",
        DEMO_ALLOW_CPU="1" if (FAKE or n_gpus < 2) else "0",
        DEMO_KV_GIB=os.environ.get("GPU_CHECK_KV_GIB") or "4",
        DEMO_REPORT_EVERY="3",
        # The replica whose leader starts a child and a setsid grandchild holding GPU memory (issue 12).
        DEMO_FAMILY=family_replica(n_gpus),
        DEMO_FAMILY_GIB=os.environ.get("GPU_CHECK_FAMILY_GIB") or "1",
    )
    if os.environ.get("GPU_CHECK_CGROUP") == "off":
        e["DYNSUP_AGENT_CGROUP"] = "off"  # the agents inherit it from the supervisor
    return e


def family_replica(n_gpus: int) -> str:
    """The killed replica: the last GPU replica (decode-0 on 2 GPUs; prefill-0 on 1, decode is on the CPU)."""
    return "decode-0" if n_gpus >= 2 else "prefill-0"


DYN_ENV: dict = dict(os.environ)


def dynsup(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["node", "bin/dynsup.js", *args], cwd=REPO, env=DYN_ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, 124, e.stdout or "", f"timed out after {timeout}s")


def status() -> dict:
    r = dynsup("status", CLUSTER, "--json", timeout=30)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {"running": False, "replicas": [], "error": (r.stderr or r.stdout)[-500:]}


def replicas(st: dict) -> dict[str, dict]:
    return {r["name"]: r for r in st.get("replicas", [])}


def wait_ready(timeout: float, want_pids_not: dict[str, int] | None = None) -> dict:
    """Poll status until every replica is ready (and, for names in want_pids_not, has a new pid)."""
    end = time.monotonic() + timeout
    st: dict = {}
    while time.monotonic() < end:
        st = status()
        reps = replicas(st)
        if reps and all(r["state"] == "ready" and r.get("pid") for r in reps.values()):
            if not want_pids_not or all(reps[n]["pid"] != p for n, p in want_pids_not.items()):
                return st
        time.sleep(0.5)
    return st


# --------------------------------------------------------------------------------------------------
# Processes and GPUs


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, pgid) of a live process, None if gone."""
    try:
        s = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = s[s.rindex(") ") + 2 :].split()
    return f[0], int(f[2])


def pgid(pid: int) -> int | None:
    st = proc_stat(pid)
    return None if st is None or st[0] == "Z" else st[1]


def proc_env(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def ours(pid: int) -> bool:
    """A process of this cluster: a worker or anything it started (DYNSUP_CLUSTER=gpu-local in its
    environment, inherited through setsid), a demo worker or family member by name, the node agents
    (`node .../dist/agent/dynsup-agent.mjs serve <stateDir>/run/...`), the supervisor, NATS/etcd."""
    st = proc_stat(pid)
    if st is None or st[0] == "Z":
        return False
    c = cmdline(pid)
    return ("scripts/gpu/demo_worker.py" in c or "scripts/gpu/frontend.py" in c or str(STATE_DIR) in c
            or ("dynsup-agent" in c and "gpu-local" in c)
            or (CLUSTER in c and "bin/dynsup.js" in c and " up " in f" {c} ")
            or proc_env(pid).get("DYNSUP_CLUSTER") == "gpu-local")


def leftovers() -> list[str]:
    """Processes of this cluster still alive (see ours())."""
    me = os.getpid()
    return [f"{pid}:{cmdline(pid)[:100]}" for pid in all_pids() if pid != me and ours(pid)]


def proc_signals(pid: int) -> str:
    """Signal masks, state and each thread's wait channel, from /proc (why a process has not stopped)."""
    try:
        st = {k: v.strip() for k, v in (l.split(":", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in l)}
        threads = []
        for t in sorted(Path(f"/proc/{pid}/task").iterdir()):
            try:
                threads.append(f"{t.name}:{(t / 'wchan').read_text() or '-'}:{(t / 'stat').read_text().rsplit(')', 1)[1].split()[0]}")
            except OSError:
                pass
        return (f"State {st.get('State')} SigPnd {st.get('SigPnd')} ShdPnd {st.get('ShdPnd')} SigBlk {st.get('SigBlk')} "
                f"SigIgn {st.get('SigIgn')} SigCgt {st.get('SigCgt')} threads {' '.join(threads)}")
    except OSError as e:
        return f"/proc: {e}"


def token_of(pid: int) -> str:
    """The DYNSUP_TOKEN the agent gave this launch of a replica ('' if unreadable); descendants inherit it."""
    return proc_env(pid).get("DYNSUP_TOKEN", "") if pid else ""


def members(leader: int, token: str) -> list[int]:
    """Live processes of one launch of a replica: its process group, and whoever carries its token."""
    out = []
    for pid in all_pids():
        st = proc_stat(pid)
        if st is None or st[0] == "Z":
            continue
        if st[1] == leader or (token and proc_env(pid).get("DYNSUP_TOKEN") == token):
            out.append(pid)
    return sorted(out)


def describe(pid: int, leader: int) -> str:
    """leader / child / setsid grandchild (by process group and session), for the tables."""
    try:
        pg, sid = os.getpgid(pid), os.getsid(pid)
    except OSError:
        return "gone"
    if pid == leader:
        return "leader"
    if pg == leader:
        return "child (same process group)"
    return f"setsid descendant (pgid {pg}, sid {sid})"


class Smi:
    """nvidia-smi, or (FAKE) the same answers derived from the demo workers' own env and RSS."""

    def __init__(self, n_fake: int):
        self.n_fake = n_fake

    def gpus(self) -> list[dict]:
        if FAKE:
            used = {i: 0 for i in range(self.n_fake)}
            for a in self.apps():
                used[a["index"]] = used.get(a["index"], 0) + a["used"]
            return [{"index": i, "uuid": f"GPU-fake-{i}", "name": "fake GPU (CPU)", "used": used[i], "total": 0} for i in range(self.n_fake)]
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name,memory.used,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        gs = []
        for line in out.strip().splitlines():
            i, uuid, name, used, total = [x.strip() for x in line.split(",")]
            gs.append({"index": int(i), "uuid": uuid, "name": name, "used": num(used), "total": num(total)})
        return gs

    def apps(self) -> list[dict]:
        if FAKE:
            apps = []
            for pid in all_pids():
                if "scripts/gpu/demo_worker.py" not in cmdline(pid) or pgid(pid) is None:
                    continue
                cvd = proc_env(pid).get("CUDA_VISIBLE_DEVICES", "")
                if not cvd:
                    continue
                try:
                    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20
                except (OSError, IndexError):
                    continue
                idx = int(cvd.split(",")[0])
                apps.append({"pid": pid, "uuid": f"GPU-fake-{idx}", "index": idx, "used": rss})
            return apps
        by_uuid = {g["uuid"]: g["index"] for g in self.gpus()}
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        apps = []
        for line in out.strip().splitlines():
            if not line.strip() or "No running" in line:
                continue
            pid, uuid, used = [x.strip() for x in line.split(",")]
            apps.append({"pid": int(pid), "uuid": uuid, "index": by_uuid.get(uuid, -1), "used": num(used)})
        return apps

    def raw_apps(self) -> str:
        if FAKE:
            return "\n".join(f"{a['pid']}, {a['uuid']}, {a['used']} MiB (fake: RSS)" for a in self.apps())
        return subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv"],
                              capture_output=True, text=True, timeout=30).stdout.strip()


def num(s: str) -> int:
    try:
        return int(float(s))
    except ValueError:
        return 0


def observe(smi: Smi, reps: dict[str, dict]) -> dict[str, dict]:
    """Per replica: the GPU indices its processes (process group, or its launch's DYNSUP_TOKEN) are on and
    the memory they use there."""
    apps = smi.apps()
    obs = {n: {"gpus": set(), "used": 0, "pids": set()} for n in reps}
    owner = {r["pid"]: n for n, r in reps.items() if r.get("pid")}
    by_token = {t: n for n, r in reps.items() if r.get("pid") and (t := token_of(r["pid"]))}
    for a in apps:
        g = pgid(a["pid"])
        n = owner.get(g) or owner.get(a["pid"]) or by_token.get(token_of(a["pid"]))
        if n:
            obs[n]["gpus"].add(a["index"])
            obs[n]["used"] += a["used"]
            obs[n]["pids"].add(a["pid"])
    return obs


def fmt_gpus(g) -> str:
    return ",".join(str(x) for x in sorted(g)) if g else "-"


def wait_on_gpus(smi: Smi, timeout: float, family: str = "") -> tuple[dict, dict]:
    """Until every replica with GPUs shows up in nvidia-smi (a ready worker has allocated; this is a margin),
    the family replica with its leader, child and grandchild (3 processes)."""
    end = time.monotonic() + timeout
    while True:
        reps = replicas(status())
        obs = observe(smi, reps)
        if all(len(obs[n]["pids"]) >= (3 if n == family else 1) or not r["gpus"] for n, r in reps.items()) or time.monotonic() > end:
            return reps, obs
        time.sleep(0.5)


def frontend_workers() -> dict:
    try:
        with urllib.request.urlopen(f"{FRONTEND}/workers", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError) as e:
        return {"error": str(e), "registered": {}, "heartbeats": {}}


def last_stats_line(replica: str) -> str:
    p = REPO / "clusters/.state/gpu-local/logs" / f"{replica}.log"
    try:
        lines = [ln for ln in p.read_text(errors="replace").splitlines() if "TFLOP/s" in ln or "tokens/s" in ln or " on cpu" in ln]
    except OSError:
        return ""
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------------------------


def pinning_phase(smi: Smi, gpus_by_index: dict, title: str, family: str) -> tuple[dict, dict, bool]:
    reps, obs = wait_on_gpus(smi, 90, family)
    rows, ok_pin, seen = [], True, {}
    for n, r in reps.items():
        o = obs[n]
        env_cvd = proc_env(r["pid"]).get("CUDA_VISIBLE_DEVICES", "?") if r.get("pid") else "?"
        assigned = set(r["gpus"])
        good = o["gpus"] == assigned and env_cvd == ",".join(str(g) for g in r["gpus"])
        ok_pin &= good
        for g in o["gpus"]:
            seen.setdefault(g, []).append(n)
        rows.append([n, str(r.get("pid")), r["state"], r.get("containment", "?"), env_cvd or '""', fmt_gpus(assigned), fmt_gpus(o["gpus"]),
                     str(len(o["pids"])) if o["gpus"] else "-", str(o["used"]) if o["gpus"] else "-", "PASS" if good else "FAIL"])
    table(title, ["replica", "pid", "state", "containment", "CUDA_VISIBLE_DEVICES", "assigned GPU", "observed GPU", "GPU processes",
                  "memory MiB", "result"], rows)
    shared = {g: ns for g, ns in seen.items() if len(ns) > 1}
    return reps, obs, ok_pin and not shared


def telemetry_phase(smi: Smi, reps: dict[str, dict]) -> None:
    """GPU telemetry (issue 14): each node agent samples nvidia-smi (one call pair per node per
    metrics.gpuInterval, default 5s) and status --json, status and /metrics show per replica its GPUs' memory
    and utilisation and the compute processes on them that are not its own. Checked against nvidia-smi here;
    then a stray CUDA process started by this script on a replica's GPU must be listed as not its own, and
    gone from the list once it exits. FAKE (no nvidia-smi on PATH): no gpu field, no GPU columns."""
    gpu_reps = {k: x for k, x in reps.items() if x["gpus"]}
    if FAKE or not gpu_reps:
        st = status()
        text = dynsup("status", CLUSTER, timeout=30).stdout
        check("telemetry absent without nvidia-smi" if FAKE else "telemetry (no GPU replica)",
              all("gpu" not in r for r in st.get("replicas", [])) and "GPU MEM" not in text,
              "no `gpu` in status --json and no GPU MEM column" if all("gpu" not in r for r in st.get("replicas", [])) else "telemetry shown without nvidia-smi")
        return
    end = time.monotonic() + 30
    st: dict = {}
    while time.monotonic() < end:
        st = status()
        if all(replicas(st).get(k, {}).get("gpu") for k in gpu_reps):
            break
        time.sleep(1)
    # The agent's sample is up to one interval (5s) old, and a worker's memory still grows for a while after
    # it is ready (its family allocates later): compare until a sample agrees, for a few intervals at most.
    agree_by = time.monotonic() + 30
    while True:
        now = {g["index"]: g for g in smi.gpus()}
        off = [k for k, x in gpu_reps.items()
               if (replicas(st).get(k, {}).get("gpu") or {}).get("memoryUsedMiB") is None
               or abs(replicas(st)[k]["gpu"]["memoryUsedMiB"] - sum(now[i]["used"] for i in x["gpus"] if i in now))
               > max(512, sum(now[i]["used"] for i in x["gpus"] if i in now) // 10)]
        if not off or time.monotonic() > agree_by:
            break
        time.sleep(1)
        st = status()
    rows, bad = [], []
    for k, x in gpu_reps.items():
        g = replicas(st).get(k, {}).get("gpu")
        smi_used = sum(now[i]["used"] for i in x["gpus"] if i in now)
        if not g:
            bad.append(f"{k}: no gpu telemetry in status --json after 30s")
            rows.append([k, fmt_gpus(x["gpus"]), "-", str(smi_used), "-", "-"])
            continue
        if g.get("memoryUsedMiB") is None or abs(g["memoryUsedMiB"] - smi_used) > max(512, smi_used // 10):
            bad.append(f"{k}: telemetry says {g.get('memoryUsedMiB')} MiB used on GPU {fmt_gpus(x['gpus'])}, nvidia-smi {smi_used} MiB")
        # Its family (child, setsid grandchild: same DYNSUP_TOKEN) is its own, not listed.
        if g.get("others"):
            bad.append(f"{k}: processes listed as not its own: {g['others']}")
        rows.append([k, fmt_gpus(x["gpus"]), str(g.get("memoryUsedMiB")), str(smi_used), str(g.get("utilizationPct")), ", ".join(str(o["pid"]) for o in g.get("others", [])) or "-"])
    table("GPU telemetry in `dynsup status --json` vs nvidia-smi", ["replica", "GPUs", "telemetry MiB", "nvidia-smi MiB", "util %", "others"], rows)
    text = dynsup("status", CLUSTER, timeout=30).stdout
    if "GPU MEM" not in text:
        bad.append("`dynsup status` has no GPU MEM column")
    try:
        metrics = urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=10).read().decode()
    except OSError as e:
        metrics = ""
        bad.append(f"/metrics: {e}")
    for k in gpu_reps:
        if f'dynsup_replica_gpu_memory_used_bytes{{cluster="gpu-local",replica="{k}"' not in metrics:
            bad.append(f"/metrics: no dynsup_replica_gpu_memory_used_bytes for {k}")
    check("telemetry", not bad, "; ".join(bad) if bad else f"{len(gpu_reps)} GPU replicas: memory used as nvidia-smi says, no process of another on their GPUs; GPU columns in status, gauges in /metrics")

    # A stray CUDA process on the first GPU replica's GPU (a leak of an earlier run, another user's job).
    victim = sorted(gpu_reps)[0]
    gi = gpu_reps[victim]["gpus"][0]
    stray_env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gi), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    stray_env.pop("DYNSUP_TOKEN", None)
    stray = subprocess.Popen([sys.executable, "-c", "import torch, time; x = torch.empty(256 * 2**20, dtype=torch.uint8, device='cuda'); print('ok', flush=True); time.sleep(600)"],
                             env=stray_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        got = stray.stdout.readline().strip() if stray.stdout else ""
        listed = gone = None
        t = time.monotonic()
        while got == "ok" and time.monotonic() - t < 30:
            g = replicas(status()).get(victim, {}).get("gpu") or {}
            if any(o["pid"] == stray.pid and o.get("owner") is None for o in g.get("others", [])):
                listed = round(time.monotonic() - t, 1)
                break
            time.sleep(1)
    finally:
        os.killpg(stray.pid, signal.SIGKILL)
        stray.wait()
    t = time.monotonic()
    while listed is not None and time.monotonic() - t < 30:
        g = replicas(status()).get(victim, {}).get("gpu") or {}
        if not any(o["pid"] == stray.pid for o in g.get("others", [])):
            gone = round(time.monotonic() - t, 1)
            break
        time.sleep(1)
    check("telemetry: a stray process on a replica's GPU", got == "ok" and listed is not None and gone is not None,
          f"stray CUDA process pid {stray.pid} on GPU {gi} ({'started' if got == 'ok' else 'did not start: ' + repr(got)}): "
          f"listed under {victim}'s others after {listed}s, gone {gone}s after it was killed")


def main() -> int:
    global DYN_ENV
    os.chdir(REPO)
    say(f"dynsup GPU check ({'FAKE: no GPU, workers on the CPU' if FAKE else 'nvidia-smi'}) in {REPO}")
    build = REPO / "dist/BUILD"  # written by `scripts/gpu/gpu-check.sh pack`: which source dist/ was built from
    facts["dist"] = build.read_text().strip() if build.is_file() else "the checkout's own dist/ (not packed)"
    say(f"dynsup: {facts['dist']}")
    n_fake = int(os.environ.get("GPU_CHECK_GPUS") or 2)
    smi = Smi(n_fake)
    try:
        gpus = smi.gpus()
    except (OSError, subprocess.SubprocessError) as e:
        say(f"nvidia-smi failed: {e} (GPU_CHECK_FAKE=1 runs without a GPU)")
        return 2
    if os.environ.get("GPU_CHECK_GPUS"):
        gpus = gpus[: int(os.environ["GPU_CHECK_GPUS"])]
    n = len(gpus)
    if n == 0:
        say("no GPU found")
        return 2
    by_index = {g["index"]: g for g in gpus}
    facts.update(gpus=gpus, n_gpus=n, date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    if not FAKE:
        drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True).stdout.split("\n")[0].strip()
        facts["driver"] = drv
    table("GPUs", ["index", "name", "uuid", "memory used MiB", "total MiB"],
          [[str(g["index"]), g["name"], g["uuid"], str(g["used"]), str(g["total"])] for g in gpus])
    baseline_used = {g["index"]: g["used"] for g in gpus}
    baseline_apps = {a["pid"] for a in smi.apps()}
    if baseline_apps:
        say(f"note: compute processes before we start (ignored): {sorted(baseline_apps)}")
    DYN_ENV = env_for_cluster(n)
    family = DYN_ENV["DEMO_FAMILY"]
    layout = {k: DYN_ENV[k] for k in ("GPUS", "PREFILL_REPLICAS", "DECODE_REPLICAS", "PREFILL_GPUS", "DECODE_GPUS", "DEMO_ALLOW_CPU", "DEMO_KV_GIB",
                                      "DEMO_FAMILY", "DEMO_FAMILY_GIB", "DYNSUP_AGENT_CGROUP") if k in DYN_ENV}
    facts["layout"] = layout
    say("layout: " + " ".join(f"{k}={v}" for k, v in layout.items()))
    if n < 2:
        say("only 1 GPU: prefill-0 gets GPU 0, decode-0 gets no GPU (empty CUDA_VISIBLE_DEVICES) and runs on the CPU")

    dynsup("down", CLUSTER, timeout=120)  # anything a previous run left
    v = dynsup("validate", CLUSTER)
    for line in (v.stdout + v.stderr).strip().splitlines():
        say(f"  {line}")
    if v.returncode != 0:
        check("validate", False, "dynsup validate failed")
        return finish()

    def gpu_used(i: int) -> int:
        return next((g["used"] for g in smi.gpus() if g["index"] == i), 0)

    def mem_back_to_baseline(tol: int = 256) -> tuple[bool, str]:
        now = {g["index"]: g["used"] for g in smi.gpus()}
        ok = all(now[i] <= baseline_used.get(i, 0) + tol for i in now)
        return ok, ", ".join(f"GPU{i} {now[i]} MiB (before {baseline_used.get(i, 0)})" for i in sorted(now))

    def our_apps() -> list[dict]:
        return [a for a in smi.apps() if a["pid"] not in baseline_apps]

    try:
        # ---------------------------------------------------------------- 1. up + pinning
        say(f"dynsup up -d {CLUSTER}")
        t = time.monotonic()
        r = dynsup("up", CLUSTER, "-d", "--timeout", str(UP_TIMEOUT), timeout=UP_TIMEOUT + 30)
        up_s = time.monotonic() - t
        for line in (r.stdout + r.stderr).strip().splitlines()[-15:]:
            say(f"  {line}")
        st = wait_ready(60) if r.returncode == 0 else status()
        reps = replicas(st)
        if not check("up", r.returncode == 0 and bool(reps) and all(x["state"] == "ready" for x in reps.values()),
                     f"`dynsup up -d` exit {r.returncode} after {up_s:.1f}s; states: " + ", ".join(f"{k}={x['state']}" for k, x in reps.items())):
            return finish()
        reps, obs, ok = pinning_phase(smi, by_index, "after `up -d`: where each replica runs (GPU processes: its process group and descendants)", family)
        raw = smi.raw_apps()
        say("nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv")
        for line in raw.splitlines():
            say(f"  {line}")
        facts["compute_apps_after_up"] = raw
        gpu_reps = {k: x for k, x in reps.items() if x["gpus"]}
        shared = [g for g in by_index if sum(g in o["gpus"] for o in obs.values()) > 1]
        check("pinning", ok, f"{len(gpu_reps)} GPU replicas each on exactly its assigned GPU, {len(reps) - len(gpu_reps)} without GPU on none"
              + (f"; shared GPUs {shared}" if shared else "; no GPU shared"))

        # control plane: every GPU worker registered the UUID of the GPU it saw, and heartbeats.
        time.sleep(2.5)
        fw = frontend_workers()
        bad = []
        for k, x in reps.items():
            if x["group"] == "frontend":
                continue
            reg = fw.get("registered", {}).get(f"{x['group']}/{k}")
            hb = fw.get("heartbeats", {}).get(k)
            want = by_index[x["gpus"][0]]["uuid"] if x["gpus"] else None
            if not reg:
                bad.append(f"{k} not registered in etcd")
            elif x["gpus"] and not FAKE and reg.get("gpu_uuid") != want:
                bad.append(f"{k} saw {reg.get('gpu_uuid')}, assigned {want}")
            if not hb or hb.get("age_s", 99) > 6:
                bad.append(f"{k} no fresh NATS heartbeat")
        check("etcd+nats", not bad and "error" not in fw,
              fw.get("error") or ("; ".join(bad) if bad else f"{len(fw.get('registered', {}))} workers registered in etcd" + ("" if FAKE else " with the UUID of their assigned GPU") + ", all heartbeating on NATS (seen by frontend-0)"))
        # GPU telemetry of the node agents (issue 14)
        telemetry_phase(smi, reps)

        perf = []
        for k in reps:
            line = last_stats_line(k)
            if line:
                perf.append([k, line.split(" ", 2)[-1].split(" {")[0][:110]])
        if perf:
            table("what the workers report (last stats line of each log)", ["replica", "log"], perf)
        facts["worker_stats"] = perf

        # ---------------------------------------------------------------- 2. kill -9 of a GPU replica's leader (issue 12)
        if gpu_reps:
            victim = family if family in gpu_reps else max(gpu_reps, key=lambda k: max(gpu_reps[k]["gpus"]))
            vr = reps[victim]
            gi = vr["gpus"][0]
            old_pid, old_restarts = vr["pid"], vr["restarts"]
            others = {k: x["pid"] for k, x in reps.items() if k != victim}
            old_token = token_of(old_pid)
            fam = members(old_pid, old_token)
            apps_before = {a["pid"]: a for a in smi.apps()}
            fam_gpu = {q: apps_before[q]["used"] for q in fam if q in apps_before}
            kinds = {q: describe(q, old_pid) for q in fam}
            rows = []
            for q in fam:
                try:
                    pg, sid = os.getpgid(q), os.getsid(q)
                except OSError:
                    pg = sid = "?"
                rows.append([kinds[q], str(q), str(pg), str(sid), str(apps_before[q]["index"]) if q in apps_before else "-",
                             str(fam_gpu.get(q, "-")), cmdline(q)[:70]])
            table(f"{victim} before the kill: its leader and everything it started ({vr.get('containment', '?')} containment)",
                  ["process", "pid", "pgid", "sid", "GPU", "memory MiB", "command"], rows)
            on_gi = {q for q in fam_gpu if apps_before[q]["index"] == gi}
            has_child = any(kinds[q].startswith("child") for q in on_gi)
            has_gc = any(kinds[q].startswith("setsid") for q in on_gi)
            check("family on the GPU", victim == family and old_pid in on_gi and has_child and has_gc,
                  f"{victim}: leader {old_pid}, {'a' if has_child else 'NO'} child and {'a' if has_gc else 'NO'} setsid grandchild each holding "
                  f"memory on GPU {gi} ({len(on_gi)} processes, {sum(fam_gpu.get(q, 0) for q in on_gi)} MiB; DEMO_FAMILY={family})")
            before = gpu_used(gi)
            share = sum(fam_gpu.values())

            # status, watched from a thread while the main one watches nvidia-smi
            # Times are when the `dynsup status` call that showed it returned (asked: when it was made).
            seen: dict = {"dead_s": None, "dead": "", "dead_asked_s": None, "back_s": None, "pid": None, "restarts": None, "trail": []}
            t = time.monotonic()

            def watch_status() -> None:
                while time.monotonic() - t < 60 and seen["back_s"] is None:
                    asked = time.monotonic() - t
                    x = replicas(status()).get(victim, {})
                    el = time.monotonic() - t
                    now_s = f"{x.get('state')} pid {x.get('pid')} restarts {x.get('restarts')}"
                    if not seen["trail"] or seen["trail"][-1][1] != now_s:
                        seen["trail"].append((round(el, 2), now_s))
                    if seen["dead_s"] is None and not (x.get("pid") == old_pid and x.get("state") in ("running", "ready", "starting")):
                        seen["dead_s"], seen["dead"], seen["dead_asked_s"] = el, now_s, asked
                    if x.get("pid") not in (None, old_pid) and x.get("restarts") == old_restarts + 1:
                        seen["back_s"], seen["pid"], seen["restarts"] = el, x.get("pid"), x.get("restarts")
                    time.sleep(0.05)

            say(f"kill -9 {old_pid} ({victim}'s leader only; GPU {gi}, {len(fam)} processes of the replica, {share} MiB of it on GPUs; GPU {gi} used {before} MiB)")
            os.kill(old_pid, signal.SIGKILL)
            watcher = threading.Thread(target=watch_status, daemon=True)
            watcher.start()
            gone_at: dict[int, float] = {}
            exited_at: dict[int, float] = {}
            min_used, freed_s = before, None
            # Wall-clock time of the last nvidia-smi sample (taken when it was asked) that still listed each old process.
            last_listed: dict[int, float] = {}
            while time.monotonic() - t < 30:
                asked_at = time.time()
                apps = smi.apps()
                for a in apps:
                    if a["pid"] in fam:
                        last_listed[a["pid"]] = asked_at
                el = time.monotonic() - t
                u = sum(a["used"] for a in apps if a["index"] == gi) if FAKE else gpu_used(gi)
                min_used = min(min_used, u)
                live = {a["pid"] for a in apps}
                for q in fam:
                    if q not in gone_at and q not in live:
                        gone_at[q] = el
                    if q not in exited_at and (proc_stat(q) is None or proc_stat(q)[0] == "Z"):
                        exited_at[q] = el
                if len(gone_at) == len(fam) and len(exited_at) == len(fam) and before - min_used >= 0.8 * max(1, share):
                    freed_s = el
                    break
                time.sleep(0.2 if FAKE else 0.05)  # FAKE's /proc walk is the expensive part
            watcher.join(60)
            rows = [[kinds[q], str(q), str(fam_gpu.get(q, "-")), f"{gone_at[q]:.2f}" if q in gone_at else "NO",
                     f"{exited_at[q]:.2f}" if q in exited_at else "ALIVE", "PASS" if q in gone_at and q in exited_at else "FAIL"] for q in fam]
            table(f"after `kill -9` of {victim}'s leader {old_pid}: its old processes", ["process", "pid", "memory MiB before",
                  "left nvidia-smi after s", "exited after s", "result"], rows)
            say("status of " + victim + " after the kill (s: state): " + "; ".join(f"{a}: {b}" for a, b in seen["trail"][:12]))
            facts["kill_status_trail"] = seen["trail"]
            check("kill -9: seen dead at once", seen["dead_s"] is not None and seen["dead_s"] <= SEEN_DEAD_S,
                  (f"`dynsup status` no longer showed leader {old_pid} running {seen['dead_s']:.2f}s after the kill (asked at {seen['dead_asked_s']:.2f}s: "
                   f"{seen['dead']}; bound {SEEN_DEAD_S:.0f}s)"
                   if seen["dead_s"] is not None else f"status still showed pid {old_pid} running after 60s"))
            bound = RESTART_DELAY_S + RESTART_SLACK_S
            check("kill -9: restarted in time", seen["back_s"] is not None and seen["back_s"] <= bound,
                  (f"new pid {seen['pid']}, restarts {old_restarts} -> {seen['restarts']} in status {seen['back_s']:.2f}s after the kill "
                   f"(bound: restart delay {RESTART_DELAY_S}s + {RESTART_SLACK_S:.0f}s)") if seen["back_s"] is not None
                  else f"no new pid with restarts {old_restarts + 1} in status within 60s (last: {seen['trail'][-1][1] if seen['trail'] else '?'})")
            member_txt = ", ".join(f"{kinds[q].split(' (')[0]} {q} {gone_at[q]:.2f}s" if q in gone_at else f"{kinds[q].split(' (')[0]} {q} STILL THERE" for q in fam)
            check("kill -9 frees the GPU", freed_s is not None,
                  f"{victim}'s leader, child and setsid grandchild left nvidia-smi ({member_txt}); GPU {gi} used {before} -> {min_used} MiB"
                  + (f" within {freed_s:.2f}s" if freed_s is not None else
                     f" (not all gone, or did not drop by 80% of their {share} MiB, within 30s; exited: {sorted(exited_at)} of {fam})"))
            st = wait_ready(120, {victim: old_pid})
            reps2, obs2 = wait_on_gpus(smi, 90, family)
            nv = reps2.get(victim, {})
            back_s = time.monotonic() - t
            same = obs2.get(victim, {}).get("gpus") == set(vr["gpus"]) and nv.get("pid") not in (None, old_pid)
            untouched = all(reps2.get(k, {}).get("pid") == p for k, p in others.items())
            old_left = [q for q in fam if pgid(q) is not None]
            rows = [[victim, f"{old_pid} -> {nv.get('pid')}", nv.get("state", "?"), str(nv.get("restarts")), fmt_gpus(vr["gpus"]),
                     fmt_gpus(obs2.get(victim, {}).get("gpus")), str(len(obs2.get(victim, {}).get("pids", ()))),
                     str(obs2.get(victim, {}).get("used", "-")), "PASS" if same and not old_left else "FAIL"]]
            for k, p in others.items():
                x = reps2.get(k, {})
                o2 = obs2.get(k, {})
                rows.append([k, str(x.get("pid")), x.get("state", "?"), str(x.get("restarts")), fmt_gpus(x.get("gpus", [])),
                             fmt_gpus(o2.get("gpus")), str(len(o2.get("pids", ()))) if o2.get("gpus") else "-",
                             str(o2.get("used", "-")) if o2.get("gpus") else "-", "PASS" if x.get("pid") == p else "FAIL"])
            table(f"after `kill -9` of {victim}: restarted, same GPU", ["replica", "pid", "state", "restarts", "assigned GPU", "observed GPU",
                                                                       "GPU processes", "memory MiB", "result"], rows)
            # The GPU release gate (issue 13): the new run may only start once none of the old run's processes is on the GPU.
            started_at = (nv.get("startedAt") or 0) / 1000
            held_until = max(last_listed.values(), default=0.0)
            check("GPU release before the restart", bool(started_at) and started_at >= held_until,
                  f"new {victim} run started at +{started_at - held_until:.2f}s after nvidia-smi last listed an old process on GPU {gi}"
                  if last_listed else f"no old process of {victim} was listed by nvidia-smi after the kill (nothing to wait for); started at {started_at:.2f}")
            check("restart on the same GPU", same and untouched and not old_left and nv.get("restarts", 0) > old_restarts,
                  f"{victim} back as pid {nv.get('pid')} (restarts {old_restarts} -> {nv.get('restarts')}) on GPU {fmt_gpus(obs2.get(victim, {}).get('gpus'))} "
                  f"with {len(obs2.get(victim, {}).get('pids', ()))} GPU processes, ready {back_s:.1f}s after the kill; old processes left: {old_left or 'none'}; "
                  f"other replicas {'untouched' if untouched else 'CHANGED'}")
        else:
            check("kill -9 frees the GPU", False, "no replica has a GPU")

        # ---------------------------------------------------------------- 3. down
        t = time.monotonic()
        r = dynsup("down", CLUSTER, timeout=120)
        down_s = time.monotonic() - t
        end = time.monotonic() + 20
        while time.monotonic() < end and (our_apps() or not mem_back_to_baseline()[0] or leftovers()):
            time.sleep(0.25)
        apps, (mem_ok, mem_txt), left = our_apps(), mem_back_to_baseline(), leftovers()
        check("down frees everything", r.returncode == 0 and not apps and mem_ok and not left,
              f"`dynsup down` exit {r.returncode} in {down_s:.1f}s; compute processes of ours left: {len(apps)}"
              + (f" {[a['pid'] for a in apps]}" if apps else "") + f"; {mem_txt}; processes left (families included): {left or 'none'}")

        # ---------------------------------------------------------------- 4. kill -9 of the supervisor
        say(f"dynsup up -d {CLUSTER} (again)")
        r = dynsup("up", CLUSTER, "-d", "--timeout", str(UP_TIMEOUT), timeout=UP_TIMEOUT + 30)
        st = wait_ready(60) if r.returncode == 0 else status()
        reps, obs = wait_on_gpus(smi, 90, family)
        sup = (st.get("supervisor") or {}).get("pid")
        on_gpu = sum(1 for o in obs.values() if o["gpus"])
        if not check("up again", r.returncode == 0 and bool(sup) and on_gpu == len(gpu_reps),
                     f"exit {r.returncode}, supervisor pid {sup}, {on_gpu} replicas on GPUs"):
            return finish()
        launches = {k: (x["pid"], token_of(x["pid"])) for k, x in reps.items() if x.get("pid")}
        n_procs = {k: len(members(*lt)) for k, lt in launches.items()}
        say(f"kill -9 {sup} (the supervisor); lease {LEASE_S}s; processes per replica: " + ", ".join(f"{k} {v}" for k, v in n_procs.items()))
        t = time.monotonic()
        os.kill(sup, signal.SIGKILL)
        gone_s, first_stop_s = None, None
        # When each replica's last process went, and when nvidia-smi and the GPU memory were clear (diagnosis).
        replica_gone: dict[str, float] = {}
        apps_clear_s = mem_clear_s = None
        dumped = False
        while time.monotonic() - t < LEASE_S + 30:
            alive = {k: members(*lt) for k, lt in launches.items()}
            el = time.monotonic() - t
            if not dumped and el > LEASE_S + 3 and any(alive.values()):
                # Diagnosis of a stop that takes longer than the lease: what each process left is doing.
                dumped = True
                for k, v in alive.items():
                    for p in v:
                        say(f"still alive {el:.1f}s after the kill: {k} {describe(p, launches[k][0])}; {proc_signals(p)}")
                        if "frontend.py" in cmdline(p):
                            os.kill(p, signal.SIGUSR1)  # frontend.py: faulthandler prints its threads' stacks to its log
            for k, v in alive.items():
                if not v and k not in replica_gone:
                    replica_gone[k] = el
            if apps_clear_s is None and not our_apps():
                apps_clear_s = el
            if mem_clear_s is None and mem_back_to_baseline()[0]:
                mem_clear_s = el
            if first_stop_s is None and any(len(v) < n_procs[k] for k, v in alive.items()):
                first_stop_s = time.monotonic() - t
            if not any(alive.values()) and not our_apps() and mem_back_to_baseline()[0]:
                gone_s = time.monotonic() - t
                break
            time.sleep(0.2)
        apps, (mem_ok, mem_txt) = our_apps(), mem_back_to_baseline()
        still = leftovers()
        facts["left_after_supervisor_kill"] = still
        say(f"left running once the workers had stopped (for `down` to clean): {still or 'nothing'}")
        say("after the supervisor's kill: " + ", ".join(f"{k} gone at {v:.1f}s" for k, v in sorted(replica_gone.items(), key=lambda kv: kv[1]))
            + f"; no compute process of ours at {apps_clear_s if apps_clear_s is None else round(apps_clear_s, 1)}s"
            + f"; GPU memory at baseline at {mem_clear_s if mem_clear_s is None else round(mem_clear_s, 1)}s")
        rows = []
        for k, x in reps.items():
            alive = members(*launches[k]) if k in launches else []
            o = observe(smi, {k: x})[k]
            rows.append([k, str(x["pid"]), fmt_gpus(x["gpus"]), fmt_gpus(obs[k]["gpus"]), str(len(obs[k]["pids"])) if obs[k]["gpus"] else "-",
                         str(obs[k]["used"]) if obs[k]["gpus"] else "-", "gone" if not alive else f"ALIVE {alive}", fmt_gpus(o["gpus"]),
                         "PASS" if not alive and not o["gpus"] else "FAIL"])
        table(f"after `kill -9` of the supervisor (pid {sup})", ["replica", "pid", "assigned GPU", "observed GPU before", "GPU processes before",
                                                                  "memory MiB before", "processes after", "observed GPU after", "result"], rows)
        check("supervisor kill -9: workers stop", gone_s is not None and gone_s <= LEASE_S + 5,
              (f"every replica's processes (families included) gone and GPU memory free {gone_s:.1f}s after the kill (lease {LEASE_S}s; "
               f"all kept running for the first {first_stop_s or 0:.1f}s)" if gone_s is not None
               else f"still there after {LEASE_S + 30}s: compute processes {len(apps)}; {mem_txt}"))
        s = dynsup("status", CLUSTER)
        check("status after supervisor death", s.returncode == 1 and "NOT running" in s.stdout, f"`dynsup status` exit {s.returncode}: {s.stdout.strip().splitlines()[0] if s.stdout.strip() else s.stderr.strip()[:200]}")
        t = time.monotonic()
        r = dynsup("down", CLUSTER, timeout=120)
        down_s = time.monotonic() - t
        at_return = leftovers()
        end = time.monotonic() + 20
        while time.monotonic() < end and (our_apps() or leftovers()):
            time.sleep(0.25)
        settled_s = time.monotonic() - t
        apps, (mem_ok, mem_txt), left = our_apps(), mem_back_to_baseline(), leftovers()
        say(f"`dynsup down` returned after {down_s:.1f}s: " + " / ".join(ln.strip() for ln in (r.stdout + r.stderr).strip().splitlines()[-4:])
            + f"; still running when it returned: {at_return or 'nothing'}" + (f" (gone {settled_s:.1f}s after `down` began)" if at_return else ""))
        # Not a check (nothing runs), but README says `down` removes the agents' runtime files: say what is left.
        rd = STATE_DIR / "run"
        run_left = sorted(str(f.relative_to(rd)) for f in rd.rglob("*")
                          if not f.is_dir() and not (f.parent == rd and f.name in ("state.json", "credentials.json")))
        facts["runtime_files_after_down"] = run_left
        say(f"runtime files left under {STATE_DIR.relative_to(REPO)}/run after this `down`: {run_left or 'none (state.json, credentials.json aside)'}")
        check("down after supervisor death", r.returncode == 0 and not apps and mem_ok and not left,
              f"exit {r.returncode} in {down_s:.1f}s; compute processes {len(apps)}; {mem_txt}; processes left: {left or 'none'}")
    except BaseException:
        cleanup()  # finish() does it otherwise
        raise
    return finish()


def cleanup() -> None:
    """After the checks: `down` if anything runs, then never leave GPU memory behind, whatever dynsup did:
    workers and their descendants (DYNSUP_CLUSTER=gpu-local in their environment) still alive are killed,
    by pid, and named."""
    if leftovers() or status().get("running"):
        say("cleanup: dynsup down")
        dynsup("down", CLUSTER, timeout=120)
    stray = [q for q in all_pids() if q != os.getpid() and proc_env(q).get("DYNSUP_CLUSTER") == "gpu-local" and pgid(q) is not None]
    for q in stray:
        say(f"cleanup: kill -9 {q} ({cmdline(q)[:80]}), left after the last `dynsup down`")
        try:
            os.kill(q, signal.SIGKILL)
        except OSError:
            pass


def finish() -> int:
    cleanup()
    say("")
    table("checks", ["check", "result", "detail"], [[c["check"], c["result"], c["detail"]] for c in checks])
    failed = [c for c in checks if c["result"] != "PASS"]
    say(f"{'PASS' if not failed and checks else 'FAIL'}: {len(checks) - len(failed)}/{len(checks)} checks passed in {time.monotonic() - T0:.0f}s")
    if OUT:
        out = Path(OUT)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu-check.txt").write_text("\n".join(transcript) + "\n")
        (out / "gpu-check.json").write_text(json.dumps({"facts": facts, "checks": checks, "tables": tables}, indent=2, default=str))
        logs = REPO / "clusters/.state/gpu-local/logs"
        if logs.is_dir():
            with tarfile.open(out / "gpu-check-logs.tar.gz", "w:gz") as tf:
                tf.add(logs, arcname="gpu-local-logs")
    return 0 if checks and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
