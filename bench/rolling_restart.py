"""A rolling restart, measured: one of two processes on the Redis hub drains, its clients
resume on the other.

    python -m bench.rolling_restart [-n 5000] [--rate 1] [--jitter 1.0] [--open-timeout 10]
                                    [--timeout 60] [--before 3] [--after 2] [-p 100]
                                    [--py-spy FILE] [--server-env KEY=VALUE] [--keep]

Starts a private redis-server (no persistence) and two `python -m taxi_tornado serve`
processes, A and B, on that Redis hub (bench/target.py: one data dir, one secret, N
drivers made through the Store API, their tokens from the project's TokenAuthority).
N taxi.v2 clients (bench/wsclient.py, one asyncio Protocol each, on uvloop) connect,
alternately to A and B; each is in its user's group and in `drivers`, the shared group.

1. Every user's group gets one event (its client now holds a position there).
2. A publisher process (a Hub of its own on the same Redis, one EVALSHA per send, as
   another service would send) sends `--rate` events a second to `drivers` from here to
   the end of the run.
3. After `--before` seconds: SIGTERM to A. The publisher sends one more event to the group
   of every user whose client was on A (while they are away). A closes its sockets with
   1001; each of its clients waits a full jitter (uniform over 0..`--jitter` s), dials
   B and sends `session.resume` with its last position in each group as its first frame.
   A dial that fails, or has not opened within `--open-timeout`, is dropped and tried
   again after a full-jitter backoff whose ceiling doubles (as the project's client does).
4. When every drained client got `session.resumed` (or `--timeout`), `--after` more
   seconds of events, then the publisher stops and the bench waits (bounded) until every
   client has the last event.

Measured, from the clients' clock (CLOCK_MONOTONIC):
- `last_resumed_s`: SIGTERM -> the last drained client got `session.resumed` (the goal:
  under 5 s), and the spread (`resumed_s` p50/p99/max);
- `handshakes_per_s`: reconnects completed on B divided by the time from the first
  redial to the last 101; `handshake_ms` (dial -> 101) and `resume_ms` (resume sent ->
  `session.resumed`) per client; B's CPU during the storm;
- events lost or doubled: every client must hold every offset of every group it is in,
  exactly once, in one epoch (`drivers`: 1..T, T the publisher's sends; its user's group:
  1..1, or 1..2 for a drained client), across the reconnect; a group answered
  `"recovered": false` is a failure too, and so is a socket that closed other than by
  A's drain (`unexpected_closes`, with how it ended);
- what explains the figures: the kernel's listen-queue overflows and SYN retransmits
  (`tcp`, machine-wide), Redis connections and commands during the storm (`redis`),
  the dials that timed out or were refused (`dial_errors`), and `--py-spy FILE` records
  B during the storm.

Prints one JSON line (stdout) and a short summary (stderr), with the load average: the
machine is shared, and the clients, both servers and Redis share its cores. Loopback only;
bounded in time; cleans up its processes and data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import orjson

from bench.cluster_fanout import command_calls, http_status, redis_command, wait_until
from bench.target import (
    Population,
    Target,
    cpu_seconds,
    free_port,
    issue_tokens,
    prepare,
    raise_fd_limit,
)
from bench.wsclient import HandshakeError, WsClient, connect, upgrade_request

HOST = "127.0.0.1"
PATH = "/taxi/"
SUBPROTOCOL = "taxi.v2"
PREFIX = "bench"
SHARED = "drivers"  # every driver's socket joins it on connect (the trips plugin)
GOAL_S = 5.0
BACKOFF_CAP_S = 20.0  # the project's Python client's max_delay


def main() -> None:
    args = parser().parse_args()
    raise_fd_limit()
    load_before = os.getloadavg()
    note(f"rolling_restart: preparing {args.n} users")
    population = prepare(drivers=args.n)
    redis: subprocess.Popen[bytes] | None = None
    servers: list[Target] = []
    kept = False
    try:
        redis_port = free_port()
        redis = start_redis(redis_port, population.data_dir)
        extra = server_env(redis_port, args.server_env)
        servers = [start_server(name, population, extra) for name in ("A", "B")]
        tokens = issue_tokens(population, population.drivers, servers[0].port)
        result = run(args, population, servers, tokens, redis_port)
    except BaseException:
        kept = True
        note(f"rolling_restart: failed; logs kept in {population.data_dir}")
        raise
    else:
        kept = args.keep
        if kept:
            note(f"rolling_restart: server logs kept in {population.data_dir}")
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.terminate()
            redis.wait(15)
        if not kept:
            shutil.rmtree(population.data_dir, ignore_errors=True)
    line = {"tool": "bench.rolling_restart", "scenario": "rolling_restart",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "params": {"n": args.n, "rate": args.rate, "jitter_s": args.jitter,
                       "parallel": args.p, "open_timeout_s": args.open_timeout,
                       "before_s": args.before, "after_s": args.after,
                       "server_env": args.server_env},
            "load_avg": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
            "result": result}
    print(json.dumps(line), flush=True)
    note(headline(line))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench.rolling_restart", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("-n", type=int, default=5000, help="v2 client sockets (half on A)")
    top.add_argument("--rate", type=float, default=1,
                     help="events a second to `drivers` (as broadcast dispatch sends each "
                     "trip request to every driver)")
    top.add_argument("--jitter", type=float, default=1.0,
                     help="a drained client waits uniform(0, JITTER) s before it redials")
    top.add_argument("--before", type=float, default=3, help="seconds of events before SIGTERM")
    top.add_argument("--after", type=float, default=2,
                     help="seconds of events after the last resume")
    top.add_argument("--timeout", type=float, default=60,
                     help="seconds to wait for every drained client to resume")
    top.add_argument("-p", type=int, default=100, help="dials in parallel at the start")
    top.add_argument("--open-timeout", type=float, default=10,
                     help="seconds a redial may take to open before it is dropped and retried")
    top.add_argument("--keep", action="store_true",
                     help="keep the data dir (server-A.log, server-B.log) after the run")
    top.add_argument("--py-spy", metavar="FILE",
                     help="record server B with py-spy during the storm (collapsed stacks)")
    top.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                     help="extra settings for both servers, e.g. TAXI_LOG_LEVEL=warning")
    return top


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ processes


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("rolling_restart: redis-server is not installed")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
         "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: redis_command(port, "PING") == "PONG", "redis-server")
    return process


def server_env(redis_port: int, extra: list[str]) -> dict[str, str]:
    env = {"TAXI_HUB_URL": f"redis://{HOST}:{redis_port}/0", "TAXI_HUB_PREFIX": PREFIX}
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def start_server(name: str, population: Population, extra: dict[str, str]) -> Target:
    target = Target("taxi", population, extra)
    target.log_path = population.data_dir / f"server-{name}.log"
    target.start()
    wait_until(lambda: http_status(target.port, "/readyz") == 200, f"server {name}")
    return target


def run(args: argparse.Namespace, population: Population, servers: list[Target],
        tokens: list[str], redis_port: int) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    mine, theirs = context.Pipe()
    publisher = context.Process(target=publisher_main,
                                args=(theirs, f"redis://{HOST}:{redis_port}/0"))
    publisher.start()
    try:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
        gc.disable()  # no collector pauses in the clients; the process is short-lived
        users = [driver.id for driver in population.drivers]
        return asyncio.run(Storm(args, servers, tokens, users, mine, redis_port).run())
    finally:
        mine.send(("quit",))
        publisher.join(15)
        if publisher.is_alive():
            publisher.kill()


# ------------------------------------------------------------------ the publisher


def publisher_main(pipe: Pipe, redis_url: str) -> None:
    """Another service on the hub: sends to groups when told, ticks `drivers` at a rate."""
    asyncio.run(Publisher(pipe, redis_url).run())


class Publisher:
    def __init__(self, pipe: Pipe, redis_url: str) -> None:
        self.pipe = pipe
        self.redis_url = redis_url
        self.ticks = 0
        self.ticker: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        from taxi_tornado.hub import Hub, RedisBroker

        self.hub = Hub(RedisBroker(self.redis_url, PREFIX))
        await self.hub.start()
        loop = asyncio.get_running_loop()
        try:
            while True:
                command = await loop.run_in_executor(None, self.pipe.recv)
                if command[0] == "quit":
                    return
                self.pipe.send(await self.obey(command))
        finally:
            if self.ticker is not None:
                self.ticker.cancel()
            await self.hub.stop()

    async def obey(self, command: tuple[Any, ...]) -> int:
        if command[0] == "send":
            groups: list[str] = command[1]
            for start in range(0, len(groups), 500):
                await asyncio.gather(*(self.hub.send(group, {"type": "bench.note", "data": 1})
                                       for group in groups[start:start + 500]))
            return len(groups)
        if command[0] == "tick":
            self.ticker = asyncio.create_task(self.tick(command[1]))
            return 0
        assert command[0] == "stop" and self.ticker is not None
        self.stopping.set()
        await self.ticker
        return self.ticks

    async def tick(self, rate: float) -> None:
        """One event every 1/rate s on a fixed schedule (a late one is not skipped), until
        told to stop; a send under way when told is finished and counted."""
        began = time.monotonic()
        while True:
            delay = max(0.0, began + self.ticks / rate - time.monotonic())
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
                return
            except TimeoutError:
                pass
            await self.hub.send(SHARED, {"type": "bench.tick", "data": self.ticks + 1})
            self.ticks += 1


# ------------------------------------------------------------------ the clients


class Client:
    """One user's v2 socket, then its next one: every position it received, in order."""

    __slots__ = (
        "attempt_at",
        "close_code",
        "closed_at",
        "dial_at",
        "epochs",
        "errors",
        "failed",
        "group",
        "last",
        "offsets",
        "on_a",
        "open_at",
        "positions",
        "redials",
        "resume_at",
        "resumed",
        "resumed_at",
        "token",
        "ws",
    )

    def __init__(self, token: str, user_id: str, on_a: bool) -> None:
        self.token = token
        self.group = f"user:{user_id}"
        self.on_a = on_a
        self.ws: WsClient | None = None
        self.offsets: dict[str, list[int]] = {}
        self.epochs: dict[str, set[str]] = {}
        self.last: dict[str, dict[str, Any]] = {}  # group -> {"offset", "epoch"}
        self.resumed: dict[str, Any] | None = None
        self.positions: bytes = b""  # the resume frame, made when the socket closed
        self.closed_at = self.dial_at = self.open_at = self.resume_at = self.resumed_at = 0.0
        self.redials = 0
        self.attempt_at = 0.0
        self.errors: Counter[str] = Counter()
        self.failed = False
        self.close_code: int | None = None

    def on_frame(self, ws: WsClient, payload: bytes) -> None:
        message = orjson.loads(payload)
        pos = message.get("pos")
        if pos is not None:
            group, offset, epoch = pos["group"], pos["offset"], pos["epoch"]
            self.offsets.setdefault(group, []).append(offset)
            self.epochs.setdefault(group, set()).add(epoch)
            last = self.last.get(group)
            if last is None or offset > last["offset"]:
                self.last[group] = {"offset": offset, "epoch": epoch}
        elif message.get("type") == "session.resumed":
            self.resumed_at = time.monotonic()
            self.resumed = message["data"]["groups"]

    def hold_positions(self) -> None:
        """The last positions of the socket that closed: what the resume asks after.

        Taken at the close, not at the redial: live events of the next socket can come
        with its 101, before the resume frame goes out, and they are no position to
        resume from (the events between would never be asked for).
        """
        self.positions = orjson.dumps({"type": "session.resume", "id": 1,
                                       "data": {"positions": self.last}})


class RedialSocket(WsClient):
    """A redial's socket; remembers how its connection ended (for the report)."""

    lost_error: str | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_error = repr(exc) if exc is not None else "eof"
        super().connection_lost(exc)


class Storm:
    """The run: connect everyone, tick, drain A, watch its clients come back on B."""

    def __init__(self, args: argparse.Namespace, servers: list[Target], tokens: list[str],
                 users: list[str], publisher: Pipe, redis_port: int) -> None:
        self.args = args
        self.redis_port = redis_port
        self.a, self.b = servers
        self.publisher = publisher
        self.clients = [Client(token, user, n % 2 == 0)
                        for n, (token, user) in enumerate(zip(tokens, users, strict=True))]
        self.drained = [client for client in self.clients if client.on_a]
        self.draining = False
        self.sigterm_at = 0.0
        self.pending: set[asyncio.Task[None]] = set()
        # Sockets closed other than by A's drain: (when, close code, was on A).
        self.lost_sockets: list[tuple[float, int | None, bool, str | None]] = []
        self.finished = False  # the bench closes every socket itself from here

    async def ask(self, *command: Any) -> int:
        """One command to the publisher, and its answer."""
        self.publisher.send(command)
        answer: int = await asyncio.get_running_loop().run_in_executor(None, self.publisher.recv)
        return answer

    async def run(self) -> dict[str, Any]:
        began = time.monotonic()
        await self.connect_all()
        connected_s = time.monotonic() - began
        note(f"rolling_restart: {len(self.clients)} sockets open in {connected_s:.1f} s "
             f"(A :{self.a.port}, B :{self.b.port})")
        await self.ask("send", [client.group for client in self.clients])
        await self.until(lambda: all(c.group in c.last for c in self.clients), 30,
                         "every user's first event")
        await self.ask("tick", self.args.rate)
        await asyncio.sleep(self.args.before)
        storm = await self.drain_a()
        await asyncio.sleep(self.args.after)
        ticks = await self.ask("stop")
        caught_up = await self.until(
            lambda: all(c.last.get(SHARED, {}).get("offset") == ticks
                        for c in self.clients if not c.failed), 15,
            "every client's last event", fail=False)
        events = {"caught_up": caught_up, **self.count_events(ticks)}
        self.finished = True
        for client in self.clients:
            if client.ws is not None:
                client.ws.close()
        await asyncio.sleep(0.2)
        lost_sockets = {
            "unexpected_closes": len(self.lost_sockets),
            "unexpected_close_examples": [
                {"at_s": round(at - self.sigterm_at, 3), "code": code, "on_a": on_a,
                 "how": how} for at, code, on_a, how in self.lost_sockets[:10]]}
        return {"clients": len(self.clients), "drained": len(self.drained),
                "connect_s": round(connected_s, 2), **storm, **lost_sockets, "events": events,
                "goal_s": GOAL_S,
                "goal_met": storm["last_resumed_s"] is not None
                and storm["last_resumed_s"] < GOAL_S and events["failures"] == 0}

    async def connect_all(self) -> None:
        gate = asyncio.Semaphore(self.args.p)

        async def open_one(client: Client) -> None:
            async with gate:
                port = self.a.port if client.on_a else self.b.port
                self.watch(client, await connect(HOST, port, PATH, client.token,
                                                 client.on_frame, SUBPROTOCOL))

        await asyncio.gather(*(open_one(client) for client in self.clients))

    def watch(self, client: Client, ws: WsClient) -> None:
        client.ws = ws
        ws.closed.add_done_callback(lambda _: self.on_closed(client, ws))

    def on_closed(self, client: Client, ws: WsClient) -> None:
        if client.ws is not ws or self.finished:
            return
        if not (self.draining and client.on_a) or client.closed_at:
            self.lost_sockets.append((time.monotonic(), ws.close_code, client.on_a,
                                      getattr(ws, "lost_error", None)))
            return
        client.closed_at = time.monotonic()
        client.close_code = ws.close_code
        client.hold_positions()
        delay = random.uniform(0, self.args.jitter)
        asyncio.get_running_loop().call_later(delay, self.spawn, client)

    def spawn(self, client: Client) -> None:
        task = asyncio.ensure_future(self.redial(client))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def redial(self, client: Client) -> None:
        """To B, `session.resume` first. A dial that fails or times out is dropped and
        tried again after a full-jitter backoff whose ceiling doubles from `--jitter` up
        to 20 s (the project's Python client: 0.5 s up to 20 s, open timeout 10 s)."""
        client.dial_at = time.monotonic()
        deadline = self.sigterm_at + self.args.timeout
        attempt = 0
        while time.monotonic() < deadline:
            client.attempt_at = time.monotonic()
            ws = await self.dial(client)
            if ws is not None:
                client.open_at = time.monotonic()
                ws.send(client.positions)
                client.resume_at = time.monotonic()
                self.watch(client, ws)
                return
            client.redials += 1
            attempt += 1
            ceiling = min(BACKOFF_CAP_S, self.args.jitter * 2 ** attempt)
            await asyncio.sleep(random.uniform(0, ceiling))
        client.failed = True

    async def dial(self, client: Client) -> WsClient | None:
        """One upgrade to B within `--open-timeout`; a socket that did not open in time
        is closed (the server sees the client leave), as a real client would do."""
        loop = asyncio.get_running_loop()
        request = upgrade_request(HOST, self.b.port, PATH, client.token, SUBPROTOCOL)
        ws: RedialSocket | None = None
        try:
            async with asyncio.timeout(self.args.open_timeout):
                _, ws = await loop.create_connection(
                    lambda: RedialSocket(request, client.on_frame), HOST, self.b.port)
                return await ws.opened
        except (OSError, TimeoutError, HandshakeError) as error:
            client.errors[type(error).__name__] += 1
            if ws is not None and ws.transport is not None:
                ws.transport.close()
            return None

    async def drain_a(self) -> dict[str, Any]:
        """SIGTERM to A; wait for every one of its clients to resume on B."""
        profiler = self.start_profiler()
        cpu_b = cpu_seconds(self.b.pid)
        redis_before = redis_info(self.redis_port)
        calls_before = command_calls(self.redis_port)
        tcp_before = tcp_counters()
        self.draining = True
        self.sigterm_at = time.monotonic()
        assert self.a.process is not None
        self.a.process.send_signal(signal.SIGTERM)
        a_exit = asyncio.get_running_loop().run_in_executor(None, self.exit_time, self.a)
        note(f"rolling_restart: SIGTERM to A; {len(self.drained)} clients to move")
        away = asyncio.ensure_future(self.ask("send", [c.group for c in self.drained]))
        done = await self.until(
            lambda: all(c.resumed_at or c.failed for c in self.drained), self.args.timeout,
            "every drained client's session.resumed", fail=False)
        storm_end = time.monotonic()
        cpu_b = cpu_seconds(self.b.pid) - cpu_b
        redis_after = redis_info(self.redis_port)
        tcp = Counter(tcp_counters())
        tcp.subtract(tcp_before)
        calls = Counter(command_calls(self.redis_port))
        calls.subtract(calls_before)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        await away
        exited, a_exit_s = await a_exit
        figures = self.storm_figures(done, storm_end, cpu_b, exited, a_exit_s)
        figures["tcp"] = dict(tcp)  # the whole machine's: loopback, other tests included
        figures["redis"] = {
            "connections_opened": redis_after["total_connections_received"]
            - redis_before["total_connections_received"],
            "clients_before": redis_before["connected_clients"],
            "clients_after": redis_after["connected_clients"],
            "commands": redis_after["total_commands_processed"]
            - redis_before["total_commands_processed"],
            "calls": dict(calls.most_common(12))}
        return figures

    def exit_time(self, target: Target) -> tuple[int | None, float]:
        """(exit code, seconds from SIGTERM) of a draining server; (None, …) if it
        outlives twice its drain_timeout (10 s by default)."""
        assert target.process is not None
        try:
            code: int | None = target.process.wait(20)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - self.sigterm_at

    def start_profiler(self) -> subprocess.Popen[bytes] | None:
        if not self.args.py_spy:
            return None
        profiler = subprocess.Popen(
            [py_spy(), "record", "--pid", str(self.b.pid), "--rate", "400", "--format", "raw",
             "--gil", "--output", self.args.py_spy, "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let it attach before the storm
        return profiler

    def storm_figures(self, done: bool, storm_end: float, cpu_b: float, exit_code: int | None,
                      a_exit_s: float) -> dict[str, Any]:
        t0 = self.sigterm_at
        back = [c for c in self.drained if c.resumed_at]
        resumed = [c.resumed_at - t0 for c in back]
        first_dial = min((c.dial_at for c in back), default=t0)
        last_open = max((c.open_at for c in back), default=t0)
        window = last_open - first_dial
        return {
            "all_resumed": done,
            "resumed": len(back),
            "failed": sum(c.failed for c in self.drained),
            "redials": sum(c.redials for c in self.drained),
            "close_codes": dict(Counter(str(c.close_code) for c in self.drained)),
            "last_closed_s": round(max((c.closed_at - t0 for c in self.drained
                                        if c.closed_at), default=0.0), 3),
            "last_resumed_s": round(max(resumed), 3) if resumed else None,
            "resumed_s": summary(resumed, 1),
            "handshakes_per_s": round(len(back) / window, 1) if window > 0 else None,
            "handshake_ms": summary([c.open_at - c.attempt_at for c in back], 1000),
            "dial_errors": dict(sum((c.errors for c in self.drained), Counter())),
            "resume_ms": summary([c.resumed_at - c.resume_at for c in back], 1000),
            "b_cpu_pct_storm": round(100 * cpu_b / max(storm_end - t0, 1e-9), 1),
            "a_exit_s": round(a_exit_s, 2),
            "a_exit_code": exit_code,
        }

    def count_events(self, ticks: int) -> dict[str, Any]:
        """Every client must hold each offset of its groups exactly once, in one epoch."""
        lost = doubled = epochs = not_recovered = replayed = 0
        touched = 0
        examples: list[dict[str, Any]] = []
        for client in self.clients:
            sent = {SHARED: ticks, client.group: 2 if client.on_a else 1}
            client_lost = client_doubled = 0
            for group, count in sent.items():
                offsets = client.offsets.get(group, [])
                distinct = set(offsets)
                gone = sorted(set(range(1, count + 1)) - distinct)
                client_lost += len(gone)
                client_doubled += len(offsets) - len(distinct)
                if (gone or len(offsets) > len(distinct)) and len(examples) < 5:
                    examples.append(self.example(client, group, gone))
                epochs += len(client.epochs.get(group, ())) > 1
            lost += client_lost
            doubled += client_doubled
            touched += bool(client_lost or client_doubled)
            for answer in (client.resumed or {}).values():
                not_recovered += not answer.get("recovered")
                replayed += answer.get("missed", 0)
        missing = sum(1 for c in self.drained if not c.resumed_at)
        return {"shared_sent": ticks, "user_sent": len(self.clients) + len(self.drained),
                "lost": lost, "doubled": doubled, "clients_with_loss_or_double": touched,
                "epoch_changes": epochs, "not_recovered": not_recovered,
                "not_resumed": missing, "replayed": replayed,
                "failures": lost + doubled + epochs + not_recovered + missing,
                "examples": examples}

    def example(self, client: Client, group: str, missing: list[int]) -> dict[str, Any]:
        """What one client with a lost or doubled event saw, for the report."""
        t0 = self.sigterm_at
        return {"group": group, "drained": client.on_a, "missing": missing[:20],
                "offsets": client.offsets.get(group, [])[:200], "resumed": client.resumed,
                "resume": client.positions.decode(),
                "closed_s": round(client.closed_at - t0, 3) if client.closed_at else None,
                "open_s": round(client.open_at - t0, 3) if client.open_at else None,
                "resumed_s": round(client.resumed_at - t0, 3) if client.resumed_at else None}

    async def until(self, check: Any, timeout: float, what: str, fail: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                if fail:
                    raise SystemExit(f"rolling_restart: no {what} within {timeout:.0f} s")
                note(f"rolling_restart: no {what} within {timeout:.0f} s")
                return False
            await asyncio.sleep(0.05)
        return True


def tcp_counters() -> dict[str, int]:
    """The kernel's counts of SYNs dropped on full accept queues and of SYNs sent again
    (/proc/net/netstat, the whole machine): a listen backlog that overflows shows here."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()
             if line.startswith("TcpExt:")]
    if len(lines) < 2:
        return {}
    fields = dict(zip(lines[0][1:], lines[1][1:], strict=True))
    wanted = {"ListenOverflows": "listen_overflows", "TCPSynRetrans": "syn_retransmits"}
    return {name: int(fields.get(key, 0)) for key, name in wanted.items()}


def redis_info(port: int) -> dict[str, int]:
    """The integer fields of INFO (clients and stats) of the private redis-server."""
    fields: dict[str, int] = {}
    for section in ("clients", "stats"):
        for line in redis_command(port, "INFO", section).splitlines():
            name, _, value = line.partition(":")
            if value.strip().isdigit():
                fields[name] = int(value)
    return fields


def py_spy() -> str:
    """py-spy on PATH, or beside this interpreter (a virtualenv that is not activated)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        sys.exit("rolling_restart: --py-spy needs py-spy (pip install -e '.[bench]')")
    return found


def summary(values: list[float], scale: float) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(value * scale for value in values)
    return {"p50": round(statistics.median(ordered), 3),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
            "max": round(ordered[-1], 3)}


def headline(line: dict[str, Any]) -> str:
    r = line["result"]
    e = r["events"]
    return (f"rolling_restart n={r['clients']} ({r['drained']} drained, jitter "
            f"{line['params']['jitter_s']} s): last resumed {r['last_resumed_s']} s after "
            f"SIGTERM (p50 {r['resumed_s']['p50']} s; goal < {GOAL_S:.0f} s: "
            f"{'met' if r['goal_met'] else 'NOT met'}); {r['handshakes_per_s']} handshakes/s "
            f"on B (p50/p99 {r['handshake_ms']['p50']}/{r['handshake_ms']['p99']} ms), "
            f"resume p50/p99 {r['resume_ms']['p50']}/{r['resume_ms']['p99']} ms, B CPU "
            f"{r['b_cpu_pct_storm']} %; events: {e['shared_sent']} to {SHARED}, lost "
            f"{e['lost']}, doubled {e['doubled']}, not recovered {e['not_recovered']}, "
            f"replayed {e['replayed']}, all caught up {e['caught_up']}; "
            f"{r['failed']} never resumed, {r['redials']} redials, "
            f"{r['unexpected_closes']} unexpected closes; load average "
            f"{line['load_avg']['before'][0]} -> {line['load_avg']['after'][0]}; "
            f"A exited {r['a_exit_code']} after {r['a_exit_s']} s; client CPU "
            f"{client_cpu():.1f} s")


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
