"""Fan-out across two server processes sharing a Redis hub (run by hand, not by the tests).

    python -m bench.cluster_fanout [-n 1000] [-k 20] [--timeout 10] [--v2]
                                   [--history-size 100] [--compare-history] [--cluster]
                                   [--trip-life N]

Starts a private redis-server on a free port (no persistence), or with `--cluster` a
private Redis Cluster (tests/redis_cluster.py's: three masters with a replica each), and two
`python -m taxi_tornado serve` processes sharing it, one temporary data dir and one
secret. A rider and a driver are created with the CLI (`taxi-tornado createuser`) and log
in over HTTP; N driver sockets (the driver's token, so every socket is in `drivers`) are
opened alternately on the two processes, the rider's on the first. The rider then sends K
trip.request, one at a time: each waits until every driver socket has the trip or the
timeout passes. Prints one JSON line:

- `last_driver_ms`: per request, send -> the last driver socket received it (p50/p99/max);
- `delivery_ms`: per delivery, send -> that socket received it (p50/p99/max);
- `lost`: deliveries that never arrived (N * K expected);
- `redis_publish_per_send`: the PUBLISH (SPUBLISH on a cluster) calls Redis counted (INFO
  commandstats delta on the private redis-server, summed over a cluster's masters)
  divided by K; the hub's contract is 1.0 per group send whatever N is;
- `redis_round_trips_per_send`: the commands the servers sent for the group sends
  (EVALSHA and EVAL of the history script; (S)PUBLISH when history is off) divided by K
  (each trip.request sends to `drivers`, and to `trips:follow`; the script's own XADD,
  HINCRBY, PUBLISH… run inside Redis);
- `redis_commands_per_send`: every command Redis counted in that window, divided by K,
  the script's inner commands included (adds the (S)SUBSCRIBE that puts the rider in
  each new trip's group);
- `per_master`: per Redis (each master of a cluster), the commands of the window, their
  share, and the group sends (EVALSHA/EVAL, or (S)PUBLISH without history) it ran;
- `groups_home` (cluster only): the master that owns `drivers`, `trips:follow` and
  `admin` (a group lives on one shard: every fan-out of a trip to `drivers` lands
  there), and `trip_groups_per_master`: how the K trips' own groups (one per
  trip.request, joined by the rider) spread over the masters.

`--trip-life N` then lives each trip through, as a city does, and counts the commands of
that second window apart (`life`): one more v2 socket of the driver, on the second
process, claims the trip (STARTED), sends N `driver.location` (relayed to the trip's
group, where the rider is) and moves it to IN_PROGRESS and COMPLETED, one trip after
another. `life.per_master` is that window alone, `city_per_master` both windows
together (the requests' fan-out and the trips' lives): a trip's own group lives on the
master its id hashes to, so this is the load that spreads. The fan-out figures above
are measured before it, as without the flag.

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
    parser.add_argument("--cluster", action="store_true",
                        help="a private Redis Cluster (3 masters) instead of one Redis")
    parser.add_argument("--trip-life", type=int, default=0, metavar="N",
                        help="then claim, relay N locations and complete every trip")
    args = parser.parse_args()
    raise_fd_limit()
    sizes = [args.history_size] if not args.compare_history else \
        [size for _ in range(args.rounds) for size in (args.history_size, 0)]
    results = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="taxi-cluster-bench-") as tmp:
            result = Cluster(Path(tmp), size, args.cluster).run(
                args.drivers, args.sends, args.timeout, args.v2, args.trip_life)
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
    """A private Redis (or Redis Cluster, `redis_cluster`) and two server processes in
    `directory`; run() cleans them up."""

    def __init__(self, directory: Path, history_size: int = 100,
                 redis_cluster: bool = False) -> None:
        self.directory = directory
        self.history_size = history_size
        self.redis_port = free_port()
        self.ports = [free_port(), free_port()]
        self.children: list[subprocess.Popen[bytes]] = []
        self.use_cluster = redis_cluster
        self.redis_cluster: Any = None  # tests.redis_cluster.RedisCluster once started
        self.master_ports = [self.redis_port]

    def run(self, drivers: int, sends: int, timeout: float, v2: bool = False,
            trip_life: int = 0) -> dict[str, Any]:
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
                                       timeout, v2, trip_life))
        finally:
            if self.redis_cluster is not None:
                self.redis_cluster.stop()
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
            "TAXI_HUB_URL": self.redis_cluster.url if self.redis_cluster is not None
            else f"redis://127.0.0.1:{self.redis_port}/0",
            "TAXI_HUB_PREFIX": PREFIX,
            "TAXI_HUB_HISTORY_SIZE": str(self.history_size),
            # One rider requests every trip, in a row: lift its quota and budget.
            "TAXI_LIMITS_TRIPS_PER_RIDER": "0",
            "TAXI_LIMITS_TRIP_REQUESTS": "0",
            # Every driver socket is the one driver's: lift the sockets-per-user cap.
            "TAXI_LIMITS_SOCKETS_PER_USER": "0",
            # The trip lives' driver sends its locations in a row.
            "TAXI_LIMITS_RATE": "1000000",
            "TAXI_LIMITS_BURST": "1000000",
            "TAXI_LOG_LEVEL": "warning",
        }

    def start_redis(self) -> None:
        if self.use_cluster:
            self.start_redis_cluster()
            return
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("cluster_fanout: redis-server is not installed")
        self.children.append(subprocess.Popen(
            [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(lambda: redis_command(self.redis_port, "PING") == "PONG", "redis-server")

    def start_redis_cluster(self) -> None:
        """As bench/dispatch.py's PrivateCluster: the tests' cluster, three masters."""
        from tests.redis_cluster import RedisCluster

        self.redis_cluster = RedisCluster(self.directory / "redis-cluster")
        self.redis_cluster.start()
        self.master_ports = [master.port for master in self.redis_cluster.masters()]

    def home(self, group: str) -> str:
        """host:port of the master owning `group` (its names all carry `{group}`)."""
        return str(self.redis_cluster.node_for("{" + group + "}").address)

    def start_server(self, n: int, port: int) -> None:
        log = (self.directory / f"server-{n}.log").open("wb")
        self.children.append(subprocess.Popen(
            [sys.executable, "-m", "taxi_tornado", "serve"], env=self.env(port),
            cwd=self.directory, stdout=log, stderr=subprocess.STDOUT))
        wait_until(lambda: http_status(port, "/readyz") == 200, f"server {n} on :{port}")

    def command_calls(self) -> dict[int, dict[str, int]]:
        """Per master port: calls per command from INFO commandstats (`evalsha`, ...)."""
        return {port: command_calls(port) for port in self.master_ports}


def command_calls(port: int) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in redis_command(port, "INFO", "commandstats").splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line.partition(":")
        calls[name.removeprefix("cmdstat_")] = int(fields.split(",")[0].split("=")[1])
    return calls


def round_trips(before: dict[str, int], after: dict[str, int], history: bool) -> int:
    """The commands a server sends for group sends: the history script, or (S)PUBLISH."""
    return delta(before, after, ("evalsha", "eval") if history else PUBLISH)


PUBLISH = ("publish", "spublish")


def delta(before: dict[str, int], after: dict[str, int],
          names: tuple[str, ...] | None = None) -> int:
    """Calls of `names` (every command when None) between two commandstats samples."""
    names = tuple(after) if names is None else names
    return sum(after.get(name, 0) - before.get(name, 0) for name in names)


def per_master(cluster: Cluster, before: dict[int, dict[str, int]],
               after: dict[int, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per master: its commands in the window (less the bench's one INFO before), their
    share of all, and the group sends it ran."""
    history = cluster.history_size > 0
    calls = {port: delta(before[port], after[port]) - 1 for port in after}
    total = sum(calls.values()) or 1
    return {f"127.0.0.1:{port}": {
        "calls": calls[port], "share": round(calls[port] / total, 3),
        "group_sends": round_trips(before[port], after[port], history),
        "subscribes": delta(before[port], after[port], ("subscribe", "ssubscribe"))}
        for port in after}


async def fan_out(cluster: Cluster, rider_token: str, driver_token: str, drivers: int,
                  sends: int, timeout: float, v2: bool, trip_life: int = 0) -> dict[str, Any]:
    received: dict[int, list[float]] = {k: [] for k in range(sends)}
    everyone = asyncio.Event()
    expected = drivers
    counting = True  # the trips' later events carry the same marker: not deliveries

    def on_trip(k: int, at: float) -> None:
        if not counting:
            return
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
    trip_ids: list[str] = []
    calls_before = cluster.command_calls()
    for k in range(sends):
        everyone.clear()
        sent_at.append(time.monotonic())
        await rider.send(json.dumps({"type": "trip.request", "data": {
            "pick_up_address": f"bench-{k}", "drop_off_address": "bench drop-off"}}))
        trip_ids.append(str(json.loads(await rider.recv()).get("data", {}).get("id")))
        if len(received[k]) < expected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(everyone.wait(), timeout)
    calls_after = cluster.command_calls()
    counting = False
    life = None
    if trip_life:
        life = await live_trips(cluster, driver_token, trip_ids, trip_life)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*(ws.close() for ws in [*sockets, rider]), return_exceptions=True)

    last = [(max(received[k]) - sent_at[k]) * 1000 for k in range(sends) if received[k]]
    each = [(at - sent_at[k]) * 1000 for k in range(sends) for at in received[k]]
    masters = per_master(cluster, calls_before, calls_after)
    result = {
        "scenario": "cluster_fanout",
        "redis_cluster": cluster.redis_cluster is not None,
        "processes": 2,
        "history_size": cluster.history_size,
        "v2": v2,
        "drivers": drivers,
        "sends": sends,
        "last_driver_ms": summary(last),
        "delivery_ms": summary(each),
        "lost": drivers * sends - len(each),
        "redis_publish_per_send": sum(delta(calls_before[port], calls_after[port], PUBLISH)
                                      for port in calls_after) / sends,
        "redis_round_trips_per_send": sum(m["group_sends"] for m in masters.values()) / sends,
        "redis_commands_per_send": sum(m["calls"] for m in masters.values()) / sends,
        "per_master": masters,
    }
    if life is not None:
        calls_end = life.pop("calls_end")
        life["per_master"] = per_master(cluster, calls_after, calls_end)
        life["commands_per_trip"] = sum(m["calls"] for m in life["per_master"].values()) / sends
        result["life"] = life
        result["city_per_master"] = per_master(cluster, calls_before, calls_end)
    if cluster.redis_cluster is not None:
        result["groups_home"] = {group: cluster.home(group)
                                 for group in ("drivers", "trips:follow", "admin")}
        homes = [cluster.home(trip_id) for trip_id in trip_ids]
        result["trip_groups_per_master"] = {address: homes.count(address)
                                            for address in masters}
    return result


async def live_trips(cluster: Cluster, driver_token: str, trip_ids: list[str],
                     locations: int) -> dict[str, Any]:
    """Claim, relay `locations` positions on, and complete each trip in turn, from one
    more v2 socket of the driver on the second process; returns what went wrong and the
    command counts at the end (`calls_end`)."""
    driver = await websockets.connect(
        f"ws://127.0.0.1:{cluster.ports[1]}/taxi/?token={driver_token}",
        subprotocols=[Subprotocol("taxi.v2")], compression=None, max_queue=None,
        ping_interval=None)
    refused: dict[str, int] = {}
    frame_id = 0

    async def ask(message: dict[str, Any]) -> None:
        nonlocal frame_id
        frame_id += 1
        await driver.send(json.dumps({**message, "id": frame_id}))
        while True:
            answer = json.loads(await driver.recv())
            if answer.get("id") == frame_id:
                break
        if answer.get("type") == "error":
            code = str(answer.get("data", {}).get("code"))
            refused[code] = refused.get(code, 0) + 1

    async def move(trip_id: str, status: str) -> None:
        await ask({"type": "trip.update", "data": {"id": trip_id, "status": status}})

    for trip_id in trip_ids:
        await move(trip_id, "STARTED")
        for n in range(locations):
            await driver.send(json.dumps({"type": "driver.location", "data": {
                "lat": 52.52 + n * 1e-4, "lng": 13.40}}))
        await move(trip_id, "IN_PROGRESS")  # answered after every location: in order
        await move(trip_id, "COMPLETED")
    calls_end = cluster.command_calls()
    await driver.close()
    return {"locations_per_trip": locations, "refused": refused, "calls_end": calls_end}


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
