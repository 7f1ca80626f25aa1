#!/usr/bin/env python3
"""Measure tally beside its anchors: Redis and a bare axum HTTP server.

Run through `make bench`, which builds target/release/tally and
target/release/examples/http_ceiling first. Python 3.11 standard library
only; the load generators are wrk (HTTP) and redis-benchmark (Redis).

  scripts/bench.py            3 rounds x 10 s per workload, 100 000 names for B4-B6
  scripts/bench.py --smoke    1 round x 1 s and small sizes: checks the harness
  scripts/bench.py --guard FILE
                              the regression guard (`make bench-guard`, part of
                              `make test`): B1 beside Redis `always` and B2/B3,
                              1 round x 3 s, without the HTTP ceiling; exits 1
                              when a ratio of FILE's falls below half its
                              recorded value, or could not be measured

Environment (overrides the defaults above, also under --smoke):
  BENCH_ROUNDS     rounds per workload (median reported)
  BENCH_SECONDS    seconds of load per round
  BENCH_B4_NAMES   names written while a node is down (B4), held by the node of B5/B6
  BENCH_FULL=1     B4 also with 1 000 000 names, and B5/B6 with 1 000 000 names
  BENCH_DIR        parent of the temporary data folder (default target/bench;
                   it must be on the disk being measured, not a tmpfs)
  BENCH_KEEP=1     keep the temporary folder (data and logs) afterwards
  BENCH_ONLY=tls   run only B1 and B3 over TLS, each beside plain HTTP
                   (they also run, last, in a full run); BENCH_ONLY=b1, b2
                   (B2 and B3), b4 (B4-B6) or b7 runs only that part
  BENCH_TALLY      the tally executable to measure (default
                   target/release/tally), e.g. one built from an older commit

Every process runs on 127.0.0.1 on free ports with its data in a fresh
folder, and is stopped (and the folder removed) on exit, on error and on
Ctrl-C. Every wait has a deadline. Results: a table on stdout and
target/bench/results.json (machine, every raw round, medians).

Only tally's public HTTP API, /status and /metrics are used, so the harness
runs against any version of the binary.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import ssl
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# BENCH_TALLY measures another build (an older commit, side by side).
TALLY = Path(os.environ.get("BENCH_TALLY") or ROOT / "target" / "release" / "tally")
CEILING = ROOT / "target" / "release" / "examples" / "http_ceiling"
RESULTS = ROOT / "target" / "bench" / "results.json"

NAMES = 1000  # names the increment workloads cycle over
BATCH = 1000  # increments per POST /counters (tally's limit)
FULL_NAMES = 1_000_000
HOST = "127.0.0.1"
APT_TIMEOUT = 600  # seconds for one apt-get step
LOADAVG_AT_START = 0.0
# Under --guard: only what the guard's ratios need (no HTTP ceiling, no
# Redis everysec), so it runs with just the binary `make package` builds.
GUARD = False


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise BenchError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise BenchError(f"{name} must be at least 1, got {value}")
    return value


@dataclass
class Settings:
    rounds: int
    seconds: int
    b4_sizes: list[int]
    b5_size: int
    smoke: bool


def settings(smoke: bool) -> Settings:
    rounds = env_int("BENCH_ROUNDS", 1 if smoke else 3)
    seconds = env_int("BENCH_SECONDS", 1 if smoke else 10)
    names = env_int("BENCH_B4_NAMES", 2000 if smoke else 100_000)
    full = os.environ.get("BENCH_FULL", "") == "1"
    sizes = [names] + ([FULL_NAMES] if full and names != FULL_NAMES else [])
    return Settings(rounds, seconds, sizes, FULL_NAMES if full else names, smoke)


def wait_until(what: str, timeout: float, probe, interval: float = 0.01):
    """Polls `probe` until it returns something truthy; BenchError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, pct):
    """Nearest-rank percentile of a list of numbers."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


# ---------------------------------------------------------------------------
# Tools and processes


def ensure_tools() -> None:
    needed = ["wrk", "redis-server", "redis-cli", "redis-benchmark"]
    missing = [t for t in needed if shutil.which(t) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {', '.join(missing)} with apt-get")
        packages = ["wrk", "redis-server", "redis-tools"]
        install = ["apt-get", "install", "-y", *packages]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # Bounded like every other wait here: a stuck package manager fails the run.
        apt = dict(env=env, check=False, timeout=APT_TIMEOUT)
        if subprocess.run(install, **apt).returncode != 0:
            subprocess.run(["apt-get", "update"], **apt)
            subprocess.run(install, **apt)
        missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        raise BenchError(
            f"missing {', '.join(missing)}: install the Debian packages wrk, "
            "redis-server and redis-tools (apt-get install -y wrk redis-server "
            "redis-tools), or run as root to have them installed"
        )
    for binary in (TALLY,) if GUARD else (TALLY, CEILING):
        if not binary.is_file():
            raise BenchError(
                f"{binary} is missing: run `make bench`, or `cargo build --release "
                "--bin tally --example http_ceiling` first"
            )


HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1, never the same one twice in a run."""
    socks, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in HANDED_OUT:
                HANDED_OUT.add(port)
                ports.append(port)
        return ports
    finally:
        for s in socks:
            s.close()


RUNNING: set["Proc"] = set()


class Proc:
    """A child process with its output in a log file, stopped on exit."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env=None, server: bool = True):
        self.name, self.argv, self.log_path, self.env = name, argv, log_path, env
        self.server = server  # meant to run until stopped (not a load generator)
        self.popen: subprocess.Popen | None = None
        self.seconds = 0  # how long it is meant to run, for a load generator

    def start(self) -> float:
        """Starts the process; returns the monotonic time just before."""
        out = open(self.log_path, "ab")
        started = time.monotonic()
        try:
            # A session of its own: Ctrl-C reaches only this script, which
            # then stops every child itself.
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        finally:
            out.close()
        RUNNING.add(self)
        return started

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.name} did not exit within {timeout:.0f} s") from None
        RUNNING.discard(self)
        return code

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` s."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {timeout:.0f} s; killing it")
                self.popen.kill()
                self.popen.wait(5)
        RUNNING.discard(self)
        return self.popen.returncode

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def servers_gone() -> str:
    """Describes every server that exited on its own; empty if none did."""
    gone = [p for p in RUNNING if p.server and not p.alive()]
    return "\n".join(
        f"{p.name} exited with {p.popen.returncode} (negative: killed by that signal):\n{p.log_tail()}"
        for p in gone
    )


def check_servers() -> None:
    gone = servers_gone()
    if gone:
        raise BenchError(gone)


def stop_all() -> None:
    for proc in list(RUNNING):
        try:
            proc.stop(timeout=3.0)
        except Exception as e:  # cleanup must reach every process
            log(f"stopping {proc.name}: {e}")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_usage(path: Path) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of every file under `path`."""
    allocated = apparent = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


# ---------------------------------------------------------------------------
# HTTP


class Client:
    """One keep-alive HTTP connection to 127.0.0.1:port, reopened after an error."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: str | bytes | None = None, headers=None):
        """(status, body bytes); raises OSError or HTTPException if the node is unreachable."""
        for attempt in (1, 2):
            if self.conn is None:
                context = TLS_CONTEXTS.get(self.port)
                if context is None:
                    self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
                else:
                    self.conn = http.client.HTTPSConnection(
                        HOST, self.port, timeout=self.timeout, context=context
                    )
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def try_call(self, method: str, path: str, body=None, headers=None):
        """Like call, but (None, b"") when the node cannot be reached."""
        try:
            return self.call(method, path, body, headers)
        except (OSError, http.client.HTTPException):
            return None, b""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def http_once(port: int, method: str, path: str, body=None, headers=None, timeout=5.0):
    client = Client(port, timeout)
    try:
        return client.try_call(method, path, body, headers)
    finally:
        client.close()


def get_json(port: int, path: str, timeout: float = 5.0):
    status, data = http_once(port, "GET", path, timeout=timeout)
    if status != 200:
        return None
    return json.loads(data)


def metric_sum(port: int, name: str) -> float | None:
    """Sum of every sample of a metric (all label sets) in /metrics."""
    status, data = http_once(port, "GET", "/metrics")
    if status != 200:
        return None
    total, found = 0.0, False
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)")
    for line in data.decode().splitlines():
        m = pattern.match(line)
        if m:
            total += float(m.group(2))
            found = True
    return total if found else None


def batch_body(names: list[str], amount: int = 1) -> str:
    items = [{"name": n, "amount": amount} for n in names]
    return json.dumps({"increments": items}, separators=(",", ":"))


# ---------------------------------------------------------------------------
# tally nodes


# Ports of nodes that speak TLS, with the context that trusts their CA.
TLS_CONTEXTS: dict[int, ssl.SSLContext] = {}


class Pki:
    """A test CA and node certificates, made by `tally cert`."""

    def __init__(self, run: "Run"):
        self.dir = run.tmp / "pki"
        subprocess.run([str(TALLY), "cert", "ca", "--out", str(self.dir)], check=True,
                       capture_output=True, timeout=60)
        self.context = ssl.create_default_context(cafile=str(self.dir / "ca.pem"))

    def node_args(self, node_id: int) -> list[str]:
        subprocess.run(
            [str(TALLY), "cert", "node", "--ca", str(self.dir), "--id", str(node_id), "--host", HOST,
             "--out", str(self.dir), "--force"],
            check=True, capture_output=True, timeout=60,
        )
        return ["--tls-cert", str(self.dir / f"node-{node_id}.pem"),
                "--tls-key", str(self.dir / f"node-{node_id}-key.pem"),
                "--tls-ca", str(self.dir / "ca.pem")]


class Node(Proc):
    def __init__(self, run: "Run", node_id: int, port: int, data_dir: Path, pki: Pki | None = None):
        self.id, self.port, self.data_dir = node_id, port, data_dir
        argv = [str(TALLY), str(node_id), "--listen", f"{HOST}:{port}", "--data-dir", str(data_dir)]
        if pki is not None:
            argv += pki.node_args(node_id)
            TLS_CONTEXTS[port] = pki.context
        env = dict(os.environ, TALLY_LOG="warn")
        super().__init__(f"tally node {node_id} (:{port})", argv, run.tmp / f"{data_dir.name}.log", env)

    @property
    def actor(self) -> str:
        return f"{HOST}:{self.port}"

    def status(self):
        return get_json(self.port, "/status", timeout=2.0)

    def wait_serving(self, timeout: float = 20.0) -> float:
        """Waits until /status answers 200; returns the monotonic time it did."""

        def probe():
            if not self.alive():
                raise BenchError(f"{self.name} exited:\n{self.log_tail()}")
            status, _ = http_once(self.port, "GET", "/status", timeout=1.0)
            return time.monotonic() if status == 200 else None

        return wait_until(f"{self.name} to answer /status", timeout, probe, interval=0.002)

    def value(self, name: str) -> bytes | None:
        status, data = http_once(self.port, "GET", f"/counter/{name}/value", timeout=2.0)
        return data if status == 200 else None

    def restart(self, timeout: float = 30.0) -> float:
        """SIGTERM, wait for the exit, start again; returns the start time."""
        code = self.stop(timeout)
        if code not in (0, None):
            log(f"{self.name} exited with {code} on SIGTERM:\n{self.log_tail()}")
        return self.start()


def start_cluster(run: "Run", size: int, tag: str, pki: Pki | None = None) -> list[Node]:
    """`size` fresh nodes with the config posted and held by every node
    (over TLS with `pki`)."""
    ports = free_ports(size)
    nodes = [Node(run, i + 1, port, run.tmp / f"{tag}-node{i + 1}", pki) for i, port in enumerate(ports)]
    for node in nodes:
        node.start()
    for node in nodes:
        node.wait_serving()
    actors = [n.actor for n in nodes]
    status, data = http_once(
        nodes[0].port, "POST", "/config", json.dumps({"actors": actors}),
        {"Content-Type": "application/json"}, timeout=10.0,
    )
    if status != 200:
        raise BenchError(f"POST /config answered {status}: {data[:300]!r}")

    def configured():
        for node in nodes:
            s = node.status()
            if not s or sorted(s.get("config", {}).get("actors", [])) != sorted(actors):
                return False
            peers = s.get("peers", [])
            if len(peers) != size - 1 or not all(p.get("reachable") for p in peers):
                return False
        return True

    wait_until(f"every node of {tag} to hold the config and reach its peers", 30, configured, 0.05)
    return nodes


def stop_nodes(nodes: list[Node]) -> None:
    for node in nodes:
        node.stop()


def wait_replicated(nodes: list[Node], timeout: float = 30.0) -> bool:
    """Waits (bounded) until no node has pushes pending or lag reported."""

    def quiet():
        for node in nodes:
            s = node.status()
            if not s:
                return False
            if any(p.get("pending_push") or p.get("lag_changes") for p in s.get("peers", [])):
                return False
        return True

    try:
        return wait_until("replication to settle", timeout, quiet, 0.05)
    except BenchError as e:
        check_servers()
        log(f"warning: {e}; going on")
        return False


def write_names(port: int, names: list[str], connections: int = 4) -> float:
    """Increments every name by 1 on one node with POST /counters; returns seconds."""
    batches = [names[i : i + BATCH] for i in range(0, len(names), BATCH)]
    local = threading.local()

    def post(batch):
        if not hasattr(local, "client"):
            local.client = Client(port, timeout=30.0)
        status, data = local.client.call(
            "POST", "/counters", batch_body(batch), {"Content-Type": "application/json"}
        )
        if status != 200:
            raise BenchError(f"POST /counters answered {status}: {data[:300]!r}")

    started = time.monotonic()
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(post, batches))
    return time.monotonic() - started


# ---------------------------------------------------------------------------
# Load generators: wrk (HTTP) and redis-benchmark (Redis)

# Prints wrk's summary as one JSON line; latencies in microseconds.
LUA_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_RESULT {"requests": %d, "duration_us": %d, ' ..
    '"p50_us": %.1f, "p99_us": %.1f, "mean_us": %.1f, "max_us": %.1f, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# Cycles over `count` names; each thread starts at another name. Requests
# are formatted once in init, so the Lua cost per request is a table lookup.
LUA_NAMES = r"""
local method, prefix, suffix, body, count = %(method)s, %(prefix)s, %(suffix)s, %(body)s, %(count)d
local started, reqs, i = 0, {}, 0
function setup(thread)
  started = started + 1
  thread:set("tid", started)
end
function init(args)
  local first = ((tid or 1) - 1) * 397
  for k = 0, count - 1 do
    local path = prefix .. ((first + k) %% count) .. suffix
    reqs[k + 1] = wrk.format(method, path, nil, body)
  end
end
function request()
  i = i %% count + 1
  return reqs[i]
end
"""


def lua_str(s: str | None) -> str:
    return "nil" if s is None else json.dumps(s)  # a JSON string is a Lua string here


def lua_names(method: str, suffix: str, body: str | None) -> str:
    """A wrk script over /counter/n0 ... /counter/n999 (+ suffix)."""
    return LUA_NAMES % dict(
        method=lua_str(method), prefix=lua_str("/counter/n"), suffix=lua_str(suffix),
        body=lua_str(body), count=NAMES,
    ) + LUA_DONE


# Each connection waits this long before each request: wrk's own pacing.
LUA_PACE = r"""
function delay()
  return %(ms)d
end
"""
PACE_MS = 4


def paced_connections(rate: float) -> int:
    """Connections that, each pausing PACE_MS (plus about half a millisecond
    of answer) before each request, offer about `rate` requests/s."""
    return max(1, round(rate * (PACE_MS + 0.5) / 1000))


def lua_batch(names: list[str]) -> str:
    """A wrk script that POSTs one fixed batch to the URL's path (/counters)."""
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {lua_str(batch_body(names))}\n" + LUA_DONE
    )


@dataclass
class Load:
    """One load run: successful requests per second and latency in ms."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int = 0  # non-2xx answers, socket errors and timeouts
    extra: dict = field(default_factory=dict)


class Wrk:
    """Starts wrk with one of the scripts above and reads its result."""

    def __init__(self, run: "Run", script_name: str, script: str):
        self.run = run
        self.script = run.tmp / f"{script_name}.lua"
        self.script.write_text(script)

    def start(self, port: int, connections: int, seconds: int, path: str = "", threads: int = 2) -> Proc:
        threads = max(1, min(connections, threads))
        argv = [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "-s", str(self.script),
            f"{'https' if port in TLS_CONTEXTS else 'http'}://{HOST}:{port}{path}",
        ]
        self.run.wrk_runs += 1
        proc = Proc("wrk", argv, self.run.tmp / f"wrk-{self.run.wrk_runs}.log", server=False)
        proc.start()
        proc.seconds = seconds
        return proc

    @staticmethod
    def result(proc: Proc) -> Load:
        code = proc.wait(proc.seconds + 30)
        out = proc.log_path.read_text(errors="replace")
        m = re.search(r"^BENCH_RESULT (\{.*\})$", out, re.M)
        if code != 0 or not m:
            raise BenchError(f"wrk failed ({code}): {' '.join(proc.argv)}\n{out[-2000:]}\n{servers_gone()}")
        r = json.loads(m.group(1))
        seconds = r["duration_us"] / 1e6
        errors = r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
        ok = r["requests"] - r["status"]
        if errors:
            log(f"warning: wrk saw {errors} errors ({r}) in {' '.join(proc.argv)}")
            check_servers()
        return Load(ok / seconds, r["p50_us"] / 1000, r["p99_us"] / 1000, r["requests"], errors)

    def __call__(self, port: int, connections: int, seconds: int, path: str = "") -> Load:
        return self.result(self.start(port, connections, seconds, path))


def wrk_spread(wrk: Wrk, nodes: list[Node], connections: int, seconds: int) -> list[Proc]:
    """One wrk per node, `connections` split between them."""
    share = [connections // len(nodes) + (i < connections % len(nodes)) for i in range(len(nodes))]
    return [wrk.start(node.port, c, seconds, threads=1) for node, c in zip(nodes, share)]


def wrk_sum(procs: list[Proc]) -> Load:
    """Sums throughput; latency is the worst of the wrk processes."""
    loads = [Wrk.result(p) for p in procs]
    return Load(
        sum(l.rps for l in loads), max(l.p50_ms for l in loads), max(l.p99_ms for l in loads),
        sum(l.requests for l in loads), sum(l.errors for l in loads),
        {"per_node_rps": [round(l.rps) for l in loads]},
    )


class Redis(Proc):
    def __init__(self, run: "Run", fsync: str):
        (self.port,) = free_ports(1)
        data = run.tmp / f"redis-{fsync}"
        data.mkdir()
        argv = [
            "redis-server", "--bind", HOST, "--port", str(self.port), "--save", "",
            "--appendonly", "yes", "--appendfsync", fsync, "--dir", str(data),
        ]
        super().__init__(f"redis ({fsync})", argv, run.tmp / f"redis-{fsync}.log")
        self.fsync = fsync
        self.estimate: dict[int, float] = {}  # requests/s by connections

    def wait_serving(self, timeout: float = 20.0) -> None:
        def probe():
            if not self.alive():
                raise BenchError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(f"{self.name} to answer PING", timeout, probe)

    def bench_argv(self, connections: int, requests: int) -> list[str]:
        threads = min(connections, 2)
        return [
            "redis-benchmark", "-h", HOST, "-p", str(self.port), "-c", str(connections),
            "-n", str(requests), "-r", str(NAMES), *(["--threads", str(threads)] if threads > 1 else []),
            "--csv", "INCRBY", "key:__rand_int__", "1",
        ]

    def bench(self, connections: int, seconds: int) -> Load:
        """redis-benchmark counts requests, not time: size the run from the
        last measured rate (a short calibration run the first time)."""
        if connections not in self.estimate:
            self._run(connections, max(500, connections * 200), seconds=30)
        requests = max(1000, int(self.estimate[connections] * seconds))
        return self._run(connections, requests, seconds=seconds * 5 + 30)

    def _run(self, connections: int, requests: int, seconds: float) -> Load:
        argv = self.bench_argv(connections, requests)
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds)
        except subprocess.TimeoutExpired:
            raise BenchError(f"redis-benchmark ran over {seconds:.0f} s: {' '.join(argv)}") from None
        lines = [l for l in out.stdout.splitlines() if l.startswith('"INCRBY')]
        if out.returncode != 0 or not lines:
            raise BenchError(f"redis-benchmark failed: {' '.join(argv)}\n{out.stdout}{out.stderr}")
        f = next(csv.reader([lines[-1]]))
        rps, p50, p99 = float(f[1]), float(f[4]), float(f[6])
        self.estimate[connections] = rps
        return Load(rps, p50, p99, requests)


# ---------------------------------------------------------------------------
# Workloads. Each returns {"raw": {figure: [per round]}, "median": {figure: value}}.


class Run:
    def __init__(self, s: Settings, tmp: Path):
        self.s, self.tmp = s, tmp
        self.wrk_runs = 0
        self.increment = Wrk(self, "increment", lua_names("POST", "", "1"))
        self.consistent = Wrk(self, "consistent", lua_names("GET", "/consistent_value", None))
        self.paced_increment = Wrk(
            self, "paced-increment", lua_names("POST", "", "1") + LUA_PACE % {"ms": PACE_MS}
        )
        self.results: dict = {}
        self.commands: dict = {}

    def rounds(self, what: str):
        for r in range(self.s.rounds):
            log(f"{what}: round {r + 1}/{self.s.rounds}")
            yield r
            check_servers()


def load_fields(prefix: str, load: Load) -> dict:
    out = {f"{prefix}_rps": load.rps, f"{prefix}_p50_ms": load.p50_ms, f"{prefix}_p99_ms": load.p99_ms}
    if load.errors:
        out[f"{prefix}_errors"] = load.errors
    for k, v in load.extra.items():
        out[f"{prefix}_{k}"] = v
    return out


def summarize(raw: list[dict]) -> dict:
    keys = sorted({k for r in raw for k in r})
    return {
        "raw": {k: [r.get(k) for r in raw] for k in keys},
        "median": {
            k: median([r.get(k) for r in raw])
            for k in keys
            if all(isinstance(r.get(k), (int, float)) or r.get(k) is None for r in raw)
        },
    }


def b1_single_node(run: Run) -> dict:
    """One node, durable increments over 1 000 names, beside Redis and the bare HTTP server."""
    secs = run.s.seconds
    (node,) = start_cluster(run, 1, "b1")
    always, everysec = Redis(run, "always"), Redis(run, "everysec")
    (ceiling_port,) = free_ports(1)
    ceiling = Proc("http_ceiling", [str(CEILING), f"{HOST}:{ceiling_port}"], run.tmp / "ceiling.log")
    anchors = [always] if GUARD else [always, everysec, ceiling]
    for p in anchors:
        p.start()
    always.wait_serving()
    if not GUARD:
        everysec.wait_serving()
        wait_until("http_ceiling to answer", 20, lambda: http_once(ceiling_port, "GET", "/counter/x/value")[0])
    run.commands["b1"] = {
        "wrk": "wrk -t2 -c64 (-t1 -c1) -d{s}s --latency -s increment.lua: POST /counter/n<i> body 1, "
        "i cycling over 1000 names".format(s=secs),
        "redis": " ".join(always.bench_argv(64, 0)).replace("-n 0", "-n <rate x seconds>")
        + " (and -c 1 without --threads); requests sized from a calibration run",
    }
    systems = [
        ("tally64", lambda: run.increment(node.port, 64, secs)),
        ("redis_always64", lambda: always.bench(64, secs)),
        ("redis_everysec64", lambda: everysec.bench(64, secs)),
        ("ceiling64", lambda: run.increment(ceiling_port, 64, secs)),
        ("tally1", lambda: run.increment(node.port, 1, secs)),
        ("redis_always1", lambda: always.bench(1, secs)),
    ]
    if GUARD:
        systems = [(name, measure) for name, measure in systems if not name.startswith(("redis_everysec", "ceiling"))]
    raw = []
    try:
        for r in run.rounds("B1"):
            fields: dict = {}
            for name, measure in systems[r % len(systems) :] + systems[: r % len(systems)]:
                fields.update(load_fields(name, measure()))
            raw.append(fields)
        batch_sum = metric_sum(node.port, "tally_storage_commit_batch_size_sum")
        batch_count = metric_sum(node.port, "tally_storage_commit_batch_size_count")
    finally:
        for p in (node, *anchors):
            p.stop()
    out = summarize(raw)
    if batch_sum and batch_count:
        out["ops_per_commit"] = batch_sum / batch_count
    return out


def probe_lag(nodes: list[Node], until: float, samples: int, tag: str, out: list, failures: list):
    """Writes a fresh name on one node, then polls the others' value until
    both show it: from the writer's 200 to visible on every peer, in ms."""
    clients = {n.port: Client(n.port, timeout=2.0) for n in nodes}
    interval = max(0.0, until - time.monotonic()) / max(1, samples)
    k = 0
    try:
        while time.monotonic() < until:
            slot = time.monotonic()
            writer = nodes[k % len(nodes)]
            name = f"lag-{tag}-{k}"
            path = f"/counter/{name}/value"
            k += 1
            status, _ = clients[writer.port].try_call("POST", f"/counter/{name}", "1")
            acked = time.monotonic()
            if status != 200:
                failures.append(f"POST answered {status}")
                continue
            pending = [n for n in nodes if n is not writer]
            while pending and time.monotonic() - acked < 5.0:
                pending = [n for n in pending if clients[n.port].try_call("GET", path)[1] != b"1"]
            if pending:
                failures.append(f"{name} not visible on every peer after 5 s")
            else:
                out.append((time.monotonic() - acked) * 1000)
            time.sleep(max(0.0, slot + interval - time.monotonic()))
    finally:
        for c in clients.values():
            c.close()


def b2_b3_cluster(run: Run, b1_max: float | None) -> dict:
    """B2: the B1 load spread over three nodes, with a replication-lag probe.
    B3: consistent reads on the idle cluster, under the B2 load, and on node 2
    while node 1 takes writes at half of B1's maximum (`b1_max`, from this
    run's B1; without it, measured on node 1 of this cluster first)."""
    secs = run.s.seconds
    nodes = start_cluster(run, 3, "b2")
    lag: list[float] = []
    lag_failures: list[str] = []
    per_round = max(1, min(-(-150 // run.s.rounds), secs * 20))
    raw = []
    try:
        # Every name exists before the first read.
        write_names(nodes[0].port, [f"n{i}" for i in range(NAMES)], connections=1)
        wait_replicated(nodes)
        if not b1_max:
            b1_max = run.increment(nodes[0].port, 64, secs).rps
            wait_replicated(nodes)
        half = b1_max / 2
        # wrk paces by a pause per request, so the rate offered also
        # depends on the answers' latency: one short calibration run (with
        # the reads on) sets the number of connections.
        paced = paced_connections(half)
        writer = run.paced_increment.start(nodes[0].port, paced, 3)
        reader = run.consistent.start(nodes[1].port, 16, 3)
        Wrk.result(reader)
        achieved = Wrk.result(writer).rps
        if achieved > 0:
            paced = max(1, round(paced * half / achieved))
        wait_replicated(nodes)
        for r in run.rounds("B2/B3"):
            fields = load_fields("b3_idle", run.consistent(nodes[0].port, 16, secs))

            writers = wrk_spread(run.increment, nodes, 64, secs)
            until = time.monotonic() + secs - 0.3
            time.sleep(0.2)  # let wrk open its connections
            probe = threading.Thread(
                target=probe_lag, args=(nodes, until, per_round, f"r{r}", lag, lag_failures), daemon=True
            )
            probe.start()
            fields.update(load_fields("b2", wrk_sum(writers)))
            probe.join(timeout=15)
            wait_replicated(nodes)

            writers = wrk_spread(run.increment, nodes, 64, secs)
            reader = run.consistent.start(nodes[0].port, 16, secs)
            fields.update(load_fields("b3_loaded", Wrk.result(reader)))
            fields.update(load_fields("b3_loaded_writes", wrk_sum(writers)))
            wait_replicated(nodes)

            writer = run.paced_increment.start(nodes[0].port, paced, secs)
            time.sleep(0.2)  # let wrk open its connections
            reader = run.consistent.start(nodes[1].port, 16, max(1, secs - 1))
            fields.update(load_fields("b3_paced", Wrk.result(reader)))
            fields.update(load_fields("b3_paced_writes", Wrk.result(writer)))
            fields["b3_paced_target_writes_rps"] = half
            wait_replicated(nodes)
            raw.append(fields)
    finally:
        stop_nodes(nodes)
    out = summarize(raw)
    out["lag_ms"] = {
        "samples": len(lag),
        "failures": lag_failures[:20],
        "failure_count": len(lag_failures),
        "p50": percentile(lag, 50),
        "p99": percentile(lag, 99),
        "max": max(lag) if lag else None,
        "all": [round(v, 3) for v in lag],
    }
    run.commands["b2"] = (
        "three wrk -t1 (22+21+21 connections), one per node, increment.lua; lag probe: POST "
        "/counter/lag-* on each node in turn, then GET .../value on the two others until both say 1"
    )
    run.commands["b3"] = "wrk -t2 -c16 -s consistent.lua on node 1: GET /counter/n<i>/consistent_value"
    run.commands["b3_paced"] = (
        f"wrk -t2 -c{paced} -s paced-increment.lua (each connection pauses {PACE_MS} ms before "
        f"each request; aiming at {half:.0f}/s, half of B1, connections set by a 3 s calibration "
        "run) on node 1, and "
        "wrk -t2 -c16 -s consistent.lua on node 2"
    )
    return out


def tls_b1_b3(run: Run) -> dict:
    """B1 and B3 over TLS, each beside the same workload over plain HTTP in
    the same round (so the ratio compares like with like): one node for
    increments, three for consistent reads (peers then call each other
    over mutual TLS)."""
    secs = run.s.seconds
    pki = Pki(run)
    (plain,) = start_cluster(run, 1, "tls-b1-plain")
    (secure,) = start_cluster(run, 1, "tls-b1", pki)
    plain3 = start_cluster(run, 3, "tls-b3-plain")
    secure3 = start_cluster(run, 3, "tls-b3", pki)
    raw = []
    try:
        for cluster in (plain3, secure3):
            write_names(cluster[0].port, [f"n{i}" for i in range(NAMES)], connections=1)
            wait_replicated(cluster)
        systems = [
            ("b1_plain64", lambda: run.increment(plain.port, 64, secs)),
            ("b1_tls64", lambda: run.increment(secure.port, 64, secs)),
            ("b3_plain_idle", lambda: run.consistent(plain3[0].port, 16, secs)),
            ("b3_tls_idle", lambda: run.consistent(secure3[0].port, 16, secs)),
        ]
        for r in run.rounds("TLS"):
            fields: dict = {}
            for name, measure in systems[r % 2 :] + systems[: r % 2]:
                fields.update(load_fields(name, measure()))
            for b in ("b1", "b3"):
                mode = "64" if b == "b1" else "_idle"
                fields[f"{b}_tls_ratio"] = fields[f"{b}_tls{mode}_rps"] / fields[f"{b}_plain{mode}_rps"]
            raw.append(fields)
    finally:
        stop_nodes([plain, secure, *plain3, *secure3])
    run.commands["tls"] = (
        "B1 (wrk -t2 -c64 increment.lua) and B3 (wrk -t2 -c16 consistent.lua, 3 nodes) against "
        "nodes with --tls-cert/--tls-key/--tls-ca (certificates from `tally cert`, ECDSA P-256, "
        "TLS 1.3) and against plain nodes, alternating in each round"
    )
    return summarize(raw)


def b4_convergence(run: Run, size: int, keep_last: bool):
    """A node down while `size` names are written elsewhere, then restarted:
    seconds from its start until it holds every name. A fresh cluster each round."""
    names = [f"c{i:07d}" for i in range(size)]
    raw = []
    kept = None
    for r in run.rounds(f"B4 ({size} names)"):
        nodes = start_cluster(run, 3, f"b4-{size}-r{r}")
        try:
            base = nodes[2].status()["names"]
            down = nodes[2]
            code = down.stop(timeout=30)
            write_s = write_names(nodes[0].port, names)
            rss_after_writes = rss_bytes(nodes[0].pid)
            # Node 2 catches up first, so node 3's catch-up is measured alone.
            wait_until(f"node 2 to hold {size} names", 60 + size / 10_000,
                       lambda: (nodes[1].status() or {}).get("names", 0) >= base + size, 0.02)
            peers_cpu = [cpu_seconds(n.pid) for n in nodes[:2]]
            started = down.start()
            first_status = down.wait_serving()
            done = wait_until(
                f"restarted node 3 to hold {size} names", 60 + size / 10_000,
                lambda: (down.status() or {}).get("names", 0) >= base + size and time.monotonic(), 0.01,
            )
            # CPU of the whole cluster while node 3 catches up (node 3's from its start).
            cpu = [cpu_seconds(n.pid) - c for n, c in zip(nodes[:2], peers_cpu)] + [cpu_seconds(down.pid)]
            if down.value(names[-1]) != b"1" or down.value(names[0]) != b"1":
                raise BenchError("node 3 counts every name but not their values")
            received = metric_sum(down.port, "tally_peer_bytes_received_total")
            raw.append({
                "seconds": done - started,
                "seconds_after_serving": done - first_status,
                "startup_seconds": first_status - started,
                "write_seconds": write_s,
                "names_per_second_written": size / write_s,
                "peer_bytes_received": received,
                "bytes_per_name": received / size if received is not None else None,
                "node1_rss_after_writes": rss_after_writes,
                "cpu_seconds_node1": cpu[0],
                "cpu_seconds_node2": cpu[1],
                "cpu_seconds_node3": cpu[2],
                "cpu_seconds_catching_up": sum(cpu),
                "sigterm_exit_code": code,
            })
        finally:
            if keep_last and r == run.s.rounds - 1:
                kept = nodes
            else:
                stop_nodes(nodes)
                for n in nodes:
                    shutil.rmtree(n.data_dir, ignore_errors=True)
    run.commands[f"b4_{size}"] = (
        f"3 nodes; SIGTERM node 3; {size} names (amount 1) to node 1 in POST /counters of {BATCH} "
        "over 4 connections; wait until node 2 holds them; start node 3; poll its /status names"
    )
    out = summarize(raw)
    return out, kept, names[0]


def b5_b6_restart(run: Run, nodes: list[Node], known: str, size: int, rss_after_writes) -> dict:
    """B5: a node holding `size` names: SIGTERM, start, time to serving a right value.
    B6: its resident memory and data folder afterwards."""
    node = nodes[0]
    raw = []
    try:
        for _ in run.rounds(f"B5 ({size} names)"):
            stop_started = time.monotonic()
            node.stop(timeout=30)
            stopped = time.monotonic()
            started = node.start()
            serving = node.wait_serving()
            right = wait_until(f"{node.name} to answer {known} = 1", 30,
                               lambda: node.value(known) == b"1" and time.monotonic(), 0.002)
            raw.append({
                "seconds": right - started,
                "seconds_to_status": serving - started,
                "shutdown_seconds": stopped - stop_started,
            })
        time.sleep(1.0)
        rss = rss_bytes(node.pid)
        allocated, apparent = disk_usage(node.data_dir)
        status = node.status() or {}
    finally:
        stop_nodes(nodes)
    out = summarize(raw)
    out["b6"] = {
        "names": status.get("names"),
        "rss_bytes": rss,
        "rss_bytes_after_writes": rss_after_writes,
        "disk_bytes": allocated,
        "disk_apparent_bytes": apparent,
        "status_data_bytes": status.get("data_bytes"),
    }
    run.commands["b5"] = "SIGTERM node 1, wait for its exit, start it; until /status is 200 and a name reads 1"
    run.commands["b6"] = "VmRSS of node 1 one second after the last B5 restart; data folder: allocated blocks"
    return out


def b7_batches(run: Run) -> dict:
    """POST /counters with the same 1 000 names in every request."""
    secs = run.s.seconds
    (node,) = start_cluster(run, 1, "b7")
    wrk = Wrk(run, "batch", lua_batch([f"n{i}" for i in range(BATCH)]))
    raw = []
    try:
        for _ in run.rounds("B7"):
            load = wrk(node.port, 16, secs, "/counters")
            fields = load_fields("batch", load)
            fields["increments_per_s"] = load.rps * BATCH
            raw.append(fields)
    finally:
        node.stop()
    run.commands["b7"] = f"wrk -t2 -c16 -d{secs}s -s batch.lua: POST /counters, {BATCH} names (amount 1) each"
    return summarize(raw)


# ---------------------------------------------------------------------------
# Report


@dataclass
class Row:
    figure: str
    value: float | None
    unit: str
    anchor: str = ""
    anchor_value: float | None = None
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self):
        if self.value is None or not self.anchor_value:
            return None
        return self.value / self.anchor_value


def fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit in ("/s", "B", "B/name", "names/s") or (isinstance(v, int) and not unit):
        text = f"{round(v):,}".replace(",", " ")
    elif unit == "MB":
        text = f"{v / 1e6:.1f}"
    elif unit == "s":
        text = f"{v:.3f}"
    else:
        text = f"{v:.2f}"
    return f"{text} {unit}".strip()


def check(value, op: str, limit) -> bool | None:
    if value is None:
        return None
    return value >= limit if op == ">=" else value < limit if op == "<" else value <= limit


def rows(res: dict, s: Settings) -> list[Row]:
    out: list[Row] = []

    def add(figure, value, unit, anchor="", anchor_value=None, op=None, limit=None, on="value", shown=None):
        """One row; with `op`, a target on the value or (on="ratio") on value / anchor."""
        row = Row(figure, value, unit, anchor, anchor_value)
        if op:
            ratio = on == "ratio"
            row.target = shown or (f"{op} {limit}x" if ratio else f"{op} {fmt(limit, unit)}")
            row.met = check(row.ratio if ratio else value, op, limit)
        out.append(row)

    if "tls" in res:
        t = res["tls"]["median"]
        add("B1 TLS increments/s, 64 conn", t.get("b1_tls64_rps"), "/s", "B1 plain, same rounds",
            t.get("b1_plain64_rps"), ">=", 0.85, on="ratio",
            shown=f">= 0.85x (median ratio {fmt(t.get('b1_tls_ratio'), 'x')})")
        add("B1 TLS p99, 64 conn", t.get("b1_tls64_p99_ms"), "ms", "B1 plain p99", t.get("b1_plain64_p99_ms"))
        add("B3 TLS consistent reads/s, idle", t.get("b3_tls_idle_rps"), "/s", "B3 plain, same rounds",
            t.get("b3_plain_idle_rps"))
        add("B3 TLS p99, idle", t.get("b3_tls_idle_p99_ms"), "ms", "B3 plain p99", t.get("b3_plain_idle_p99_ms"))
    b1 = res.get("b1", {}).get("median", {})
    t64 = b1.get("tally64_rps")
    if b1:
        for anchor, key, limit in [
            ("Redis always", "redis_always64", 1.0),
            ("axum ceiling", "ceiling64", 0.7),
            ("Redis everysec", "redis_everysec64", None),
        ]:
            add("B1 increments/s, 64 conn", t64, "/s", f"{anchor}, 64 conn", b1.get(f"{key}_rps"),
                ">=" if limit else None, limit, on="ratio")
        for conns in (64, 1):
            if conns == 1:
                add("B1 increments/s, 1 conn", b1.get("tally1_rps"), "/s", "Redis always, 1 conn",
                    b1.get("redis_always1_rps"), ">=", 1.0, on="ratio")
            for pct in ("p50", "p99"):
                add(f"B1 {pct}, {conns} conn", b1.get(f"tally{conns}_{pct}_ms"), "ms", f"Redis always {pct}",
                    b1.get(f"redis_always{conns}_{pct}_ms"), *(("<=", 5.0) if pct == "p99" else ()))

    if "b2" in res:
        b2, lag = res["b2"]["median"], res["b2"]["lag_ms"]
        add("B2 increments/s, 3 nodes", b2.get("b2_rps"), "/s", "B1 tally, 64 conn", t64, ">=", 0.8, on="ratio")
        add("B2 p99 (worst node)", b2.get("b2_p99_ms"), "ms")
        add(f"B2 lag p50 ({lag['samples']} samples)", lag["p50"], "ms")
        add("B2 lag p99 (200 -> on every peer)", lag["p99"], "ms", op="<", limit=50.0)
        add("B3 consistent reads/s, idle", b2.get("b3_idle_rps"), "/s", op=">=", limit=30_000)
        add("B3 p99, idle", b2.get("b3_idle_p99_ms"), "ms", op="<", limit=2.0)
        add("B3 consistent reads/s, under B2", b2.get("b3_loaded_rps"), "/s", "B3 idle", b2.get("b3_idle_rps"))
        add("B3 p99, under B2", b2.get("b3_loaded_p99_ms"), "ms")
        add("B3 reads/s, node 1 writing at B1/2", b2.get("b3_paced_rps"), "/s", "B3 idle",
            b2.get("b3_idle_rps"), ">=", 0.5, on="ratio")
        add("B3 p99, node 1 writing at B1/2", b2.get("b3_paced_p99_ms"), "ms", op="<", limit=5.0)
        add("B3 those writes, achieved", b2.get("b3_paced_writes_rps"), "/s", "B1/2 aimed at",
            b2.get("b3_paced_target_writes_rps"))

    # The B4 and B6 targets are set for 100k and 1M names: checked at those sizes only.
    b4_limits = {100_000: 1.0, FULL_NAMES: 3.0}
    for size in [size for size in s.b4_sizes if f"b4_{size}" in res]:
        b4 = res[f"b4_{size}"]["median"]
        limit = b4_limits.get(size)
        if limit:
            add(f"B4 convergence, {fmt(size)} names", b4.get("seconds"), "s", op="<", limit=limit,
                shown=f"< {limit:.0f} s")
        else:
            add(f"B4 convergence, {fmt(size)} names", b4.get("seconds"), "s")
            out[-1].target = "< 1 s at 100k, < 3 s at 1M"
        add("B4 bytes received per name", b4.get("bytes_per_name"), "B/name", op="<", limit=60)
        add(f"B4 CPU of the 3 nodes while catching up, {fmt(size)} names", b4.get("cpu_seconds_catching_up"), "s")

    if "b5" in res:
        b5, b6, n = res["b5"]["median"], res["b5"]["b6"], s.b5_size
        add(f"B5 restart to serving, {fmt(n)} names", b5.get("seconds"), "s", op="<", limit=0.5)
        op_1m = "<" if n == FULL_NAMES else None
        add(f"B6 RSS, {fmt(n)} names", b6["rss_bytes"], "MB", op=op_1m, limit=200e6)
        out[-1].target = "< 200 MB at 1M"
        add("B6 RSS per name", b6["rss_bytes"] / n, "B/name")
        add("B6 RSS right after the writes", b6["rss_bytes_after_writes"], "MB", op=op_1m, limit=200e6)
        out[-1].target = "< 200 MB at 1M"
        add("B6 data folder on disk", b6["disk_bytes"], "MB")
        add("B6 disk per name", b6["disk_bytes"] / n, "B/name")

    if "b7" in res:
        b7 = res["b7"]["median"]
        add("B7 batch increments/s, 16 conn", b7.get("increments_per_s"), "/s", "B1 tally, 64 conn", t64,
            ">=", 1_000_000)
        add("B7 batch p99", b7.get("batch_p99_ms"), "ms")
    return out


def print_table(table: list[Row]) -> None:
    header = ("figure", "value", "anchor", "anchor value", "ratio", "target", "met")
    lines = [header] + [
        (
            r.figure,
            fmt(r.value, r.unit),
            r.anchor,
            fmt(r.anchor_value, r.unit) if r.anchor else "",
            f"{r.ratio:.2f}x" if r.ratio is not None else "",
            r.target,
            {True: "yes", False: "NO", None: ""}[r.met],
        )
        for r in table
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {1, 3, 4}  # numbers

    def cells(line):
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
        return "| " + " | ".join(padded) + " |"

    print(cells(header))
    print("|" + "|".join("-" * (w + 1) + (":" if i in right else "-") for i, w in enumerate(widths)) + "|")
    for line in lines[1:]:
        print(cells(line))


def command_output(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine(tmp: Path) -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "os": command_output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": command_output(["git", "rev-parse", "HEAD"]) + ("-dirty" if dirty else ""),
        "tally_version": command_output([str(TALLY), "--version"]),
        "wrk": command_output(["wrk", "--version"]).split(" Copyright")[0].strip(),
        "redis": command_output(["redis-server", "--version"]),
        "data_filesystem": command_output(["findmnt", "-n", "-o", "FSTYPE", "-T", str(tmp)]),
        "data_device": command_output(["findmnt", "-n", "-o", "SOURCE", "-T", str(tmp)]),
        "loadavg_at_start": LOADAVG_AT_START,
    }


def cleanup(tmp: Path, keep_logs: bool) -> None:
    """Removes the run's folder; after a failure keeps its logs and scripts."""
    if os.environ.get("BENCH_KEEP") == "1":
        log(f"kept {tmp}")
    elif keep_logs:
        for entry in tmp.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
        log(f"logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# The regression guard: ratios measured side by side, each against a value
# recorded in a file; only a fall below half of it fails (the ratios are
# noisy, the guard only has to catch a 2x regression).

GUARD_RATIOS = {
    # name: (figure, anchor), both keys of the B1 or B2/B3 medians
    "b1_64_vs_redis_always_64": ("tally64_rps", "redis_always64_rps"),
    "b1_1_vs_redis_always_1": ("tally1_rps", "redis_always1_rps"),
    "b2_vs_b1_64": ("b2_rps", "tally64_rps"),
    "b3_idle_vs_b1_64": ("b3_idle_rps", "tally64_rps"),
    "b3_paced_vs_b3_idle": ("b3_paced_rps", "b3_idle_rps"),
}


def guard_ratios(res: dict) -> dict:
    medians = {**res.get("b1", {}).get("median", {}), **res.get("b2", {}).get("median", {})}
    out = {}
    for name, (figure, anchor) in GUARD_RATIOS.items():
        value, base = medians.get(figure), medians.get(anchor)
        out[name] = value / base if value and base else None
    return out


def guard_verdict(measured: dict, recorded: dict) -> list[str]:
    """What fails the guard: a recorded ratio measured below half its value,
    or not measured at all; an empty list passes."""
    failures = []
    for name, value in recorded.items():
        got = measured.get(name)
        if got is None:
            failures.append(f"{name}: not measured (recorded {value:.2f})")
        elif got < value / 2:
            failures.append(f"{name}: {got:.2f}, below half of the recorded {value:.2f}")
    return failures


def run_guard(res: dict, path: Path) -> int:
    recorded = json.loads(path.read_text())["ratios"]
    unknown = sorted(set(recorded) - set(GUARD_RATIOS))
    if unknown:
        log(f"FAILED: {path} records ratios this script does not measure: {', '.join(unknown)}")
        return 1
    measured = guard_ratios(res)
    print(f"\nregression guard against {path} (fails below half of a recorded ratio):")
    for name, value in recorded.items():
        got = measured.get(name)
        shown = f"{got:.2f}" if got is not None else "-"
        verdict = "ok" if got is not None and got >= value / 2 else "FAIL"
        print(f"  {name:<28} measured {shown:>6}  recorded {value:.2f}  floor {value / 2:.2f}  {verdict}")
    failures = guard_verdict(measured, recorded)
    for f in failures:
        log(f"regression: {f}")
    if failures:
        log(f"FAILED: {len(failures)} ratio(s) fell below half their recorded value")
        return 1
    log("regression guard passed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="1 round x 1 s and small sizes")
    parser.add_argument("--guard", type=Path, metavar="FILE",
                        help="regression guard: B1 and B2/B3 only, ratios checked against FILE")
    args = parser.parse_args()
    if args.guard:
        global GUARD
        GUARD = True
        if not args.guard.is_file():
            log(f"FAILED: {args.guard}: no such file")
            return 1
        os.environ.setdefault("BENCH_ROUNDS", "1")
        os.environ.setdefault("BENCH_SECONDS", "3")
        os.environ["BENCH_ONLY"] = "guard"

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    s = settings(args.smoke)
    ensure_tools()
    global LOADAVG_AT_START
    LOADAVG_AT_START = os.getloadavg()[0]
    if LOADAVG_AT_START > 0.5:
        log(f"warning: load average {LOADAVG_AT_START:.2f} at start: other work shares the CPUs")
    base = Path(os.environ.get("BENCH_DIR") or ROOT / "target" / "bench")
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    run = Run(s, tmp)
    log(f"{s.rounds} round(s) x {s.seconds} s; B4 with {s.b4_sizes} names; B5/B6 with {s.b5_size}; in {tmp}")
    ok = interrupted = False
    started = time.monotonic()
    try:
        res = run.results
        only = os.environ.get("BENCH_ONLY", "").strip()
        if only not in ("", "b1", "b2", "b4", "b7", "tls", "guard"):
            raise BenchError(f"BENCH_ONLY={only}: known parts are b1, b2, b4, b7 and tls")
        wanted = lambda part: not only or part == only or (only == "guard" and part in ("b1", "b2"))  # noqa: E731
        if wanted("b1"):
            res["b1"] = b1_single_node(run)
        if wanted("b2"):
            res["b2"] = b2_b3_cluster(run, res.get("b1", {}).get("median", {}).get("tally64_rps"))
        # B5 and B6 reuse the last B4 cluster of their size (s.b5_size is one of b4_sizes).
        for size in s.b4_sizes if wanted("b4") else []:
            keep = size == s.b5_size
            res[f"b4_{size}"], nodes, known = b4_convergence(run, size, keep)
            if keep:
                rss_after = res[f"b4_{size}"]["raw"]["node1_rss_after_writes"][-1]
                res["b5"] = b5_b6_restart(run, nodes, known, size, rss_after)
        if wanted("b7"):
            res["b7"] = b7_batches(run)
        if wanted("tls"):
            res["tls"] = tls_b1_b3(run)
        table = rows(res, s)
        ok = True
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; stopping every process")
        return 130
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
        stop_all()
        cleanup(tmp, keep_logs=not ok and not interrupted)

    report = {
        "machine": machine(base),
        "settings": {"rounds": s.rounds, "seconds": s.seconds, "b4_sizes": s.b4_sizes,
                     "b5_names": s.b5_size, "smoke": s.smoke, "names": NAMES},
        "commands": run.commands,
        "results": res,
        "table": [{**r.__dict__, "ratio": r.ratio} for r in table],
        "elapsed_seconds": time.monotonic() - started,
    }
    results = RESULTS.with_name("guard.json") if args.guard else RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    print(f"\n{m['tally_version']} at {m['git_commit'][:12]}; {m['cpu']}, {m['nproc']} cpus, "
          f"Linux {m['kernel']}, data on {m['data_filesystem']} ({m['data_device']}); "
          f"{s.rounds} round(s) x {s.seconds} s, medians\n")
    print_table(table)
    print("\nWhat ran:")
    for key, command in run.commands.items():
        for name, text in (command.items() if isinstance(command, dict) else [("", command)]):
            print(f"  {key} {name}: {text}".replace("  :", ":").replace(" :", ":"))
    print(f"\nraw rounds: {results.relative_to(ROOT)}")
    if args.guard:
        return run_guard(res, args.guard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
