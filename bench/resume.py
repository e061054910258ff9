"""Resume through Redis: how long a reconnecting client waits for what it missed.

    python -m bench.resume [-m 100] [-r 50] [--processes 2]

Starts a private redis-server (no persistence) and `--processes` server processes sharing
it (bench/cluster_fanout.py's Cluster). A rider logs in over HTTP and holds a position in
its `user:<id>` group. Then, R times: its socket closes; M events are sent to that group
through a hub of the bench's own (one EVALSHA each, as another service would); a new
socket opens (taxi.v2, on the next process) and sends `session.resume` with
the last position. Measured: `session.resume` sent -> `session.resumed` received, after
the M replayed events (checked: exactly M, in order); also until the first of them.
Prints one JSON line with p50/p99/max in ms, and the Redis round trips per group send
(EVALSHA + EVAL calls from INFO commandstats while the events are sent, divided by the
sends; the contract is 1.0). Time is the client's (bench/wsclient.py, orjson), on the
same machine as the servers and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.cluster_fanout import Cluster, command_calls, create_user, log_in, round_trips
from bench.target import free_port, raise_fd_limit
from bench.wsclient import WsClient, connect
from taxi_tornado.hub import Hub, RedisBroker

PREFIX = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--missed", type=int, default=100)
    parser.add_argument("-r", "--rounds", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="taxi-resume-bench-") as tmp:
        cluster = Cluster(Path(tmp))
        cluster.ports = [free_port() for _ in range(args.processes)]
        try:
            cluster.start_redis()
            rider = create_user(cluster.env(), cluster.directory, "bench-rider", "rider")
            for n, port in enumerate(cluster.ports):
                cluster.start_server(n, port)
            token = log_in(cluster.ports[0], rider)
            result = asyncio.run(resume_rounds(cluster, token, args.missed, args.rounds))
        finally:
            for child in reversed(cluster.children):
                child.terminate()
            for child in cluster.children:
                child.wait(15)
    print(json.dumps(result))


async def resume_rounds(cluster: Cluster, token: str, missed: int,
                        rounds: int) -> dict[str, Any]:
    group = f"user:{_claim(token, 'id')}"
    service = Hub(RedisBroker(f"redis://127.0.0.1:{cluster.redis_port}/0", PREFIX))
    await service.start()
    try:
        ws = await open_socket(cluster.ports[0], token)
        await service.send(group, {"type": "bench.event", "data": 0})
        position = (await ws.recv())[1]["pos"]
        await ws.close()
        waits: list[float] = []
        firsts: list[float] = []
        sends = trips = 0
        for round_no in range(rounds):
            calls_before = command_calls(cluster.redis_port)
            for n in range(missed):
                await service.send(group, {"type": "bench.event",
                                           "data": {"round": round_no, "n": n}})
            trips += round_trips(calls_before, command_calls(cluster.redis_port), True)
            sends += missed
            port = cluster.ports[(round_no + 1) % len(cluster.ports)]
            ws = await open_socket(port, token)
            first, waited, position = await resume_once(ws, position, missed)
            firsts.append(first)
            waits.append(waited)
            await ws.close()
    finally:
        await service.stop()
    return {
        "scenario": "resume", "processes": len(cluster.ports), "missed": missed,
        "rounds": rounds, "resume_ms": summary(waits), "first_event_ms": summary(firsts),
        "redis_round_trips_per_send": trips / sends,
    }


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "max": round(ordered[-1], 2)}


async def open_socket(port: int, token: str) -> Reader:
    reader = Reader()
    reader.client = await connect("127.0.0.1", port, "/taxi/", token, reader.on_frame,
                                  "taxi.v2")
    return reader


class Reader:
    """The frames of one socket, decoded as they come (bench/wsclient.py: a client that
    costs little CPU, so that the time measured is the server's and Redis's)."""

    def __init__(self) -> None:
        self.client: WsClient | None = None
        self.frames: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()

    def on_frame(self, client: WsClient, payload: bytes) -> None:
        self.frames.put_nowait((time.perf_counter(), orjson.loads(payload)))

    async def recv(self) -> tuple[float, dict[str, Any]]:
        return await asyncio.wait_for(self.frames.get(), 10)

    def send(self, message: dict[str, Any]) -> None:
        assert self.client is not None
        self.client.send(orjson.dumps(message))

    async def close(self) -> None:
        if self.client is not None:
            self.client.close()


async def resume_once(ws: Reader, position: dict[str, Any],
                      missed: int) -> tuple[float, float, dict[str, Any]]:
    """One resume: milliseconds until the first replayed event and until
    `session.resumed`, and the new last position."""
    group = position["group"]
    began = time.perf_counter()
    ws.send({"type": "session.resume", "id": 1, "data": {"positions": {
        group: {"offset": position["offset"], "epoch": position["epoch"]}}}})
    offsets = []
    first = 0.0
    while True:
        at, message = await ws.recv()
        if not first:
            first = (at - began) * 1000
        if message["type"] == "session.resumed":
            waited = (at - began) * 1000
            break
        offsets.append(message["pos"]["offset"])
        position = message["pos"]
    result = message["data"]["groups"][group]
    expected = list(range(offsets[0], offsets[0] + missed)) if offsets else []
    if result != {"recovered": True, "missed": missed} or offsets != expected:
        raise SystemExit(f"resume: wrong replay {result}, offsets {offsets[:3]}...")
    return first, waited, position


def _claim(token: str, name: str) -> str:
    import base64

    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return str(claims[name])


if __name__ == "__main__":
    main()
