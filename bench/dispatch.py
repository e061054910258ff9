"""Dispatch benches (run by hand): location ingest, and offer latency.

    python -m bench.dispatch ingest -n 1000,2000,5000 [-d 10] [--target both] [--redis | --cluster]
    python -m bench.dispatch offer  -n 1000 [-k 200] [--redis | --cluster] [--cities 12]

`ingest`: N drivers each send `driver.location` once a second (spread over the second,
from positions spread over a city, moving), a tenth of them on STARTED trips with a
listening v2 rider. For each N of the steps it reports the updates sent per second, how
many the server ingested (its `taxi_frames_in{type="driver.location"}` minus error
frames; the baseline ingests nothing, it only relays), the driver-to-rider relay
latency (p50/p99) and the server's CPU. A step *keeps up* when every update was ingested
and the relay p99 is at most 50 ms. `--target both` runs bench/baseline.py, which relays
the same frames, in the same sitting.

`offer`: N drivers (v2) connect and report one position each, spread over a city; the
server runs `dispatch.mode = "nearest"`. The rider then sends K `trip.request` with a
pick-up at a random point, one at a time, and cancels each once answered; the figure is
the time from the request's send to the first `trip.offer` any driver socket received.

`--redis` starts a private redis-server (no persistence) and points the server's hub at
it; add `--server-env TAXI_SERVER_PROCESSES=2` for two processes sharing it (server CPU
then counts every worker). `--cluster` starts a private Redis Cluster instead (three
masters, three replicas: tests/redis_cluster.py). `--cities N` spreads drivers and
pick-ups over N cities (each its own dispatch region, so a cluster shares them out).
With either, each line gets `redis`: per Redis (each master) the commands it ran in the
run, its share of them, and its CPU seconds. Everything else is bench/loadgen.py's
machinery: fresh data, users and tokens (bench/target.py), client worker processes, one
JSON line per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import orjson

from bench import loadgen
from bench.loadgen import Scenario, Worker, note, percentiles, rider_token, run_once
from bench.target import Population, Target, free_port, issue_tokens, prepare, raise_fd_limit
from bench.wsclient import WsClient

CENTER = (52.52, 13.405)
# With --cities N, drivers and pick-ups spread over the first N: each its own dispatch
# region (an H3 cell of resolution 4), so a cluster spreads them over its masters.
CITIES = [CENTER, (48.857, 2.352), (40.417, -3.704), (41.903, 12.496), (48.208, 16.373),
          (52.230, 21.012), (59.914, 10.752), (38.722, -9.139), (37.984, 23.728),
          (53.350, -6.260), (50.076, 14.438), (60.170, 24.938)]
CITY_M = 8000  # drivers are spread over a square of twice this side
METRES_PER_DEGREE = 111_320
LOCATION_FRAMES = re.compile(rb'^taxi_frames_in_total\{type="driver.location"\} ([0-9.e+]+)$',
                             re.M)
RELAY_P99_LIMIT_MS = 50


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    raise_fd_limit()
    redis: PrivateRedis | PrivateCluster | None = None
    if args.cluster:
        redis = PrivateCluster()
    elif args.redis:
        redis = PrivateRedis()
    try:
        if redis is not None:
            args.server_env += [f"TAXI_HUB_URL={redis.url}", "TAXI_HUB_PREFIX=bench"]
        steps = [int(step) for step in args.n.split(",")]
        scenario = INGEST if args.scenario == "ingest" else OFFER
        kinds = ["baseline", "taxi"] if args.target == "both" else [args.target]
        if args.scenario == "offer":
            kinds = ["taxi"]  # the baseline has no dispatch
            args.server_env += OFFER_ENV
        population = prepare(**scenario.population_for(max(steps), args))
        try:
            for step in steps:
                args.step = step
                for kind in kinds:
                    if redis is not None:
                        redis.flush()
                    before = redis.sample() if redis is not None else {}
                    line = run_once(scenario, kind, population, args)
                    if redis is not None:
                        line["redis"] = redis_load(before, redis.sample())
                    print(json.dumps(line), flush=True)
                    note(f"{args.scenario} n={step} {kind}: {scenario.headline(line['result'])}")
        finally:
            shutil.rmtree(population.data_dir, ignore_errors=True)
    finally:
        if redis is not None:
            redis.stop()
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("scenario", choices=("ingest", "offer"))
    top.add_argument("-n", default="1000", help="drivers; comma-separated steps")
    top.add_argument("-d", type=float, default=10, help="ingest: measured seconds")
    top.add_argument("--warmup", type=float, default=3, help="ingest: seconds before")
    top.add_argument("-k", type=int, default=200, help="offer: trip requests")
    top.add_argument("--target", choices=("taxi", "baseline", "both"), default="taxi")
    top.add_argument("--redis", action="store_true", help="hub on a private redis-server")
    top.add_argument("--cluster", action="store_true",
                     help="hub on a private Redis Cluster (3 masters, 3 replicas)")
    top.add_argument("--cities", type=int, default=1, choices=range(1, len(CITIES) + 1),
                     metavar="N", help=f"drivers spread over N cities (1-{len(CITIES)})")
    top.add_argument("--procs", type=int, default=1, help="client worker processes")
    top.add_argument("--no-uvloop", action="store_true")
    top.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    top.add_argument("-p", type=int, default=100, help="dials in parallel")
    top.add_argument("--settle", type=float, default=2, help="seconds before the start")
    top.add_argument("--py-spy", metavar="FILE", help="profile the taxi_tornado server")
    return top


# Offers must not expire, nor positions go stale, while the bench runs.
OFFER_ENV = ["TAXI_DISPATCH_MODE=nearest", "TAXI_DISPATCH_OFFER_TIMEOUT=600",
             "TAXI_DISPATCH_MAX_WAIT=1200", "TAXI_DISPATCH_LOCATION_TTL=1200",
             "TAXI_LOG_LEVEL=warning"]


def city_point(rng: random.Random, half_side_m: float = CITY_M,
               cities: int = 1) -> tuple[float, float]:
    center = CITIES[rng.randrange(cities)] if cities > 1 else CENTER
    north, east = rng.uniform(-half_side_m, half_side_m), rng.uniform(-half_side_m, half_side_m)
    lat = center[0] + north / METRES_PER_DEGREE
    return lat, center[1] + east / (METRES_PER_DEGREE * math.cos(math.radians(center[0])))


def location_frames_in(port: int) -> int:
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        found = LOCATION_FRAMES.search(response.read())
    return int(float(found.group(1))) if found else 0


# ------------------------------------------------------------------ ingest


class Ingest(Scenario):
    name = "ingest"
    figures = ("updates_per_s", "ingested", "sent_total", "relay_p99_ms", "server_cpu_pct",
               "keeps_up")
    per_message = "sent"

    def population_for(self, drivers: int, args: argparse.Namespace) -> dict[str, int]:
        pairs = drivers // 10
        return {"drivers": drivers, "riders": pairs, "pairs": pairs}

    def window(self, start: int, args: argparse.Namespace) -> tuple[int, int] | None:
        return start + int(args.warmup * 1e9), start + int((args.warmup + args.d) * 1e9)

    def params(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"n": args.step, "riders": args.step // 10, "d_s": args.d,
                "warmup_s": args.warmup, "hz": 1}

    def tokens(self, target: Target, population: Population,
               args: argparse.Namespace) -> dict[str, list[str]]:
        self.target = target
        riders = population.riders[:args.step // 10]
        return {"drivers": issue_tokens(population, population.drivers[:args.step], target.port),
                "riders": issue_tokens(population, riders, target.port)}

    def share(self, tokens: dict[str, list[str]], index: int, procs: int,
              args: argparse.Namespace) -> dict[str, Any]:
        return {"index": index, "drivers": tokens["drivers"][index::procs],
                "riders": tokens["riders"][index::procs]}

    def merge(self, ready: list[dict[str, Any]], done: list[dict[str, Any]], start: int,
              args: argparse.Namespace) -> dict[str, Any]:
        latencies = sorted(x for item in done for x in item["latencies"])
        sent_total = sum(item["sent_total"] for item in done)
        errors = sum(item["error_frames"] for item in done)
        relays = sum(item["relays_sent"] for item in done)
        ingested = None
        forked = any(item.startswith("TAXI_SERVER_PROCESSES=") and item != (
            "TAXI_SERVER_PROCESSES=1") for item in args.server_env)
        if self.target.kind == "taxi" and not forked:  # /metrics is one process's
            ingested = location_frames_in(self.target.port) - errors
        result: dict[str, Any] = {
            "drivers": sum(item["drivers"] for item in ready),
            "connect_errors": loadgen._sum_errors(ready),
            "sent": sum(item["sent"] for item in done),
            "sent_total": sent_total, "ingested": ingested, "error_frames": errors,
            "updates_per_s": round(sum(item["sent"] for item in done) / args.d, 1),
            "relays_sent": relays, "relays_lost": relays - len(latencies)}
        result.update(percentiles(latencies, "relay_"))
        p99 = result.get("relay_p99_ms")
        result["keeps_up"] = bool(
            (ingested is None or ingested == sent_total) and p99 is not None
            and p99 <= RELAY_P99_LIMIT_MS and result["relays_lost"] == 0)
        return result


class IngestWorker(Worker):
    async def open(self) -> dict[str, Any]:
        self.rng = random.Random(self.share["index"])
        riders, _, rider_errors = await self.dial(self.share["riders"], self.on_rider_frame,
                                                  self.options["p"], "taxi.v2")
        drivers, _, driver_errors = await self.dial(self.share["drivers"],
                                                    self.on_driver_frame, self.options["p"],
                                                    "taxi.v2")
        self.clients = [*riders, *drivers]
        self.drivers = [driver for driver in drivers if driver is not None]
        for number, driver in enumerate(self.drivers):
            driver.tag = {"at": list(city_point(self.rng, cities=self.options["cities"])),
                          "sent": {},
                          "paired": number < len(riders) and riders[number] is not None}
        for driver, rider in zip(drivers, riders, strict=False):
            if driver is not None and rider is not None:
                rider.tag = driver.tag
        # Reports go out in this order over each second: shuffled, the drivers on trips
        # spread over the second as in a city (in dial order they all reported in its first
        # tenth, a burst of relays the server met every second).
        self.rng.shuffle(self.drivers)
        return {"drivers": len(self.drivers), "errors": {**rider_errors, **driver_errors}}

    async def go(self, start: int) -> dict[str, Any]:
        warmup, measured = self.options["warmup"], self.options["d"]
        self.window = (start + int(warmup * 1e9), start + int((warmup + measured) * 1e9))
        self.latencies: list[int] = []
        self.sent = self.sent_total = self.relays_sent = self.error_frames = 0
        count = len(self.drivers)
        for tick in range(int(warmup + measured)):
            for number, driver in enumerate(self.drivers):
                at = start + tick * 1_000_000_000 + number * 1_000_000_000 // max(count, 1)
                delay = at - time.monotonic_ns()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
                self.report(driver, tick % 1000)
        await asyncio.sleep(2)  # let the last relays arrive
        return {"latencies": self.latencies, "sent": self.sent, "sent_total": self.sent_total,
                "relays_sent": self.relays_sent, "error_frames": self.error_frames}

    def report(self, driver: WsClient, seq: int) -> None:
        tag: dict[str, Any] = driver.tag  # type: ignore[assignment]
        position = tag["at"]
        position[0] += self.rng.uniform(-1e-4, 1e-4)  # about ten metres a second
        position[1] += self.rng.uniform(-1e-4, 1e-4)
        now = time.monotonic_ns()
        measured = self.window[0] <= now < self.window[1]
        self.sent_total += 1
        self.sent += measured
        if tag["paired"]:
            tag["sent"][seq] = now
            self.relays_sent += measured
        driver.send(b'{"type":"driver.location","data":{"lat":%.6f,"lng":%.6f,'
                    b'"heading":90,"speed":%d}}' % (position[0], position[1], seq))

    def on_rider_frame(self, client: WsClient, payload: bytes) -> None:
        now = time.monotonic_ns()
        message = orjson.loads(payload)
        if message.get("type") != "driver.location":
            return
        sent_at = client.tag["sent"].get(int(message["data"]["speed"]))  # type: ignore[index]
        if sent_at is not None and self.window[0] <= sent_at < self.window[1]:
            self.latencies.append(now - sent_at)

    def on_driver_frame(self, client: WsClient, payload: bytes) -> None:
        if b'"type":"error"' in payload:
            self.error_frames += 1


# ------------------------------------------------------------------ offer


class Offer(Scenario):
    name = "offer"
    figures = ("offer_p50_ms", "offer_p99_ms", "offer_n", "missing")
    per_message = "offer_n"

    def population_for(self, drivers: int, args: argparse.Namespace) -> dict[str, int]:
        return {"drivers": drivers}

    def params(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"n": args.step, "k": args.k}

    def tokens(self, target: Target, population: Population,
               args: argparse.Namespace) -> dict[str, list[str]]:
        return {"rider": [rider_token(target, population)],
                "drivers": issue_tokens(population, population.drivers[:args.step],
                                        target.port)}

    def merge(self, ready: list[dict[str, Any]], done: list[dict[str, Any]], start: int,
              args: argparse.Namespace) -> dict[str, Any]:
        sends: dict[str, int] = {}
        first: dict[str, int] = {}
        for item in done:
            sends.update(item.get("sends", {}))
            for trip_id, at in item["offers"].items():
                first[trip_id] = min(at, first.get(trip_id, at))
        latencies = sorted(first[trip] - sent for trip, sent in sends.items() if trip in first)
        result: dict[str, Any] = {"drivers": sum(item["drivers"] for item in ready),
                                  "requests": len(sends), "missing": len(sends) - len(latencies)}
        result.update(percentiles(latencies, "offer_"))
        return result


class OfferWorker(Worker):
    async def open(self) -> dict[str, Any]:
        rng = random.Random(100 + self.share["index"])
        self.offers: dict[str, int] = {}
        drivers, _, errors = await self.dial(self.share["drivers"], self.on_driver_frame,
                                             self.options["p"], "taxi.v2")
        self.clients = [driver for driver in drivers if driver is not None]
        for driver in self.clients:
            lat, lng = city_point(rng, cities=self.options["cities"])
            driver.send(b'{"type":"driver.location","data":{"lat":%.6f,"lng":%.6f}}'
                        % (lat, lng))
        self.rider: WsClient | None = None
        self.reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.reply.set_result({})  # nothing is awaited before go()
        if self.share["rider"] is not None:
            riders, _, _ = await self.dial([self.share["rider"]], self.on_rider_frame, 1,
                                           "taxi.v2")
            self.rider = riders[0]
            self.clients.append(self.rider)  # type: ignore[arg-type]
            await self.located(len(self.share["all_drivers"]))
        return {"drivers": len(drivers), "errors": errors}

    async def located(self, expected: int, timeout: float = 60) -> None:
        """Wait until the server handled every driver's first report (the count is one
        process's: with several server processes this waits out the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while await loop.run_in_executor(None, location_frames_in, self.port) < expected:
            if time.monotonic() > deadline:
                note("offer: not every position was seen on /metrics; going on")
                return
            await asyncio.sleep(0.2)

    async def go(self, start: int) -> dict[str, Any]:
        sends: dict[str, int] = {}
        if self.rider is not None:
            rng = random.Random(7)
            for _ in range(self.options["k"]):
                lat, lng = city_point(rng, CITY_M / 2, self.options["cities"])
                self.reply = asyncio.get_running_loop().create_future()
                sent = time.monotonic_ns()
                self.rider.send(b'{"type":"trip.request","data":{"pick_up_address":"bench",'
                                b'"drop_off_address":"bench","pick_up":{"lat":%.6f,'
                                b'"lng":%.6f}}}' % (lat, lng))
                trip = await asyncio.wait_for(self.reply, 30)
                sends[trip["id"]] = sent
                await asyncio.sleep(0.02)  # the offers are out long before
                self.reply = asyncio.get_running_loop().create_future()
                self.rider.send(b'{"type":"trip.cancel","data":{"id":"%s"}}'
                                % trip["id"].encode())
                await asyncio.wait_for(self.reply, 30)
        else:  # drivers only: stay until the rider's worker is surely done
            await asyncio.sleep(self.options["k"] * 0.5)
        await asyncio.sleep(1)
        return {"sends": sends, "offers": self.offers}

    def on_rider_frame(self, client: WsClient, payload: bytes) -> None:
        message = orjson.loads(payload)
        if message.get("type") == "trip.updated" and not self.reply.done():
            self.reply.set_result(message["data"])

    def on_driver_frame(self, client: WsClient, payload: bytes) -> None:
        if b'"trip.offer"' not in payload:
            return
        now = time.monotonic_ns()
        trip_id = orjson.loads(payload)["data"]["trip"]["id"]
        self.offers.setdefault(trip_id, now)


class OfferScenario(Offer):
    def share(self, tokens: dict[str, list[str]], index: int, procs: int,
              args: argparse.Namespace) -> dict[str, Any]:
        return {"index": index, "rider": tokens["rider"][0] if index == 0 else None,
                "drivers": tokens["drivers"][index::procs], "all_drivers": tokens["drivers"]}


INGEST = Ingest()
OFFER = OfferScenario()
loadgen.SCENARIOS.update({"ingest": INGEST, "offer": OFFER})
loadgen.WORKERS.update({"ingest": IngestWorker, "offer": OfferWorker})


class PrivateRedis:
    """A redis-server of the bench's own on a free port, without persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("bench.dispatch: --redis needs redis-server")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="taxi-bench-redis-"))
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                             capture_output=True, text=True).stdout.strip() != "PONG":
            if time.monotonic() > deadline:
                sys.exit("bench.dispatch: redis-server did not start")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "flushall"], capture_output=True,
                       check=True)

    def sample(self) -> dict[str, tuple[int, float]]:
        return {f"127.0.0.1:{self.port}": _calls_and_cpu(self.port)}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivateCluster:
    """A Redis Cluster of the bench's own (tests/redis_cluster.py's: three masters with a
    replica each, no persistence), for --cluster."""

    def __init__(self) -> None:
        from tests.redis_cluster import RedisCluster

        self.directory = Path(tempfile.mkdtemp(prefix="taxi-bench-cluster-"))
        self.cluster = RedisCluster(self.directory)
        self.cluster.start()
        self.url = self.cluster.url

    def flush(self) -> None:
        for master in self.cluster.masters():
            master.cli("FLUSHALL")

    def sample(self) -> dict[str, tuple[int, float]]:
        return {master.address: _calls_and_cpu(master.port)
                for master in self.cluster.masters()}

    def stop(self) -> None:
        self.cluster.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _calls_and_cpu(port: int) -> tuple[int, float]:
    """Commands a Redis ran so far (INFO commandstats) and its CPU seconds (INFO cpu)."""
    info = subprocess.run(["redis-cli", "-p", str(port), "INFO", "all"], capture_output=True,
                          text=True, check=True).stdout
    calls = sum(int(match) for match in re.findall(r"^cmdstat_[^:]+:calls=(\d+)", info, re.M))
    cpu = sum(float(value) for value in re.findall(r"^used_cpu_(?:sys|user):([0-9.]+)",
                                                   info, re.M))
    return calls, cpu


def redis_load(before: dict[str, tuple[int, float]],
               after: dict[str, tuple[int, float]]) -> dict[str, Any]:
    """Per Redis (each master of a cluster): commands run and CPU seconds in the run,
    and its share of all commands."""
    calls = {node: after[node][0] - before.get(node, (0, 0.0))[0] for node in after}
    total = sum(calls.values()) or 1
    return {node: {"calls": calls[node], "share": round(calls[node] / total, 3),
                   "cpu_s": round(after[node][1] - before.get(node, (0, 0.0))[1], 2)}
            for node in after}


if __name__ == "__main__":
    sys.exit(main())

