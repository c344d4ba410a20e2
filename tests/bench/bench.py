#!/usr/bin/env python3
"""berth benchmarks: respawn latency, crash-loop schedule, cold start, footprint.

Run through tests/bench.sh (which builds the release binary first). Python 3.11
standard library only. Every figure is measured side by side with its baseline
in the same run, on the local Docker engine, and reported as a ratio together
with the engine's floor. Writes docs/benchmarks.md (not with --quick) and the
raw samples to target/bench/results.json.

Exit status: 0 when every measurement was made (goals met or not), 1 when a
measurement could not be made, 130 when interrupted. Containers created here
carry the label bench.berth.run=<run id> and are always removed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE = "berth-test/busybox:base"
IMAGE_TMPL = "berth-test/busybox:{version}"
HOST_BUSYBOX = "/usr/bin/busybox"
SHA_LABEL = "berth.test.busybox-sha256"
RUN_LABEL = "bench.berth.run"
PHASE_LABEL = "bench.berth.phase"
SLEEP_CMD = ["sleep", "3600"]
CRASH_CMD = ["sh", "-c", "exit 1"]
# berth's default restart policy: 0, 1, 2, 4, 8, 16, 30, 30 ... s
BERTH_SCHEDULE_S = [0, 1, 2, 4, 8, 16, 30, 30, 30, 30]
# Docker's restart manager: 100 ms doubling, capped at 1 min
DOCKER_SCHEDULE_S = [0.1 * 2**i for i in range(10)]

T_START = time.monotonic()


class BenchError(Exception):
    """A measurement could not be made."""


def log(phase: str, msg: str) -> None:
    el = time.monotonic() - T_START
    print(f"[{int(el // 60):02d}:{el % 60:04.1f}] {phase}: {msg}", flush=True)


# --------------------------------------------------------------------------
# Docker Engine API over the unix socket
# --------------------------------------------------------------------------


def docker_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise BenchError(f"DOCKER_HOST={host}: only a unix socket is supported")
    return host[len("unix://"):]


class UnixConn(http.client.HTTPConnection):
    def __init__(self, path: str | None = None, timeout: float = 120):
        super().__init__("localhost", timeout=timeout)
        self.sock_path = path or docker_socket()

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.sock_path)
        self.sock = s


def api(method: str, path: str, body=None, conn: UnixConn | None = None, ok=(200, 201, 204, 304)):
    """One API call; returns (status, decoded JSON or None). Raises BenchError on a bad status."""
    own = conn is None
    c = conn or UnixConn()
    try:
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        if r.status not in ok:
            raise BenchError(f"{method} {path}: HTTP {r.status}: {raw.decode(errors='replace').strip()}")
        if raw and r.getheader("Content-Type", "").startswith("application/json"):
            return r.status, json.loads(raw)
        return r.status, None
    finally:
        if own:
            c.close()


def q(**params) -> str:
    return urllib.parse.urlencode(params)


def inspect(cid: str, conn: UnixConn | None = None) -> dict:
    return api("GET", f"/containers/{cid}/json", conn=conn)[1]


def list_containers(*labels: str) -> list[dict]:
    filters = json.dumps({"label": list(labels)})
    return api("GET", "/containers/json?" + q(all="1", filters=filters))[1] or []


def remove_containers(*labels: str) -> int:
    n = 0
    for c in list_containers(*labels):
        try:
            api("DELETE", f"/containers/{c['Id']}?force=1&v=1", ok=(200, 204, 404, 409))
            n += 1
        except (BenchError, OSError) as e:
            print(f"warning: cannot remove {c['Id'][:12]}: {e}", file=sys.stderr)
    return n


def create_body(cmd: list[str], labels: dict[str, str], restart: str | None = None) -> dict:
    body = {"Image": IMAGE, "Cmd": cmd, "Labels": labels, "HostConfig": {}}
    if restart:
        body["HostConfig"]["RestartPolicy"] = {"Name": restart}
    return body


def create(name: str, cmd: list[str], labels: dict[str, str], restart: str | None = None,
           conn: UnixConn | None = None) -> str:
    return api("POST", "/containers/create?" + q(name=name), create_body(cmd, labels, restart), conn=conn)[1]["Id"]


def start(cid: str, conn: UnixConn | None = None) -> None:
    api("POST", f"/containers/{cid}/start", conn=conn)


def kill9_main(cid: str, conn: UnixConn | None = None) -> int:
    """SIGKILLs the container's main process from the host (not `docker kill`)."""
    st = inspect(cid, conn)["State"]
    pid = int(st.get("Pid") or 0)
    if not st.get("Running") or pid == 0:
        raise BenchError(f"container {cid[:12]} is not running (state {st.get('Status')}), cannot kill it")
    os.kill(pid, signal.SIGKILL)
    return pid


# --------------------------------------------------------------------------
# The engine's event stream
# --------------------------------------------------------------------------


class Events:
    """`docker events --format '{{json .}}' --filter type=container`, for a whole phase.

    Starts with --since (a moment before the phase) so nothing between the
    subscription and the first action is missed. Keeps start/die/destroy events.
    """

    KEEP = {"start", "die", "destroy", "create"}

    def __init__(self) -> None:
        since = time.time_ns() - 50_000_000
        self.proc = subprocess.Popen(
            ["docker", "events", "--format", "{{json .}}", "--filter", "type=container",
             "--since", f"{since // 10**9}.{since % 10**9:09d}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            stdin=subprocess.DEVNULL, process_group=0)
        self.events: list[dict] = []
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            action = e.get("Action") or e.get("status") or ""
            if action not in self.KEEP:
                continue
            actor = e.get("Actor") or {}
            attrs = actor.get("Attributes") or {}
            ev = {"action": action, "id": actor.get("ID") or e.get("id"), "t": int(e["timeNano"]),
                  "name": attrs.get("name"), "exit": attrs.get("exitCode")}
            with self.cond:
                self.events.append(ev)
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait(self, fn, timeout: float, what: str):
        """Waits until fn(events) returns something other than None; raises BenchError on timeout."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = fn(self.events)
                if v is not None:
                    return v
                left = deadline - time.monotonic()
                if self.closed:
                    err = self.proc.stderr.read() if self.proc.stderr else ""
                    raise BenchError(f"docker events exited while waiting for {what}: {err.strip()}")
                if left <= 0:
                    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
                self.cond.wait(min(left, 1.0))

    def snapshot(self) -> list[dict]:
        with self.cond:
            return list(self.events)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def last_starts_by_name(names: list[str], after_ns: int):
    """fn for Events.wait: the latest `start` time once every name has started after after_ns."""

    def fn(events):
        seen = {}
        for e in events:
            if e["action"] == "start" and e["name"] in names and e["t"] >= after_ns and e["name"] not in seen:
                seen[e["name"]] = e["t"]
        return max(seen.values()) if len(seen) == len(names) else None

    return fn


# --------------------------------------------------------------------------
# The berth agent
# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    """One `berth run` in local mode, in its own temp dir (manifest, local file, data dir, log)."""

    def __init__(self, berth: str, tmp: Path, namespace: str, containers: list[tuple[str, list[str]]],
                 labels: dict[str, str], extra_env: dict[str, str] | None = None):
        self.berth = berth
        self.extra_env = extra_env or {}
        self.namespace = namespace
        self.dir = Path(tempfile.mkdtemp(prefix=f"{namespace}-", dir=tmp))
        self.data = self.dir / "data"
        self.data.mkdir()
        self.port = free_port()
        self.cfg = self.dir / "berth.toml"
        self.local = self.dir / "local.toml"
        self.logf = self.dir / "agent.log"
        lab = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in labels.items())
        out = [
            "[agent]",
            f'namespace = "{namespace}"',
            f'status_addr = "127.0.0.1:{self.port}"',
            f"data_dir = {json.dumps(str(self.data))}",
            "",
            "[clusters.web]",
        ]
        for name, cmd in containers:
            out += ["", "[[clusters.web.containers]]", f'name = "{name}"', f'image = "{IMAGE_TMPL}"',
                    f"command = {json.dumps(cmd)}", f"labels = {{ {lab} }}"]
        self.cfg.write_text("\n".join(out) + "\n")
        self.local.write_text('instance_id = "i-bench"\ngroup = "web"\n[tags]\n"berth:version" = "base"\n')
        self.proc: subprocess.Popen | None = None
        self.t_launch = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_") and k != "NOTIFY_SOCKET"}
        env["RUST_LOG"] = "info"
        env.update(self.extra_env)
        return env

    def validate(self) -> None:
        r = subprocess.run([self.berth, "validate", "--config", str(self.cfg), "--local", str(self.local)],
                           capture_output=True, text=True, env=self.env(), timeout=60)
        if r.returncode != 0:
            raise BenchError(f"berth validate failed ({r.returncode}): {r.stdout}{r.stderr}")

    def start(self) -> int:
        logfh = open(self.logf, "ab")
        self.t_launch = time.time_ns()
        self.proc = subprocess.Popen(
            [self.berth, "run", "--config", str(self.cfg), "--local", str(self.local)],
            stdin=subprocess.DEVNULL, stdout=logfh, stderr=subprocess.STDOUT, env=self.env(),
            process_group=0)  # Ctrl-C goes to this script only, which stops the agent and cleans up
        logfh.close()
        return self.t_launch

    def status(self) -> dict | None:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", "/status")
            r = c.getresponse()
            body = r.read()
            return json.loads(body) if r.status == 200 else None
        except (OSError, ValueError):
            return None
        finally:
            c.close()

    def json_log(self) -> list[dict]:
        """The agent's log lines (run with BERTH_LOG_FORMAT=json), each with `t` in ns since the epoch."""
        out = []
        for line in self.logf.read_text(errors="replace").splitlines():
            try:
                d = json.loads(line)
                ts = d["timestamp"].replace("Z", "+00:00")
                whole, _, frac = ts.partition(".")
                frac, _, _ = frac.partition("+")
                t = dt.datetime.fromisoformat(whole + "+00:00")
                d["t"] = int(t.timestamp()) * 10**9 + int((frac + "000000000")[:9])
                out.append(d)
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.logf.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"berth ({self.namespace}) exited with {self.proc.returncode}:\n{self.log_tail()}")
            st = self.status()
            if st and st.get("state") == "ready":
                return st
            time.sleep(0.05)
        raise BenchError(f"berth ({self.namespace}) not ready after {timeout:.0f}s: "
                         f"{json.dumps(self.status())}\n{self.log_tail()}")

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------
# Statistics and formatting
# --------------------------------------------------------------------------


def text_log_time(line: str) -> int | None:
    """ns since the epoch of a text-format log line ("2026-11-21T09:07:59.483241Z  INFO ...")."""
    try:
        whole, _, frac = line.split()[0].rstrip("Z").partition(".")
        t = dt.datetime.fromisoformat(whole + "+00:00")
        return int(t.timestamp()) * 10**9 + int((frac + "000000000")[:9])
    except (ValueError, IndexError):
        return None


def pct(xs: list[float], p: float) -> float:
    """Percentile with linear interpolation between closest ranks (numpy's default)."""
    s = sorted(xs)
    if not s:
        raise BenchError("no samples")
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs_ns: list[int]) -> dict:
    return {"n": len(xs_ns), "p50": pct(xs_ns, 50), "p99": pct(xs_ns, 99), "min": min(xs_ns),
            "max": max(xs_ns), "mean": statistics.fmean(xs_ns)}


def sig(x: float, digits: int = 3) -> str:
    """x with `digits` significant digits (trailing zeros kept: 1.00, 0.0830), no exponent."""
    if x == 0:
        return "0"
    s = f"{x:#.{digits}g}"
    if "e" in s:
        s = f"{x:.0f}"
    return s.rstrip(".")


def fmt_ns(ns: float) -> str:
    ms = ns / 1e6
    if abs(ms) >= 1000:
        return f"{sig(ms / 1000)} s"
    return f"{sig(ms)} ms"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}×"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


# --------------------------------------------------------------------------
# The benchmark run
# --------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.berth = str(Path(args.berth).resolve())
        self.run_id = f"{os.getpid()}-{int(time.time())}"
        self.prefix = f"bench{os.getpid()}"
        self.tmp = Path(tempfile.mkdtemp(prefix="berth-bench-"))
        self.agents: list[Agent] = []
        self.events: list[Events] = []
        self.results: dict = {"run_id": self.run_id, "args": vars(args)}

    def labels(self, phase: str) -> dict[str, str]:
        return {RUN_LABEL: self.run_id, PHASE_LABEL: phase}

    def agent(self, namespace: str, containers, phase: str, extra_env=None) -> Agent:
        a = Agent(self.berth, self.tmp, namespace, containers, self.labels(phase), extra_env)
        self.agents.append(a)
        return a

    def open_events(self) -> Events:
        ev = Events()
        self.events.append(ev)
        return ev

    def cleanup_phase(self, phase: str) -> None:
        for a in self.agents:
            a.stop()
        self.agents.clear()
        for e in self.events:
            e.close()
        self.events.clear()
        remove_containers(f"{RUN_LABEL}={self.run_id}", f"{PHASE_LABEL}={phase}")

    def cleanup(self) -> None:
        for a in self.agents:
            try:
                a.stop()
            except Exception as e:  # noqa: BLE001 - best effort
                print(f"warning: stopping agent: {e}", file=sys.stderr)
        for e in self.events:
            e.close()
        try:
            n = remove_containers(f"{RUN_LABEL}={self.run_id}")
            if n:
                # A create interrupted on the client side may still complete in the engine.
                time.sleep(1)
                n += remove_containers(f"{RUN_LABEL}={self.run_id}")
                log("cleanup", f"removed {n} container(s)")
        except Exception as e:  # noqa: BLE001
            print(f"warning: cleanup: {e}", file=sys.stderr)
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---------------------------------------------------------------- setup

    def machine(self) -> dict:
        cpu = "?"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = 0
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
        info = api("GET", "/info")[1]
        ver = api("GET", "/version")[1]
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        bv = subprocess.run([self.berth, "--version"], capture_output=True, text=True).stdout.strip()
        size = Path(self.berth).stat().st_size
        ftype = subprocess.run(["file", "-L", self.berth], capture_output=True, text=True).stdout
        syms = subprocess.run(["objdump", "-T", self.berth], capture_output=True, text=True).stdout
        glibc = sorted({tuple(int(x) for x in m.split(".")) for m in re.findall(r"GLIBC_([0-9.]+)", syms)})
        return {
            "binary_bytes": size,
            "binary_stripped": "not stripped" not in ftype,
            "binary_glibc": ".".join(map(str, glibc[-1])) if glibc else "?",
            "nproc": os.cpu_count(),
            "cpu": cpu,
            "mem_gib": mem_kb / 1024 / 1024,
            "kernel": os.uname().release,
            "docker": ver.get("Version"),
            "api": ver.get("ApiVersion"),
            "driver": info.get("Driver"),
            "commit": commit + (" (+ uncommitted changes in src/ or Cargo.*)" if dirty else ""),
            "berth_version": bv,
            "profile": "release" if "/release/" in self.berth else "non-release (" + self.berth + ")",
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg_start": os.getloadavg(),
        }

    def ensure_image(self) -> None:
        st, _ = api("GET", f"/images/{IMAGE}/json", ok=(200, 404))
        if st == 200:
            log("setup", f"reusing {IMAGE}")
            return
        log("setup", f"building {IMAGE} from {HOST_BUSYBOX}")
        sha = hashlib.sha256(Path(HOST_BUSYBOX).read_bytes()).hexdigest()
        ctx = self.tmp / "image"
        ctx.mkdir()
        shutil.copy(HOST_BUSYBOX, ctx / "busybox")
        (ctx / "Dockerfile").write_text(
            f'FROM scratch\nLABEL {SHA_LABEL}="{sha}"\nCOPY busybox /bin/busybox\n'
            'RUN ["/bin/busybox","--install","-s","/bin"]\nCMD ["sleep","3600"]\n')
        r = subprocess.run(["docker", "build", "-q", "-t", IMAGE, str(ctx)], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            raise BenchError(f"docker build failed: {r.stderr}")

    # ---------------------------------------------------------------- floor: start

    def floor_sample(self, cid: str, conn: UnixConn, ev: Events, walls: list[int], on_die: list[int]) -> int:
        """The two floors, on the floor container (no restart policy), stopped since the last sample.

        1. POST /containers/{id}/start on the stopped container, timed at the API (returned, ns);
           the call's wall-clock send time goes to `walls` (to pair with its start event).
        2. kill -9 from the host, and POST start the moment this script sees the `die` event: what
           any client restarting on `die` can get from the engine. Its die time goes to `on_die`
           (die → start is taken from the events afterwards).
        Then kills it again and waits until the engine sees it stopped."""
        if inspect(cid, conn)["State"]["Running"]:
            raise BenchError("floor container unexpectedly running")
        walls.append(time.time_ns())
        t0 = time.perf_counter_ns()
        start(cid, conn)
        took = time.perf_counter_ns() - t0
        time.sleep(0.05)
        t_kill = time.time_ns()
        kill9_main(cid, conn)
        t_die = ev.wait(lambda es: next(
            (e["t"] for e in es if e["id"] == cid and e["action"] == "die" and e["t"] >= t_kill), None),
            timeout=15, what="the floor container's die event")
        start(cid, conn)
        on_die.append(t_die)
        time.sleep(0.05)
        kill9_main(cid, conn)
        api("POST", f"/containers/{cid}/wait?condition=not-running", conn=conn)
        return took

    # ---------------------------------------------------------------- 1. respawn

    def respawn(self) -> dict:
        phase = "respawn"
        per = self.args.containers
        kills_each = self.args.kills
        gap = self.args.kill_interval
        min_run = self.args.min_run
        log(phase, f"{per} berth-managed + {per} --restart=always containers, {kills_each} kills each, "
                   f"one kill every {gap}s alternating")
        ev = self.open_events()
        ns = f"{self.prefix}-resp"
        comps = [(f"r{i}", SLEEP_CMD) for i in range(per)]
        # JSON logs: their timestamps split berth's die → start into reaction and start (diagnostic only).
        a = self.agent(ns, comps, phase, {"BERTH_LOG_FORMAT": "json"})
        a.validate()
        a.start()
        conn = UnixConn()
        dock_ids = []
        for i in range(per):
            cid = create(f"{self.prefix}-dock-r{i}", SLEEP_CMD, self.labels(phase), restart="always", conn=conn)
            start(cid, conn)
            dock_ids.append(cid)
        floor_id = create(f"{self.prefix}-floor", SLEEP_CMD, self.labels(phase), conn=conn)
        a.wait_ready()
        berth_ids = [inspect(f"{ns}-r{i}", conn)["Id"] for i in range(per)]
        log(phase, "berth ready; killing")
        floor_walls: list[int] = []
        floor_dies: list[int] = []
        floor: list[int] = []

        # The schedule: slot s kills berth (even s) or Docker (odd s) container (s // 2) % per.
        ids = {"berth": berth_ids, "docker": dock_ids}

        def last_start(cid):
            for e in reversed(ev.snapshot()):
                if e["id"] == cid and e["action"] == "start":
                    return e["t"]
            return None

        kills = []  # (system, index, cid, kill_ns)
        total = 2 * kills_each
        # Floor samples are interleaved with the kills (after every `every`-th kill, once its restart
        # is seen), so the floor sees the same load on the engine as the restarts.
        every = max(1, total // self.args.floor)
        next_at = time.monotonic()
        for s in range(total):
            system = "berth" if s % 2 == 0 else "docker"
            idx = (s // 2) % per
            cid = ids[system][idx]
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
            ls = last_start(cid)
            if ls is None:
                raise BenchError(f"{system} container {idx}: no start event seen")
            prev = [k for k in kills if k[2] == cid]
            if prev and ls <= prev[-1][3]:
                # not restarted since our last kill: wait a little, then it is an error
                ls = ev.wait(lambda es, c=cid, t=prev[-1][3]: next(
                    (e["t"] for e in es if e["id"] == c and e["action"] == "start" and e["t"] > t), None),
                    timeout=15, what=f"the restart of {system} container {idx}")
            ran = (time.time_ns() - ls) / 1e9
            if ran < min_run:
                time.sleep(min_run - ran)
            t_kill = time.time_ns()
            kill9_main(cid, conn)
            kills.append((system, idx, cid, t_kill))
            if s % every == every - 1 and len(floor) < self.args.floor:
                ev.wait(lambda es, c=cid, t=t_kill: next(
                    (1 for e in es if e["id"] == c and e["action"] == "start" and e["t"] > t), None),
                    timeout=15, what=f"the restart of {system} container {idx}")
                floor.append(self.floor_sample(floor_id, conn, ev, floor_walls, floor_dies))
                next_at = max(next_at + gap, time.monotonic() + 0.3)
            else:
                next_at = max(next_at + gap, time.monotonic())
            if (s + 1) % 10 == 0:
                log(phase, f"{s + 1}/{total} kills, {len(floor)} floor samples")
        # wait for the last restarts
        for system, idx, cid, t in kills[-2 * per:]:
            ev.wait(lambda es, c=cid, t=t: next(
                (1 for e in es if e["id"] == c and e["action"] == "start" and e["t"] > t), None),
                timeout=30, what=f"the restart of {system} container {idx}")
        st = a.status() or {}
        while len(floor) < self.args.floor:
            time.sleep(0.3)
            floor.append(self.floor_sample(floor_id, conn, ev, floor_walls, floor_dies))
        conn.close()

        # Pair each kill with its die and the next start of the same container.
        events = ev.snapshot()
        lat = {"berth": [], "docker": []}
        kill_die = {"berth": [], "docker": []}
        paired = []  # berth: (component, die_t, start_t)
        errors = []
        for k, (system, idx, cid, t_kill) in enumerate(kills):
            nxt = next((kk[3] for kk in kills[k + 1:] if kk[2] == cid), None)
            mine = [e for e in events if e["id"] == cid and e["t"] >= t_kill - 1_000_000
                    and (nxt is None or e["t"] < nxt)]
            die = next((e for e in mine if e["action"] == "die"), None)
            if die is None:
                errors.append(f"kill {k} ({system} #{idx}): no die event")
                continue
            if die["exit"] != "137":
                errors.append(f"kill {k} ({system} #{idx}): die exitCode {die['exit']}, expected 137")
            stt = next((e for e in mine if e["action"] == "start" and e["t"] > die["t"]), None)
            if stt is None:
                errors.append(f"kill {k} ({system} #{idx}): no start after the die")
                continue
            extra = [e for e in mine if e["action"] == "die" and e is not die]
            if extra:
                errors.append(f"kill {k} ({system} #{idx}): {len(extra)} extra die event(s)")
            lat[system].append(stt["t"] - die["t"])
            kill_die[system].append(die["t"] - t_kill)
            if system == "berth":
                paired.append((f"r{idx}", die["t"], stt["t"]))
        # berth's own count: restarts per component == kills
        restarts = {c["name"]: c.get("restarts") for c in st.get("components", [])}
        for i in range(per):
            n = sum(1 for k in kills if k[0] == "berth" and k[1] == i)
            if restarts.get(f"r{i}") != n:
                errors.append(f"berth status says r{i} restarted {restarts.get(f'r{i}')} times, killed {n} times")
        # Docker's own count
        for i, cid in enumerate(dock_ids):
            n = sum(1 for k in kills if k[0] == "docker" and k[1] == i)
            rc = inspect(cid)["RestartCount"]
            if rc != n:
                errors.append(f"Docker says dock-r{i} restarted {rc} times, killed {n} times")
        # The floor's call → start event (the part of the API round trip before the event).
        floor_ev = []
        for w in floor_walls:
            e = next((e for e in events if e["id"] == floor_id and e["action"] == "start" and e["t"] >= w), None)
            if e is None:
                errors.append("floor: a start call without a start event")
            else:
                floor_ev.append(e["t"] - w)
        floor_on_die = []
        for t_die in floor_dies:
            e = next((e for e in events if e["id"] == floor_id and e["action"] == "start" and e["t"] > t_die), None)
            if e is None:
                errors.append("floor: a start on die without a start event")
            else:
                floor_on_die.append(e["t"] - t_die)
        if errors:
            raise BenchError("respawn: " + "; ".join(errors))
        # Diagnostic: berth's "component failed" log line (written when it handles the die event and
        # decides to restart) splits die → start into berth's reaction and the start call.
        react, rest = [], []
        logs = [d for d in a.json_log() if d.get("message") == "component failed"]
        for comp, t_die, t_start in paired:
            hit = next((d["t"] for d in logs if d.get("component") == comp and t_die - 2_000_000 <= d["t"] < t_start),
                       None)
            if hit is not None:
                react.append(hit - t_die)
                rest.append(t_start - hit)
        self.cleanup_phase(phase)
        res = {"berth": summary(lat["berth"]), "docker": summary(lat["docker"]), "floor": summary(floor),
               "floor_to_event": summary(floor_ev), "floor_on_die": summary(floor_on_die),
               "kill_to_die": {k: summary(v) for k, v in kill_die.items()},
               "berth_react": summary(react) if react else None,
               "berth_after_react": summary(rest) if rest else None,
               "samples": {"berth": lat["berth"], "docker": lat["docker"], "floor": floor,
                           "floor_to_event": floor_ev, "floor_on_die": floor_on_die,
                           "kill_to_die": kill_die, "berth_react": react,
                           "berth_after_react": rest}}
        log(phase, f"die→start p50 berth {fmt_ns(res['berth']['p50'])}, Docker {fmt_ns(res['docker']['p50'])}, "
                   f"floor: start on die {fmt_ns(res['floor_on_die']['p50'])}, API start {fmt_ns(res['floor']['p50'])}")
        return res

    # ---------------------------------------------------------------- 2. crash loop

    def crash_loop(self) -> dict:
        phase = "crashloop"
        n = self.args.crash_gaps
        log(phase, f"sh -c 'exit 1' under berth and under --restart=always; first {n} die→start gaps each")
        ev = self.open_events()
        ns = f"{self.prefix}-crash"
        a = self.agent(ns, [("crash", CRASH_CMD)], phase)
        a.validate()
        bname = f"{ns}-crash"
        dname = f"{self.prefix}-dcrash"
        a.start()
        cid = create(dname, CRASH_CMD, self.labels(phase), restart="always")
        start(cid)

        def gaps(events, name):
            out = []
            pending = None
            for e in events:
                if e["name"] != name:
                    continue
                if e["action"] == "die" and pending is None:
                    pending = e["t"]
                elif e["action"] == "start" and pending is not None:
                    out.append(e["t"] - pending)
                    pending = None
            return out

        # Rough expected total: berth's schedule, plus slack for each start.
        timeout = sum(BERTH_SCHEDULE_S[:n]) + 2 * n + 30
        deadline = time.monotonic() + timeout
        dock_done = None
        last_report = 0
        last_status = 0.0
        states: list[str] = []  # berth's component states as seen, in order (once each)
        failed_at = None  # consecutive failures when status first said `failed`
        max_failures = 0
        while True:
            if time.monotonic() - last_status >= 1.0:
                last_status = time.monotonic()
                st = a.status() or {}
                comp = next((c for c in st.get("components", []) if c.get("name") == "crash"), {})
                if comp.get("state") and comp["state"] not in states:
                    states.append(comp["state"])
                max_failures = max(max_failures, comp.get("failures") or 0)
                if comp.get("state") == "failed" and failed_at is None:
                    failed_at = comp.get("failures")
            es = ev.snapshot()
            bg, dg = gaps(es, bname), gaps(es, dname)
            if dock_done is None and len(dg) >= n:
                dock_done = dg[:n]
                api("DELETE", f"/containers/{cid}?force=1", ok=(200, 204, 404))
                log(phase, f"Docker: {n} gaps recorded, container removed")
            if len(bg) >= n and dock_done is not None:
                break
            if a.proc is not None and a.proc.poll() is not None:
                raise BenchError(f"berth exited with {a.proc.returncode}:\n{a.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"crash loop: after {timeout}s only {len(bg)} berth / {len(dg)} Docker gaps")
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                log(phase, f"gaps so far: berth {len(bg)}/{n}, Docker {min(len(dg), n)}/{n}")
            time.sleep(0.2)
        self.cleanup_phase(phase)
        res = {"berth": bg[:n], "docker": dock_done, "berth_states": states, "berth_failed_at": failed_at,
               "berth_max_failures": max_failures}
        log(phase, "berth " + ", ".join(fmt_ns(x) for x in res["berth"]))
        log(phase, "Docker " + ", ".join(fmt_ns(x) for x in res["docker"]))
        return res

    # ---------------------------------------------------------------- 3. cold start

    def cold_start(self) -> dict:
        phase = "cold"
        k = self.args.cold_containers
        reps = self.args.cold_reps
        ns = f"{self.prefix}-cold"
        names = [f"{ns}-c{i}" for i in range(k)]
        labels = self.labels(phase)
        log(phase, f"{k} containers: berth run vs a shell loop of docker run -d vs parallel create+start; "
                   f"{reps} repetitions (+1 warm-up), interleaved")
        ev = self.open_events()

        def clean():
            remove_containers(f"{RUN_LABEL}={self.run_id}", f"{PHASE_LABEL}={phase}")
            left = [c for c in list_containers(f"{RUN_LABEL}={self.run_id}", f"{PHASE_LABEL}={phase}")]
            if left:
                raise BenchError(f"cold start: {len(left)} container(s) left after removal")
            time.sleep(1.0)

        def run_berth():
            a = Agent(self.berth, self.tmp, ns, [(f"c{i}", SLEEP_CMD) for i in range(k)], labels)
            self.agents.append(a)
            t0 = a.start()
            end = ev.wait(last_starts_by_name(names, t0), 60, "berth's containers to start")
            st = a.wait_ready(60)
            t_ready = time.time_ns()
            a.stop()
            self.agents.remove(a)
            if st.get("state") != "ready":
                raise BenchError("berth not ready")
            # Diagnostic: berth's own part, from launch to its last "to=Starting" log line (after
            # that line it issues the create; the rest is the engine's work).
            own = None
            for line in a.logf.read_text(errors="replace").splitlines():
                if "to=Starting" in line:
                    own = text_log_time(line)
            return {"t": end - t0, "ready": t_ready - t0, "own": (own - t0) if own else None}

        def run_loop():
            lab = " ".join(f"--label {k_}={v}" for k_, v in labels.items())
            script = (f"for i in $(seq 0 {k - 1}); do docker run -d --name {ns}-c$i {lab} {IMAGE} "
                      f"{' '.join(SLEEP_CMD)} >/dev/null; done")
            t0 = time.time_ns()
            r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
            t_done = time.time_ns()
            if r.returncode != 0:
                raise BenchError(f"docker run loop failed: {r.stderr}")
            end = ev.wait(last_starts_by_name(names, t0), 30, "the loop's containers to start")
            return {"t": end - t0, "ready": t_done - t0}

        def run_floor():
            conns = [UnixConn() for _ in range(k)]
            for c in conns:
                c.connect()
            go = threading.Event()
            errs: list[str] = []
            done: list[int] = []

            def worker(i):
                try:
                    go.wait()
                    cid = create(names[i], SLEEP_CMD, labels, conn=conns[i])
                    start(cid, conns[i])
                    done.append(time.time_ns())
                except Exception as e:  # noqa: BLE001
                    errs.append(str(e))

            ths = [threading.Thread(target=worker, args=(i,)) for i in range(k)]
            for t in ths:
                t.start()
            t0 = time.time_ns()
            go.set()
            for t in ths:
                t.join(120)
            for c in conns:
                c.close()
            if errs:
                raise BenchError("parallel create+start: " + "; ".join(errs))
            end = ev.wait(last_starts_by_name(names, t0), 30, "the floor's containers to start")
            return {"t": end - t0, "ready": max(done) - t0}

        variants = {"berth": run_berth, "loop": run_loop, "floor": run_floor}
        order = list(variants)
        samples = {v: [] for v in order}
        clean()
        for rep in range(reps + 1):
            rot = order[rep % 3:] + order[:rep % 3]
            line = []
            for v in rot:
                r = variants[v]()
                clean()
                if rep > 0:
                    samples[v].append(r)
                line.append(f"{v} {fmt_ns(r['t'])}")
            log(phase, ("warm-up: " if rep == 0 else f"rep {rep}/{reps}: ") + ", ".join(line))
        self.cleanup_phase(phase)
        res = {v: {"median": statistics.median(s["t"] for s in samples[v]),
                   "min": min(s["t"] for s in samples[v]), "max": max(s["t"] for s in samples[v]),
                   "median_ready": statistics.median(s["ready"] for s in samples[v]),
                   "n": len(samples[v])} for v in order}
        own = [x["own"] for x in samples["berth"] if x.get("own") is not None]
        res["berth_own"] = statistics.median(own) if own else None
        res["samples"] = samples
        return res

    # ---------------------------------------------------------------- 4. footprint

    def footprint(self) -> dict:
        phase = "footprint"
        n = self.args.foot_containers
        idle = self.args.idle
        log(phase, f"berth supervising {n} containers; settle {self.args.settle}s, then {idle}s idle")
        ns = f"{self.prefix}-foot"
        a = self.agent(ns, [(f"f{i}", SLEEP_CMD) for i in range(n)], phase)
        a.validate()
        a.start()
        a.wait_ready()
        pid = a.pid()
        time.sleep(self.args.settle)

        def status_kib():
            d = {}
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                key, _, val = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads", "RssAnon", "RssFile"):
                    d[key] = int(val.split()[0])
            return d

        def ticks():
            s = Path(f"/proc/{pid}/stat").read_text()
            rest = s[s.rindex(")") + 2:].split()
            return int(rest[11]) + int(rest[12])

        before = status_kib()
        t0, c0 = time.monotonic(), ticks()
        step = max(1, idle // 6)
        waited = 0
        while waited < idle:
            time.sleep(min(step, idle - waited))
            waited += min(step, idle - waited)
            if a.proc.poll() is not None:
                raise BenchError(f"berth exited during the idle period:\n{a.log_tail()}")
            log(phase, f"idle {waited}/{idle}s")
        t1, c1 = time.monotonic(), ticks()
        after = status_kib()
        st = a.status() or {}
        if st.get("state") != "ready":
            raise BenchError(f"berth not ready at the end of the idle period: {st.get('state')}")
        clk = os.sysconf("SC_CLK_TCK")
        cpu = (c1 - c0) / clk / (t1 - t0) * 100
        self.cleanup_phase(phase)
        res = {"rss_kib": after["VmRSS"], "rss_before_kib": before["VmRSS"], "hwm_kib": after["VmHWM"],
               "threads": after["Threads"], "rss_anon_kib": after.get("RssAnon"), "rss_file_kib": after.get("RssFile"),
               "cpu_pct": cpu, "ticks": c1 - c0, "clk_tck": clk, "seconds": t1 - t0}
        log(phase, f"VmRSS {res['rss_kib'] / 1024:.1f} MiB, VmHWM {res['hwm_kib'] / 1024:.1f} MiB, CPU {cpu:.3f} %")
        return res

    # ---------------------------------------------------------------- report

    def report(self) -> str:
        r = self.results
        m = r["machine"]
        rs, cl, cs, fp = r["respawn"], r["crashloop"], r["cold"], r["footprint"]
        L = []
        L += [
            "# Benchmarks",
            "",
            "Generated by `tests/bench.sh` (`tests/bench/bench.py`); do not edit by hand. Rerun with",
            "`tests/bench.sh` (about 7 minutes plus the release build; needs the Docker engine on",
            "`/var/run/docker.sock`). It measures the release binary of berth on the local engine against",
            "Docker's own baselines and against the engine's floors, all in the same run: absolute times",
            "move from run to run on these machines, the ratios are what to compare. Method notes are at",
            "the end.",
            "",
            "## Machine",
            "",
            "| | |",
            "|---|---|",
            f"| CPUs (`nproc`) | {m['nproc']} |",
            f"| CPU | {m['cpu']} |",
            f"| memory | {m['mem_gib']:.1f} GiB |",
            f"| kernel | {m['kernel']} |",
            f"| Docker server | {m['docker']} (API {m['api']}) |",
            f"| storage driver | {m['driver']} |",
            f"| berth | {m['berth_version']}, commit {m['commit']}, {m['profile']} build |",
            f"| date | {m['date']} |",
            f"| load average (1 min) at start → end | {m['loadavg_start'][0]:.2f} → {m['loadavg_end'][0]:.2f} |",
            f"| run time | {r['runtime_s'] / 60:.1f} min |",
            "",
        ]
        b, d, f, fd = rs["berth"], rs["docker"], rs["floor"], rs["floor_on_die"]
        L += [
            "## 1. Respawn latency",
            "",
            f"A container's main process is killed from the host (`kill -9`); die → start from the engine's "
            f"event stream. berth: {self.args.containers} containers under berth (default restart policy); "
            f"baseline: {self.args.containers} containers under Docker's `--restart=always`. Two floors, "
            "sampled between the kills on a container without a restart policy: *start on die*, die → start "
            "when this script sends `POST /containers/{id}/start` the moment it sees the `die` event (the "
            "best any client restarting on `die` can do on this engine), and *API start*, the same call on a "
            "container stopped for seconds, timed at the API. "
            f"n = {b['n']} (berth), {d['n']} (Docker), {fd['n']} (each floor).",
            "",
            "| | berth | Docker `--restart=always` | floor: start on die | floor: API start | berth / Docker "
            "| berth / start on die | berth / API start | goal | |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key in ("p50", "p99", "min", "max"):
            goal = "berth p50 ≤ Docker p50" if key == "p50" else ""
            ok = met(b["p50"] <= d["p50"]) if key == "p50" else ""
            L.append(f"| {key} | {fmt_ns(b[key])} | {fmt_ns(d[key])} | {fmt_ns(fd[key])} | {fmt_ns(f[key])} | "
                     f"{fmt_ratio(b[key] / d[key])} | {fmt_ratio(b[key] / fd[key])} | {fmt_ratio(b[key] / f[key])} "
                     f"| {goal} | {ok} |")
        kd = rs["kill_to_die"]
        fe = rs["floor_to_event"]

        def above(x):
            return f"{fmt_ns(abs(x))} {'above' if x >= 0 else 'below'}"

        L += [
            "",
            f"At p50 berth is {above(b['p50'] - fd['p50'])} the start-on-die floor and Docker "
            f"{above(d['p50'] - fd['p50'])} it (Docker's restart manager waits at least 100 ms). A start issued "
            f"on `die` costs {above(fd['p50'] - f['p50'])} the API start on a container stopped for a while "
            "(see the notes on the engine's cleanup below). For context: from sending the API-start call to "
            f"its `start` event, p50 {fmt_ns(fe['p50'])} (the rest of the round trip is the reply); from the "
            f"host's `kill -9` to the `die` event, p50 {fmt_ns(kd['berth']['p50'])} for berth's containers "
            f"and {fmt_ns(kd['docker']['p50'])} for Docker's.",
            "",
        ]
        if rs.get("berth_react"):
            br, ba = rs["berth_react"], rs["berth_after_react"]
            L += [
                f"Where berth's die → start goes (from its own log timestamps, n = {br['n']}): from the `die` "
                f"event to berth logging `component failed` (event delivery and the decision), p50 "
                f"{fmt_ns(br['p50'])}, p99 {fmt_ns(br['p99'])}; from there to the `start` event (the start "
                f"call in the engine), p50 {fmt_ns(ba['p50'])}, p99 {fmt_ns(ba['p99'])}.",
                "",
            ]
        L += [
            "## 2. Crash-loop schedule",
            "",
            "`sh -c 'exit 1'`, under berth (default policy: `initial_delay = \"1s\"`, `max_delay = \"30s\"`, "
            "`stable_after = \"10s\"`, `failure_budget = 5`) and under Docker's `--restart=always`, side by "
            "side: the gap between each `die` and the next `start` of the same container (engine events). Each "
            "gap is the policy's delay plus the start itself, so the first row shows what one start costs here.",
            "",
            "| # | berth | berth's policy (±10 %) | Docker `--restart=always` | Docker's policy |",
            "|---|---|---|---|---|",
        ]
        for i in range(len(cl["berth"])):
            L.append(f"| {i + 1} | {fmt_ns(cl['berth'][i])} | {sig(BERTH_SCHEDULE_S[i])} s | "
                     f"{fmt_ns(cl['docker'][i])} | {sig(DOCKER_SCHEDULE_S[i])} s |")
        L += [
            "",
            "berth's status API (polled every second) showed the component as "
            + ", ".join(f"`{x}`" for x in cl.get("berth_states", [])) + "; "
            + (f"`failed` from {cl['berth_failed_at']} consecutive failures on (`failure_budget` is 5; it "
               "keeps retrying every `max_delay`)" if cl.get("berth_failed_at") else "never `failed`")
            + f", up to {cl.get('berth_max_failures')} consecutive failures.",
            "",
        ]
        cb, cloop, cf = cs["berth"], cs["loop"], cs["floor"]
        rl, rf = cb["median"] / cloop["median"], cb["median"] / cf["median"]
        L += [
            "## 3. Cold start",
            "",
            f"{self.args.cold_containers} containers (`sleep 3600`), image already local, no containers left "
            f"between repetitions; {cb['n']} repetitions of each, interleaved (after one warm-up). berth: from "
            "launching `berth run` (fresh data dir: it pins, inspects the image, creates and starts) to the "
            "last container's `start` event; loop: a shell loop of `docker run -d` (same image, command, "
            "names, labels), from launching the shell to the last `start` event; floor: the "
            f"{self.args.cold_containers} create + start calls issued in parallel to the API (one thread and "
            "connection each), from the first call to the last `start` event. Medians, and the range.",
            "",
            "| | berth | `docker run -d` loop | parallel create+start (floor) | ratio | goal | |",
            "|---|---|---|---|---|---|---|",
            f"| all running (median) | {fmt_ns(cb['median'])} | {fmt_ns(cloop['median'])} | {fmt_ns(cf['median'])} "
            f"| berth / loop {fmt_ratio(rl)} | ≤ 0.50× | {met(rl <= 0.5)} |",
            f"| | | | | berth / floor {fmt_ratio(rf)} | ≤ 1.10× | {met(rf <= 1.10)} |",
            f"| | | | | floor / loop {fmt_ratio(cf['median'] / cloop['median'])} | (what the engine allows) | |",
            f"| range | {fmt_ns(cb['min'])}–{fmt_ns(cb['max'])} | {fmt_ns(cloop['min'])}–{fmt_ns(cloop['max'])} "
            f"| {fmt_ns(cf['min'])}–{fmt_ns(cf['max'])} | | | |",
            f"| berth `/status` ready · loop exits · last API reply (median) | {fmt_ns(cb['median_ready'])} "
            f"| {fmt_ns(cloop['median_ready'])} | {fmt_ns(cf['median_ready'])} | | | |",
            "",
        ]
        if cs.get("berth_own") is not None:
            L += [
                f"berth's own part (from its log: launch → its last component set to `starting`, i.e. all "
                f"{self.args.cold_containers} creates issued), median {fmt_ns(cs['berth_own'])}; the rest is the "
                "engine creating and starting the containers in parallel, as in the floor. The goal "
                "berth / loop ≤ 0.50× can only be met where the floor itself is well under half the loop.",
                "",
            ]
        rss = fp["rss_kib"] / 1024
        tick_pct = 100 / fp["clk_tck"] / fp["seconds"]
        if fp["ticks"] == 0:
            cpu_txt = f"< {sig(tick_pct, 2)} % of one core (0 ticks in {fp['seconds']:.0f} s)"
        else:
            cpu_txt = f"{sig(fp['cpu_pct'], 2)} % of one core ({fp['ticks']} ticks in {fp['seconds']:.0f} s)"
        hwm = fp["hwm_kib"] / 1024
        L += [
            "## 4. Footprint",
            "",
            f"The release agent supervising {self.args.foot_containers} containers, after `ready` and "
            f"{self.args.settle} s of settling; CPU over {fp['seconds']:.0f} s idle ((utime + stime) from "
            f"`/proc/PID/stat`, CLK_TCK {fp['clk_tck']}) as % of one core. No baseline: Docker's restart "
            "policy lives inside `dockerd`, so there is no separate process to compare with; the goals are "
            "absolute.",
            "",
            "| | berth | goal | |",
            "|---|---|---|---|",
            f"| VmRSS | {sig(rss)} MiB | ≤ 15 MiB | {met(rss <= 15)} |",
            f"| VmHWM (peak RSS) | {sig(hwm)} MiB | ≤ 15 MiB | {met(hwm <= 15)} |",
            f"| CPU, idle | {cpu_txt} | < 1 % | {met(fp['cpu_pct'] < 1)} |",
            f"| VmRSS right after settling | {sig(fp['rss_before_kib'] / 1024)} MiB | | |",
            f"| binary size ({'stripped' if m['binary_stripped'] else 'NOT stripped'}) | "
            f"{sig(m['binary_bytes'] / 1e6)} MB | ≤ 12 MB | {met(m['binary_bytes'] <= 12e6)} |",
            f"| newest glibc symbol (`objdump -T`) | {m['binary_glibc']} | ≤ 2.17 (portable build) | "
            f"{met(m['binary_glibc'] != '?' and tuple(int(x) for x in m['binary_glibc'].split('.')) <= (2, 17))} |",
            f"| threads | {fp['threads']} | | |",
            "",
        ]
        L += [
            "## Method",
            "",
            "- Everything runs on the local engine, over loopback and the engine's unix socket; containers "
            "are `berth-test/busybox:base` (`FROM scratch` + the host's static busybox). berth runs in local "
            "mode with a fresh data dir and its own namespace per phase; every container carries a "
            f"`{RUN_LABEL}` label and is removed at the end, also on failure or Ctrl-C.",
            "- Kills are `kill -9` of `.State.Pid` from the host, never `docker kill`/`docker stop` (which "
            "Docker treats as a manual stop and does not restart). Kills alternate between berth's and "
            f"Docker's containers every {self.args.kill_interval} s, round-robin, so each container runs at "
            f"least {self.args.min_run} s between kills: Docker's backoff resets after 10 s of running and "
            "berth's `stable_after` is 10 s, so every kill is a first failure for both. Each kill must "
            "produce exactly one `die` (exit code 137) and one `start`, and berth's `restarts` and Docker's "
            "`RestartCount` must equal the number of kills, or the run fails.",
            "- die → start is `timeNano` of the `die` event to that of the next `start` of the same container "
            "id, from one `docker events` stream per phase. It covers the rest of the engine's exit "
            "handling, the event's delivery to berth, berth's decision and the start itself. The floors are "
            "sampled between the kills (after one kill in "
            f"{max(1, 2 * self.args.kills // self.args.floor)}, once its restart is seen) so that they "
            "see the same load; the start-on-die floor reacts to the same `docker events` stream the "
            "measurement reads, through this Python script.",
            "- Docker 20.10 logs `die` before it cleans up after the exit (unmounting the root filesystem, "
            "releasing the network) and holds the container's lock meanwhile, so a start issued on the `die` "
            "event waits for that cleanup: this is why a start on `die` takes longer than one on a container "
            "stopped for a while. "
            "Docker's restart manager starts its 100 ms timer just before the `die` event, so its wait "
            "overlaps the same cleanup; the slower the cleanup (the storage driver, the load), the less of "
            "the 100 ms shows.",
            "- Percentiles interpolate linearly between ranks; with n ≈ 60, p99 is close to the maximum.",
            "- Cold start times start on the host clock (`time.time_ns()`, before launching the process or "
            "the first call) and end on the engine's `timeNano` of the last `start` event: the engine runs "
            "on the same host and clock. The order of berth / loop / floor rotates between repetitions.",
            "- Other work may share the machine during a run (see the load average above); the ratios come "
            "from interleaved samples within one run and stay comparable, absolute times less so.",
            f"- Raw samples of the last run: `target/bench/results.json`.",
            "",
        ]
        return "\n".join(L)

    def run(self) -> None:
        log("setup", f"run {self.run_id}, berth {self.berth}, temp dir {self.tmp}")
        self.ensure_image()
        self.results["machine"] = self.machine()
        m = self.results["machine"]
        log("setup", f"{m['nproc']} CPUs, {m['cpu']}, Docker {m['docker']} ({m['driver']}), commit {m['commit']}")
        phases = [("respawn", self.respawn), ("crashloop", self.crash_loop), ("cold", self.cold_start),
                  ("footprint", self.footprint)]
        only = set(self.args.only.split(",")) if self.args.only else None
        for name, fn in phases:
            if only and name not in only:
                continue
            t = time.monotonic()
            log(name, "start")
            self.results[name] = fn()
            log(name, f"done in {time.monotonic() - t:.0f}s")
        self.results["machine"]["loadavg_end"] = os.getloadavg()
        self.results["runtime_s"] = time.monotonic() - T_START
        out = REPO / "target" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))
        if only or self.args.quick:
            log("report", f"partial or quick run: docs/benchmarks.md not written; raw: {out / 'results.json'}")
            if all(k in self.results for k in ("respawn", "crashloop", "cold", "footprint")):
                (out / "benchmarks-quick.md").write_text(self.report())
                log("report", f"quick report: {out / 'benchmarks-quick.md'}")
            return
        doc = REPO / "docs" / "benchmarks.md"
        doc.write_text(self.report())
        log("report", f"wrote {doc.relative_to(REPO)} in {self.results['runtime_s'] / 60:.1f} min total")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--berth", required=True, help="the berth binary (release)")
    p.add_argument("--quick", action="store_true", help="few samples, to check the script; no docs")
    p.add_argument("--only", default="", help="comma-separated phases: respawn,crashloop,cold,footprint")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (agent logs)")
    p.add_argument("--containers", type=int, default=5, help="containers per system in the respawn phase")
    p.add_argument("--kills", type=int, default=60, help="kills per system (>= 50)")
    p.add_argument("--kill-interval", type=float, default=1.2, help="seconds between kills")
    p.add_argument("--min-run", type=float, default=11.0, help="min seconds a container runs before a kill")
    p.add_argument("--floor", type=int, default=40, help="start-floor samples (>= 30)")
    p.add_argument("--crash-gaps", type=int, default=8)
    p.add_argument("--cold-containers", type=int, default=5)
    p.add_argument("--cold-reps", type=int, default=7)
    p.add_argument("--foot-containers", type=int, default=10)
    p.add_argument("--settle", type=int, default=10)
    p.add_argument("--idle", type=int, default=60)
    args = p.parse_args()
    if args.quick:
        args.kills, args.floor, args.crash_gaps, args.cold_reps, args.idle, args.settle = 10, 6, 5, 2, 12, 3
        args.containers = 2
        args.kill_interval = 5.6
    if not args.quick and (args.kills < 50 or args.floor < 30 or args.cold_reps < 5):
        print("refusing fewer than 50 kills, 30 floor samples or 5 cold-start repetitions (use --quick)",
              file=sys.stderr)
        return 2
    if args.min_run <= 10 or args.containers * 2 * args.kill_interval < args.min_run:
        print("warning: containers may be killed before 10 s of running; backoff would not reset",
              file=sys.stderr)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    bench = Bench(args)
    try:
        bench.run()
        return 0
    except BenchError as e:
        print(f"\nbench: measurement failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
