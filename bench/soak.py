"""A soak with faults: the simulated city (taxi_tornado.simulate) for `--duration`
minutes against two server processes on the Redis hub, while links are cut at random
and, at set times, a process is killed, Redis restarts and a process is paused.

    python -m bench.soak --duration 30 [--drivers 100 --riders 20 --cuts-per-minute 12]

What runs, all on 127.0.0.1 and all started here:
- a private redis-server on a free port with persistence on (appendonly yes,
  appendfsync everysec), so that a restart keeps the hub's history;
- two `taxi-tornado serve` processes, A and B, on that Redis hub, sharing one data
  directory (one SQLite store and one secret), nearest dispatch with the timeouts
  scaled to the simulation's speed, and pings every 5 s with a 5 s timeout (so that a
  pause past the ping timeout is seconds);
- a TCP proxy in front of both that gives each new link to the process with the fewest
  open links (the other when that one does not take the connection) and cuts one random
  WebSocket link without a close frame about `--cuts-per-minute` times a minute;
- the simulator's phones (`Options(url=<the proxy>)`), so every phone's socket and HTTP
  call goes through the proxy.

The faults, at fractions of the workload (from the moment every phone is connected):
20 % SIGKILL A, restart it 2 s later; 40 % restart Redis (SIGTERM, then start again on
the same port and directory); 60 % SIGSTOP B for `--pause` seconds (default ping
interval + ping timeout + 2 = 12), then SIGCONT; 80 % SIGKILL B, restart it 2 s later.

Every `--sample-every` seconds (30) the RSS of each server process and of Redis (VmRSS
from /proc/<pid>/status), the open links per process and the load average are
sampled; a restarted process starts a new series (A1, A2, ...). At the end the
simulator's checker judges the phones' histories and the store. One JSON document goes
to stdout: the run, the faults as they happened, the checker's report (trips,
invariants with examples, reconnects and resumes, errors by code), the RSS series, for
each server series whether its RSS stayed within 10 % of its first sample after
`--warm-up` minutes (judged when at least 3 samples follow the warm-up), the server
logs' warnings and errors, and `ok`. A table of RSS every `--table-every` minutes goes
to stderr with the progress. Exit status 0 when every fault happened, every invariant
held and every judged series stayed flat.

Bounded: the run ends by itself (duration + wind-down + the check; a watchdog gives it
`duration + 10 minutes` at most). Every process it starts is stopped at the end, on
Ctrl-C, SIGTERM or an exception (and, via PR_SET_PDEATHSIG, if this process dies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.target import free_port, raise_fd_limit, rss_kib
from taxi_tornado.simulate import Options, api, simulate

PING_INTERVAL = 5
PING_TIMEOUT = 5
RESTART_AFTER = 2.0  # seconds a killed process stays down
FLAT = 0.10  # RSS may grow this much over its first sample after warm-up
START_TIMEOUT = 60.0
WATCHDOG_MARGIN = 600.0  # seconds past the duration before the run is abandoned
FAULTS = 4  # the schedule's length: a run that did not reach them all is not ok


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it if the soak dies (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Children:
    """Every process the soak started; `stop_all()` ends those still running."""

    def __init__(self) -> None:
        self.all: list[subprocess.Popen[bytes]] = []

    def spawn(self, command: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            child = subprocess.Popen(command, env=env, cwd=cwd, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self.all.append(child)
        return child

    def stop_all(self) -> None:
        for child in self.all:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGCONT)  # a stopped process cannot stop
                    child.terminate()
        for child in self.all:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@dataclass
class Series:
    """One process's life: its RSS samples (seconds since the soak began, KiB)."""

    name: str
    started: float
    samples: list[tuple[float, int]] = field(default_factory=list)
    ended: float | None = None
    how: str = "ran to the end"


class Managed:
    """A child the faults act on: started again under the next series name."""

    def __init__(self, label: str, children: Children, soak_start: float) -> None:
        self.label = label
        self.children = children
        self.soak_start = soak_start
        self.process: subprocess.Popen[bytes] | None = None
        self.series: list[Series] = []

    def _began(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.series.append(Series(f"{self.label}{len(self.series) + 1}", self._now()))

    def _ended(self, how: str) -> None:
        self.series[-1].ended, self.series[-1].how = self._now(), how

    def _now(self) -> float:
        return time.monotonic() - self.soak_start

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def sample(self) -> None:
        if self.alive and self.process is not None:
            with contextlib.suppress(OSError, ValueError):
                self.series[-1].samples.append((self._now(), rss_kib(self.process.pid)))

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._ended("SIGKILL")


class Redis(Managed):
    def __init__(self, directory: Path, children: Children, soak_start: float) -> None:
        super().__init__("redis", children, soak_start)
        self.directory = directory
        self.port = free_port()
        self.binary = shutil.which("redis-server") or sys.exit("soak: no redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._began(self.children.spawn(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
             "--appendfsync", "everysec"], self.directory / "redis.log"))
        await _wait(lambda: _redis_answers(self.port), "redis-server", self.process)

    async def restart(self) -> float:
        """SIGTERM (Redis writes its AOF and exits), then start again; the seconds down."""
        began = time.monotonic()
        if self.process is not None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 30)
        self._ended("SIGTERM (restart)")
        await self.start()
        return time.monotonic() - began


class Server(Managed):
    def __init__(self, label: str, port: int, env: dict[str, str], directory: Path,
                 children: Children, soak_start: float) -> None:
        super().__init__(label, children, soak_start)
        self.port, self.env, self.directory = port, env, directory

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {**self.env, "TAXI_SERVER_PORT": str(self.port)}
        self._began(self.children.spawn(
            [sys.executable, "-m", "taxi_tornado", "serve"],
            self.directory / f"server-{self.label}.log", env, self.directory))
        await _wait(lambda: api.healthy(self.base), f"server {self.label}", self.process)

    async def kill_and_restart(self) -> float:
        began = time.monotonic()
        self.kill()
        await asyncio.sleep(RESTART_AFTER)
        await self.start()
        return time.monotonic() - began

    async def pause(self, seconds: float) -> float:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.process.send_signal(signal.SIGCONT)
        return seconds


async def _wait(ready: Callable[[], Awaitable[bool] | bool], what: str,
                process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"soak: {what} exited with {process.returncode}")
        answer = ready()
        if answer if isinstance(answer, bool) else await answer:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"soak: {what} did not come up in {START_TIMEOUT:g} s")


def _redis_answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# --- the phones' links ---------------------------------------------------------------

class Link:
    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter,
                 upstream: str) -> None:
        self.client, self.server, self.upstream = client, server, upstream
        self.upgraded = False  # the server's 101 went down: a WebSocket, not HTTP

    def abort(self) -> None:
        """Drop both sides at once: the phone gets no close frame, only a reset."""
        for writer in (self.client, self.server):
            writer.transport.abort()


class Balancer:
    """The phones' network: each new link goes to the least loaded server that takes it;
    open WebSocket links are cut at random."""

    def __init__(self, servers: list[Server], cuts_per_minute: float,
                 rng: random.Random) -> None:
        self.servers = servers
        self.cuts_per_minute = cuts_per_minute
        self.rng = rng
        self.links: set[Link] = set()
        self.opened = {server.label: 0 for server in servers}
        self.refused = self.cuts = 0
        self.port = 0
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sockets(self) -> dict[str, int]:
        """Open WebSocket links per server."""
        counts = {server.label: 0 for server in self.servers}
        for link in self.links:
            counts[link.upstream] += link.upgraded
        return counts

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cutter(self) -> None:
        """About `cuts_per_minute` times a minute, one random WebSocket link drops."""
        if self.cuts_per_minute <= 0:
            return
        while True:
            await asyncio.sleep(self.rng.expovariate(self.cuts_per_minute / 60))
            open_links = [link for link in self.links if link.upgraded]
            if open_links:
                self.rng.choice(open_links).abort()
                self.cuts += 1

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        for server in self._by_load():
            try:
                upstream_reader, upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", server.port), 5)
            except (OSError, TimeoutError):
                continue
            link = Link(writer, upstream_writer, server.label)
            self.links.add(link)
            self.opened[server.label] += 1
            self._spawn(self._pump(reader, link.server, link, up=True))
            self._spawn(self._pump(upstream_reader, link.client, link, up=False))
            return
        self.refused += 1
        writer.transport.abort()

    def _by_load(self) -> list[Server]:
        """The servers, fewest open links first (ties in turn), as nginx's least_conn:
        links cut at random then even out what a killed process moved to the other."""
        self._next += 1
        load = {server.label: 0 for server in self.servers}
        for link in self.links:
            load[link.upstream] += 1
        count = len(self.servers)
        return sorted(self.servers, key=lambda server: (
            load[server.label], (self.servers.index(server) - self._next) % count))

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: Link, up: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not up and not link.upgraded and b" 101 " in data[:16]:
                    link.upgraded = True
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()
        self.links.discard(link)


# --- the run ------------------------------------------------------------------------

@dataclass
class Plan:
    duration: float  # seconds of workload
    drivers: int
    riders: int
    speed: float
    seed: int
    cuts_per_minute: float
    pause: float
    sample_every: float
    warm_up: float  # seconds
    table_every: float  # seconds
    keep: bool


class Soak:
    def __init__(self, plan: Plan, directory: Path, children: Children) -> None:
        self.plan, self.directory, self.children = plan, directory, children
        self.start = time.monotonic()
        self.rng = random.Random(plan.seed)
        self.options = Options(
            drivers=plan.drivers, riders=plan.riders, duration=plan.duration,
            seed=plan.seed, speed=plan.speed, progress_every=30, wind_down=30)
        scaled = Options(speed=plan.speed)  # the self-started server's scaled timeouts
        self.offer_timeout, self.max_wait = scaled.offer_timeout, scaled.max_wait
        self.redis = Redis(directory, children, self.start)
        env = self._server_env(scaled.location_ttl)
        self.servers = [Server(label, free_port(), env, directory, children, self.start)
                        for label in ("A", "B")]
        self.balancer = Balancer(self.servers, plan.cuts_per_minute, self.rng)
        self.faults: list[dict[str, Any]] = []
        self.loads: list[tuple[float, float]] = []
        self.rows: list[dict[str, Any]] = []
        self.workload_began: float | None = None

    def _server_env(self, location_ttl: float) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("TAXI_")}
        env.update({
            "TAXI_DATA_DIR": str(self.directory / "data"),
            "TAXI_SERVER_HOST": "127.0.0.1",
            "TAXI_SERVER_PING_INTERVAL": str(PING_INTERVAL),
            "TAXI_SERVER_PING_TIMEOUT": str(PING_TIMEOUT),
            "TAXI_AUTH_SECRET_KEY": secrets.token_hex(32),
            "TAXI_AUTH_ACCESS_TTL": str(int(max(3600, self.plan.duration + 1800))),
            "TAXI_HUB_URL": self.redis.url,
            "TAXI_HUB_PREFIX": "soak",
            "TAXI_LIMITS_AUTH_RATE": "0",
            "TAXI_DISPATCH_MODE": "nearest",
            "TAXI_DISPATCH_OFFER_TIMEOUT": f"{self.offer_timeout:.3f}",
            "TAXI_DISPATCH_MAX_WAIT": f"{self.max_wait:.3f}",
            "TAXI_DISPATCH_LOCATION_TTL": f"{location_ttl:.3f}",
            "TAXI_LOG_LEVEL": "warning",
        })
        return env

    async def run(self) -> dict[str, Any]:
        await self.redis.start()
        for server in self.servers:  # one after the other: the first makes the schema
            await server.start()
        await self.balancer.start()
        options = dataclasses.replace(
            self.options, url=self.balancer.base, server_offer_timeout=self.offer_timeout,
            server_max_wait=self.max_wait)
        self._say(f"redis :{self.redis.port}, A :{self.servers[0].port}, "
                  f"B :{self.servers[1].port}, proxy :{self.balancer.port}; "
                  f"logs in {self.directory}")
        sim = asyncio.ensure_future(simulate(options, sys.stderr))
        helpers = [asyncio.ensure_future(work) for work in
                   (self._sampler(), self._faults(sim), self.balancer.cutter())]
        try:
            report = await asyncio.wait_for(sim, self.plan.duration + WATCHDOG_MARGIN)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.balancer.stop()
        self._sample_all()
        return self._result(report)

    async def _faults(self, sim: asyncio.Future[Any]) -> None:
        fleet = self.plan.drivers + self.plan.riders
        while sum(self.balancer.sockets().values()) < fleet:
            if sim.done():
                return
            await asyncio.sleep(0.2)
        self.workload_began = self._now()
        self._say(f"every phone connected: the workload and the fault schedule start "
                  f"(soak time {self.workload_began:.0f} s)")
        a, b = self.servers
        schedule: list[tuple[float, str, Callable[[], Awaitable[float]]]] = [
            (0.2, "SIGKILL A, restart", a.kill_and_restart),
            (0.4, "restart Redis (SIGTERM, start)", self.redis.restart),
            (0.6, f"SIGSTOP B for {self.plan.pause:g} s, SIGCONT",
             lambda: b.pause(self.plan.pause)),
            (0.8, "SIGKILL B, restart", b.kill_and_restart),
        ]
        for fraction, what, act in schedule:
            await asyncio.sleep(max(0.0, self.workload_began + fraction * self.plan.duration
                                    - self._now()))
            at = self._now()
            self._say(f"fault at {at:.0f} s: {what}")
            fault: dict[str, Any] = {"at_s": round(at, 1), "fraction": fraction,
                                     "what": what}
            self.faults.append(fault)
            try:
                took = await act()
            except Exception as error:  # the run goes on; the result says it failed
                fault["failed"] = repr(error)
                self._say(f"fault failed: {what}: {error!r}")
                continue
            fault.update(took_s=round(took, 2), sockets_after=self.balancer.sockets())
            self._say(f"fault done in {took:.1f} s: {what}")

    async def _sampler(self) -> None:
        next_row = 0.0
        while True:
            self._sample_all()
            if self._now() >= next_row:
                self._say(self._row_line(self._row()))
                next_row += self.plan.table_every
            await asyncio.sleep(self.plan.sample_every)

    def _sample_all(self) -> None:
        for managed in (*self.servers, self.redis):
            managed.sample()
        self.loads.append((self._now(), os.getloadavg()[0]))

    def _row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"t_min": round(self._now() / 60, 1)}
        for managed in (*self.servers, self.redis):
            series = managed.series[-1]
            row[managed.label] = {"series": series.name, "rss_mib": _mib(series)}
        row["sockets"] = self.balancer.sockets()
        row["load1"] = round(os.getloadavg()[0], 2)
        self.rows.append(row)
        return row

    def _row_line(self, row: dict[str, Any]) -> str:
        parts = [f"{label} {cell['series']} {cell['rss_mib']} MiB"
                 for label, cell in row.items() if isinstance(cell, dict) and "series" in cell]
        return (f"rss at {row['t_min']} min: " + ", ".join(parts)
                + f"; sockets {row['sockets']}; load {row['load1']}")

    def _result(self, report: dict[str, Any]) -> dict[str, Any]:
        series = [s for managed in (*self.servers, self.redis) for s in managed.series]
        flat = {s.name: judge(s, self.plan.warm_up) for managed in self.servers
                for s in managed.series}
        judged = [verdict["flat"] for verdict in flat.values() if verdict["flat"] is not None]
        loads = [load for _, load in self.loads]
        return {
            "soak": {"duration_min": round(self.plan.duration / 60, 2),
                     "drivers": self.plan.drivers, "riders": self.plan.riders,
                     "speed": self.plan.speed, "seed": self.plan.seed,
                     "dispatch": "nearest", "offer_timeout_s": round(self.offer_timeout, 3),
                     "max_wait_s": round(self.max_wait, 3),
                     "ping_interval_s": PING_INTERVAL, "ping_timeout_s": PING_TIMEOUT,
                     "cuts_per_minute": self.plan.cuts_per_minute,
                     "workload_began_s": self.workload_began,
                     "wall_s": round(self._now(), 1)},
            "faults": self.faults,
            "links": {"opened": self.balancer.opened, "cut": self.balancer.cuts,
                      "refused": self.balancer.refused},
            "simulation": report,
            "rss_kib": {s.name: {"started_s": round(s.started, 1),
                                 "ended_s": None if s.ended is None else round(s.ended, 1),
                                 "how": s.how,
                                 "samples": [[round(t, 1), kib] for t, kib in s.samples]}
                        for s in series},
            "rss_flat": flat,
            "rss_table": self.rows,
            "load_average_1min": {"min": min(loads, default=None),
                                  "mean": round(sum(loads) / len(loads), 2) if loads else None,
                                  "max": max(loads, default=None)},
            "server_logs": {server.label: log_summary(self.directory
                                                      / f"server-{server.label}.log")
                            for server in self.servers},
            "ok": bool(report.get("ok")) and all(judged) and len(self.faults) == FAULTS
                  and not any("failed" in fault for fault in self.faults),
        }

    def _now(self) -> float:
        return time.monotonic() - self.start

    def _say(self, line: str) -> None:
        print(f"soak {self._now():6.0f} s: {line}", file=sys.stderr, flush=True)


def judge(series: Series, warm_up: float) -> dict[str, Any]:
    """Flat when no sample after the warm-up exceeds the first of them by more than 10 %."""
    after = [kib for t, kib in series.samples if t - series.started >= warm_up]
    if len(after) < 3:
        return {"flat": None, "why": f"{len(after)} samples after the warm-up (3 needed)"}
    base, peak = after[0], max(after)
    return {"flat": peak <= base * (1 + FLAT), "first_kib": base, "max_kib": peak,
            "last_kib": after[-1], "growth": round(peak / base - 1, 4),
            "samples": len(after)}


def log_summary(path: Path) -> dict[str, Any]:
    """What a server process logged at warning and above (all its lives), by level and
    by logger, and the first few distinct error lines."""
    if not path.exists():
        return {}
    levels: Counter[str] = Counter()
    loggers: Counter[str] = Counter()
    first: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("Traceback"):
            levels["Traceback"] += 1
        words = line.split(" ", 4)
        if len(words) < 5 or words[2] not in ("WARNING", "ERROR", "CRITICAL"):
            continue
        levels[words[2]] += 1
        loggers[f"{words[2]} {words[3].rstrip(':')}"] += 1
        if words[2] != "WARNING" and words[4][:200] not in first and len(first) < 5:
            first.append(words[4][:200])
    return {"levels": dict(levels), "by_logger": dict(loggers.most_common()),
            "first_errors": first}


def _mib(series: Series) -> float | None:
    return round(series.samples[-1][1] / 1024, 1) if series.samples and series.ended is None \
        else None


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| t (min) | A | B | Redis | sockets A / B | load (1 min) |",
             "|---|---|---|---|---|---|"]
    for row in result["rss_table"]:
        cells = []
        for label in ("A", "B", "redis"):
            cell = row[label]
            cells.append(f"{cell['series']} {cell['rss_mib']} MiB"
                         if cell["rss_mib"] is not None else f"{cell['series']} down")
        sockets = row["sockets"]
        lines.append(f"| {row['t_min']} | {' | '.join(cells)} | "
                     f"{sockets.get('A', 0)} / {sockets.get('B', 0)} | {row['load1']} |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="minutes (30)")
    parser.add_argument("--drivers", type=int, default=100)
    parser.add_argument("--riders", type=int, default=20)
    parser.add_argument("--speed", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cuts-per-minute", type=float, default=12.0)
    parser.add_argument("--pause", type=float, default=PING_INTERVAL + PING_TIMEOUT + 2,
                        help="seconds B stays stopped (12)")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds (30)")
    parser.add_argument("--warm-up", type=float, default=None,
                        help="minutes of a process's life before its RSS is judged "
                        "(default: a sixth of the duration)")
    parser.add_argument("--table-every", type=float, default=None,
                        help="minutes between table rows (default: a sixth of the duration)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the directory with the logs, Redis's AOF and the store")
    args = parser.parse_args(argv)
    duration = args.duration * 60
    return Plan(duration=duration, drivers=args.drivers, riders=args.riders,
                speed=args.speed, seed=args.seed, cuts_per_minute=args.cuts_per_minute,
                pause=args.pause, sample_every=args.sample_every,
                warm_up=(args.warm_up * 60 if args.warm_up is not None else duration / 6),
                table_every=(args.table_every * 60 if args.table_every is not None
                             else duration / 6),
                keep=args.keep)


async def _soak(plan: Plan, directory: Path, children: Children) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await Soak(plan, directory, children).run()


def main(argv: list[str] | None = None) -> int:
    plan = parse(argv)
    raise_fd_limit()
    directory = Path(tempfile.mkdtemp(prefix="taxi-soak-"))
    children = Children()
    try:
        result = asyncio.run(_soak(plan, directory, children))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        if not plan.keep:
            shutil.rmtree(directory, ignore_errors=True)
    table = markdown_table(result)
    print(f"\nRSS every {plan.table_every / 60:.3g} min:\n{table}\n", file=sys.stderr)
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
