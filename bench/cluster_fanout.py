"""Fan-out across two server processes sharing a Redis hub (run by hand, not by the tests).

    python -m bench.cluster_fanout [-n 1000] [-k 20] [--timeout 10] [--v2]
                                   [--history-size 100] [--compare-history]

Starts a private redis-server on a free port (no persistence) and two
`python -m taxi_tornado serve` processes sharing it, one temporary data dir and one
secret. A rider and a driver are created with the CLI (`taxi-tornado createuser`) and log
in over HTTP; N driver sockets (the driver's token, so every socket is in `drivers`) are
opened alternately on the two processes, the rider's on the first. The rider then sends K
trip.request, one at a time: each waits until every driver socket has the trip or the
timeout passes. Prints one JSON line:

- `last_driver_ms`: per request, send -> the last driver socket received it (p50/p99/max);
- `delivery_ms`: per delivery, send -> that socket received it (p50/p99/max);
- `lost`: deliveries that never arrived (N * K expected);
- `redis_publish_per_send`: the PUBLISH calls Redis counted (INFO commandstats delta on
  the private redis-server) divided by K; the hub's contract is 1.0 whatever N is;
- `redis_round_trips_per_send`: the commands the servers sent for the group sends
  (EVALSHA and EVAL of the history script; PUBLISH when history is off) divided by K:
  the contract is 1.0 (the script's own XADD, HINCRBY, PUBLISH… run inside Redis);
- `redis_commands_per_send`: every command Redis counted in that window, divided by K,
  the script's inner commands included (adds the SUBSCRIBE that puts the rider in each
  new trip's group).

`--history-size 0` runs the servers without history (no positions, one PUBLISH per
send); `--compare-history` runs history on and off alternately, `--rounds` times each,
and prints a last line with the medians and the ratio on/off. `--v2` opens the drivers
with the taxi.v2 subprotocol (their events carry `pos`).

Time is `time.monotonic()` in this one client process; the client shares the machine's
cores with both servers and Redis, so the figures are an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from bench.target import free_port, raise_fd_limit

SECRET = "cluster-bench-secret-key-long-enough-for-hs256"
PASSWORD = "bench-pAssw0rd"
PREFIX = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--drivers", type=int, default=1000)
    parser.add_argument("-k", "--sends", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for every driver to receive one request")
    parser.add_argument("--history-size", type=int, default=100,
                        help="the servers' hub.history_size (0 = history off)")
    parser.add_argument("--compare-history", action="store_true",
                        help="history on (--history-size) against off, alternately")
    parser.add_argument("--rounds", type=int, default=2, help="with --compare-history")
    parser.add_argument("--v2", action="store_true", help="the drivers speak taxi.v2")
    args = parser.parse_args()
    raise_fd_limit()
    sizes = [args.history_size] if not args.compare_history else \
        [size for _ in range(args.rounds) for size in (args.history_size, 0)]
    results = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="taxi-cluster-bench-") as tmp:
            result = Cluster(Path(tmp), size).run(args.drivers, args.sends, args.timeout,
                                                  args.v2)
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.compare_history:
        print(json.dumps(compare_history(results)))


def compare_history(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the last driver's p50/p99 with history on and off, and on/off."""
    median: dict[str, dict[str, float]] = {}
    for label, on in (("history_on", True), ("history_off", False)):
        runs = [r for r in results if (r["history_size"] > 0) == on]
        median[label] = {
            figure: round(statistics.median(r["last_driver_ms"][figure] for r in runs), 2)
            for figure in ("p50", "p99")}
    return {"scenario": "cluster_fanout", "summary": True, "median": median,
            "ratio_on_off": {figure: round(median["history_on"][figure]
                                           / median["history_off"][figure], 3)
                             for figure in ("p50", "p99")}}


class Cluster:
    """A private Redis and two server processes in `directory`; run() cleans them up."""

    def __init__(self, directory: Path, history_size: int = 100) -> None:
        self.directory = directory
        self.history_size = history_size
        self.redis_port = free_port()
        self.ports = [free_port(), free_port()]
        self.children: list[subprocess.Popen[bytes]] = []

    def run(self, drivers: int, sends: int, timeout: float, v2: bool = False
            ) -> dict[str, Any]:
        try:
            self.start_redis()
            env = self.env()
            rider = create_user(env, self.directory, "bench-rider", "rider")
            driver = create_user(env, self.directory, "bench-driver", "driver")
            for n, port in enumerate(self.ports):
                self.start_server(n, port)
            rider_token = log_in(self.ports[0], rider)
            driver_token = log_in(self.ports[1], driver)
            return asyncio.run(fan_out(self, rider_token, driver_token, drivers, sends,
                                       timeout, v2))
        finally:
            for child in reversed(self.children):
                child.terminate()
            for child in self.children:
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()

    def env(self, port: int = 0) -> dict[str, str]:
        return {
            **os.environ,
            "TAXI_DATA_DIR": str(self.directory / "data"),
            "TAXI_SERVER_PORT": str(port),
            "TAXI_AUTH_SECRET_KEY": SECRET,
            "TAXI_HUB_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "TAXI_HUB_PREFIX": PREFIX,
            "TAXI_HUB_HISTORY_SIZE": str(self.history_size),
            # One rider requests every trip, in a row: lift its quota and budget.
            "TAXI_LIMITS_TRIPS_PER_RIDER": "0",
            "TAXI_LIMITS_TRIP_REQUESTS": "0",
            "TAXI_LOG_LEVEL": "warning",
        }

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("cluster_fanout: redis-server is not installed")
        self.children.append(subprocess.Popen(
            [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(lambda: redis_command(self.redis_port, "PING") == "PONG", "redis-server")

    def start_server(self, n: int, port: int) -> None:
        log = (self.directory / f"server-{n}.log").open("wb")
        self.children.append(subprocess.Popen(
            [sys.executable, "-m", "taxi_tornado", "serve"], env=self.env(port),
            cwd=self.directory, stdout=log, stderr=subprocess.STDOUT))
        wait_until(lambda: http_status(port, "/readyz") == 200, f"server {n} on :{port}")

    def publish_calls(self) -> tuple[int, int]:
        """(PUBLISH calls, all calls) from INFO commandstats."""
        calls = self.command_calls()
        return calls.get("publish", 0), sum(calls.values())

    def command_calls(self) -> dict[str, int]:
        """Calls per command from INFO commandstats (`publish`, `evalsha`, ...)."""
        return command_calls(self.redis_port)


def command_calls(port: int) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in redis_command(port, "INFO", "commandstats").splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line.partition(":")
        calls[name.removeprefix("cmdstat_")] = int(fields.split(",")[0].split("=")[1])
    return calls


def round_trips(before: dict[str, int], after: dict[str, int], history: bool) -> int:
    """The commands a server sends for group sends: the history script, or PUBLISH."""
    names = ("evalsha", "eval") if history else ("publish",)
    return sum(after.get(name, 0) - before.get(name, 0) for name in names)


async def fan_out(cluster: Cluster, rider_token: str, driver_token: str, drivers: int,
                  sends: int, timeout: float, v2: bool) -> dict[str, Any]:
    received: dict[int, list[float]] = {k: [] for k in range(sends)}
    everyone = asyncio.Event()
    expected = drivers

    def on_trip(k: int, at: float) -> None:
        got = received[k]
        got.append(at)
        if len(got) == expected:
            everyone.set()

    semaphore = asyncio.Semaphore(50)

    async def open_driver(n: int) -> ClientConnection:
        async with semaphore:
            port = cluster.ports[n % 2]
            return await websockets.connect(
                f"ws://127.0.0.1:{port}/taxi/?token={driver_token}",
                subprotocols=[Subprotocol("taxi.v2")] if v2 else None, compression=None,
                max_queue=None, ping_interval=None)

    sockets = await asyncio.gather(*(open_driver(n) for n in range(drivers)))
    readers = [asyncio.ensure_future(read_trips(ws, on_trip)) for ws in sockets]
    rider = await websockets.connect(f"ws://127.0.0.1:{cluster.ports[0]}/taxi/"
                                     f"?token={rider_token}", compression=None,
                                     ping_interval=None)
    sent_at: list[float] = []
    calls_before = cluster.command_calls()
    publish_before, total_before = cluster.publish_calls()
    for k in range(sends):
        everyone.clear()
        sent_at.append(time.monotonic())
        await rider.send(json.dumps({"type": "trip.request", "data": {
            "pick_up_address": f"bench-{k}", "drop_off_address": "bench drop-off"}}))
        await rider.recv()
        if len(received[k]) < expected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(everyone.wait(), timeout)
    publish_after, total_after = cluster.publish_calls()
    calls_after = cluster.command_calls()
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*(ws.close() for ws in [*sockets, rider]), return_exceptions=True)

    last = [(max(received[k]) - sent_at[k]) * 1000 for k in range(sends) if received[k]]
    each = [(at - sent_at[k]) * 1000 for k in range(sends) for at in received[k]]
    return {
        "scenario": "cluster_fanout",
        "processes": 2,
        "history_size": cluster.history_size,
        "v2": v2,
        "drivers": drivers,
        "sends": sends,
        "last_driver_ms": summary(last),
        "delivery_ms": summary(each),
        "lost": drivers * sends - len(each),
        "redis_publish_per_send": (publish_after - publish_before) / sends,
        "redis_round_trips_per_send": round_trips(calls_before, calls_after,
                                                  cluster.history_size > 0) / sends,
        "redis_commands_per_send": (total_after - total_before - 1) / sends,
    }


async def read_trips(ws: ClientConnection, on_trip: Any) -> None:
    """Record when each bench trip reaches this socket; nothing else is parsed."""
    marker = '"pick_up_address":"bench-'
    async for message in ws:
        at = time.monotonic()
        assert isinstance(message, str)
        start = message.find(marker)
        if start < 0:
            continue
        start += len(marker)
        on_trip(int(message[start:message.index('"', start)]), at)


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max": round(ordered[-1], 2),
    }


def create_user(env: dict[str, str], directory: Path, username: str, group: str) -> str:
    subprocess.run(
        [sys.executable, "-m", "taxi_tornado", "createuser", username, "--group", group,
         "--password-stdin"], input=PASSWORD + "\n", env=env, cwd=directory,
        capture_output=True, text=True, check=True)
    return username


def log_in(port: int, username: str) -> str:
    request = Request(f"http://127.0.0.1:{port}/api/log_in/", headers={
        "Content-Type": "application/json"},
        data=json.dumps({"username": username, "password": PASSWORD}).encode())
    with urlopen(request, timeout=30) as response:
        token: str = json.load(response)["access"]
        return token


def http_status(port: int, path: str) -> int:
    try:
        with urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
            status: int = response.status
            return status
    except OSError:
        return 0


def redis_command(port: int, *words: str) -> str:
    """One command over a raw socket (RESP inline is enough for PING and INFO)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            reply = b""
            while True:
                chunk = sock.recv(65536)
                reply += chunk
                if reply.startswith(b"+") and reply.endswith(b"\r\n"):
                    return reply[1:-2].decode()
                if reply.startswith(b"$"):
                    size, _, body = reply.partition(b"\r\n")
                    if len(body) >= int(size[1:]) + 2:
                        return body[:int(size[1:])].decode()
                if not chunk:
                    return reply.decode(errors="replace")
    except OSError:
        return ""


def wait_until(check: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    sys.exit(f"cluster_fanout: {what} did not come up within {timeout}s")


if __name__ == "__main__":
    main()
