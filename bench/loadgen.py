"""Load generator for taxi_tornado and the baseline: echo, fanout, connect, location.

    python -m bench.loadgen echo     [-c 50] [-d 15] [--target both] [--repeat 3]
    python -m bench.loadgen fanout   [-n 1000] [-k 20] [--interval 1]
    python -m bench.loadgen connect  [-n 5000] [-p 100]
    python -m bench.loadgen location [-m 1000] [-d 15]
    python -m bench.loadgen serve    [-n 5000] --tokens-out FILE   (for the shared wsbench)

`--v2` opens the drivers' sockets with the taxi.v2 subprotocol (fanout, connect): their
group events then carry `pos`, and each has a token expiry to watch. `--versus
KEY=VALUE` compares taxi_tornado with itself run with that setting, in the same sitting,
instead of with the baseline: `fanout --v2 --versus TAXI_HUB_HISTORY_SIZE=0` is history
on against history off.

Each run sets up its own server (bench/target.py: fresh data dir, users, tokens, a
subprocess on a free port), runs the scenario from client worker processes (`--procs`,
default 1), and prints one JSON line; with `--target both` the baseline and taxi_tornado
run back to back (alternating when repeated) and a last line gives the medians and the
ratios taxi/baseline. Human-readable progress goes to stderr.

Time is CLOCK_MONOTONIC (`time.monotonic_ns`), shared by every process on the machine,
so a send in one worker and a receive in another are comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection as Pipe
from typing import Any

import orjson

from bench.target import (
    RIDER,
    Population,
    Target,
    cpu_seconds,
    issue_tokens,
    log_in,
    prepare,
    raise_fd_limit,
    rss_kib,
)
from bench.wsclient import HandshakeError, WsClient, connect

HOST = "127.0.0.1"
PATH = "/taxi/"
MS = 1_000_000  # ns per ms


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    raise_fd_limit()
    if args.scenario == "serve":
        return serve(args)
    scenario = SCENARIOS[args.scenario]
    population = prepare(**scenario.population(args))
    kinds = ["baseline", "taxi"] if args.target == "both" else [args.target]
    if args.versus:
        kinds = ["versus", "taxi"]
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    try:
        for round_no in range(args.repeat):
            for kind in kinds:
                line = run_once(scenario, kind, population, args)
                line["round"] = round_no + 1
                runs[kind].append(line)
                print(json.dumps(line), flush=True)
                note(f"{args.scenario} {kind} #{round_no + 1}: "
                     f"{scenario.headline(line['result'])}")
    finally:
        shutil.rmtree(population.data_dir, ignore_errors=True)
    if len(kinds) > 1 or args.repeat > 1:
        summary = compare(args.scenario, scenario.figures, runs)
        print(json.dumps(summary), flush=True)
        note(f"summary: {json.dumps(summary['median'])} ratio {json.dumps(summary['ratio'])}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("scenario", choices=[*SCENARIOS, "serve"])
    top.add_argument("--target", choices=("taxi", "baseline", "both"), default="taxi")
    top.add_argument("--repeat", type=int, default=1, help="rounds (alternating targets)")
    top.add_argument("--procs", type=int, default=1, help="client worker processes")
    top.add_argument("--no-uvloop", action="store_true", help="plain asyncio in the clients")
    top.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                     help="extra environment for the taxi_tornado server, e.g. "
                     "TAXI_LOG_LEVEL=warning")
    top.add_argument("--versus", action="append", default=[], metavar="KEY=VALUE",
                     help="compare with taxi_tornado run with this setting (not the baseline)")
    top.add_argument("--v2", action="store_true",
                     help="fanout/connect: the drivers speak taxi.v2")
    top.add_argument("--py-spy", metavar="FILE",
                     help="profile the taxi_tornado server with py-spy (collapsed stacks)")
    top.add_argument("-c", type=int, default=50, help="echo: clients")
    top.add_argument("-d", type=float, default=15, help="echo/location: measured seconds")
    top.add_argument("--warmup", type=float, default=2, help="echo/location: seconds before")
    top.add_argument("-n", type=int, default=1000, help="fanout: drivers; connect: sockets")
    top.add_argument("-k", type=int, default=20, help="fanout: trip requests")
    top.add_argument("--interval", type=float, default=1, help="fanout: seconds between trips")
    top.add_argument("--timeout", type=float, default=10, help="fanout: wait for stragglers")
    top.add_argument("-p", type=int, default=100, help="dials in parallel")
    top.add_argument("--settle", type=float, default=2, help="seconds before RSS / first trip")
    top.add_argument("-m", type=int, default=1000, help="location: driver/rider pairs")
    top.add_argument("--tokens-out", help="serve: write the tokens here (line 1 rider)")
    return top


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ one run


def run_once(scenario: Scenario, kind: str, population: Population,
             args: argparse.Namespace) -> dict[str, Any]:
    extra = dict(item.split("=", 1) for item in args.server_env) if kind != "baseline" else {}
    if kind == "versus":
        extra.update(item.split("=", 1) for item in args.versus)
    target = Target("baseline" if kind == "baseline" else "taxi", population, extra)
    target.start()
    profiler = None
    if args.py_spy and kind == "taxi":
        profiler = subprocess.Popen(
            ["py-spy", "record", "--pid", str(target.pid), "--rate", "400", "--format", "raw",
             "--gil", "--output", args.py_spy, "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tokens = scenario.tokens(target, population, args)
        result = drive(scenario, target, tokens, args)
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        target.stop()
    return {"tool": "bench.loadgen", "scenario": scenario.name, "target": kind,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "params": {**scenario.params(args), "v2": getattr(args, "v2", False),
                       "server_env": extra},
            "procs": args.procs,
            "uvloop": not args.no_uvloop, "result": result}


def drive(scenario: Scenario, target: Target, tokens: dict[str, list[str]],
          args: argparse.Namespace) -> dict[str, Any]:
    """Start the workers, let them connect, go, sample the server, merge their results."""
    context = multiprocessing.get_context("fork")
    pipes: list[Pipe] = []
    workers = []
    for index in range(args.procs):
        mine, theirs = context.Pipe()
        share = scenario.share(tokens, index, args.procs, args)
        process = context.Process(target=worker_main, args=(
            theirs, scenario.name, share, target.port, vars(args)))
        process.start()
        pipes.append(mine)
        workers.append(process)
    ready = [pipe.recv() for pipe in pipes]
    time.sleep(args.settle)
    rss_before = rss_kib(target.pid)
    start = time.monotonic_ns() + 50 * MS
    for pipe in pipes:
        pipe.send(("go", start))
    window = scenario.window(start, args)
    if window is not None:
        _sleep_until(window[0])
    cpu_before, wall_before = cpu_seconds(target.pid), time.monotonic()
    if window is not None:
        _sleep_until(window[1])
        server_cpu = cpu_seconds(target.pid) - cpu_before
        wall = time.monotonic() - wall_before
    done = [pipe.recv() for pipe in pipes]
    if window is None:
        server_cpu = cpu_seconds(target.pid) - cpu_before
        wall = time.monotonic() - wall_before
    extra: dict[str, Any] = {}
    if scenario.name == "connect":
        time.sleep(args.settle)
        extra["rss_before_kib"] = rss_before
        extra["rss_after_kib"] = rss_kib(target.pid)
    for pipe in pipes:
        pipe.send(("stop", 0))
    final = [pipe.recv() for pipe in pipes]
    for process in workers:
        process.join(30)
    result = scenario.merge(ready, done, start, args)
    result.update(extra)
    if scenario.name == "connect" and result["ok"]:
        per = (extra["rss_after_kib"] - extra["rss_before_kib"]) / result["ok"]
        result["rss_per_conn_kib"] = round(per, 2)
    result["server_cpu_pct"] = round(server_cpu / wall * 100, 1)
    result["client_cpu_pct"] = round(sum(item["cpu_s"] for item in final) / wall * 100, 1)
    messages = result.get(scenario.per_message)
    if messages:
        # CPU per message holds up better than throughput on a machine shared with others.
        result["server_cpu_us_per_msg"] = round(server_cpu / messages * 1e6, 2)
    return result


def _sleep_until(moment_ns: int) -> None:
    time.sleep(max(0, moment_ns - time.monotonic_ns()) / 1e9)


def worker_main(pipe: Pipe, name: str, share: dict[str, Any], port: int,
                options: dict[str, Any]) -> None:
    """One client process: connect its share, wait for go, run, report."""
    if not options["no_uvloop"]:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    gc.disable()  # no collector pauses inside a measurement; the process is short-lived
    worker = WORKERS[name](pipe, share, port, options)
    asyncio.run(worker.run())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    pipe.send({"cpu_s": worker.cpu_s if worker.cpu_s >= 0 else usage.ru_utime + usage.ru_stime})


class Worker:
    """The life of one client process; subclasses fill in open/go/result."""

    def __init__(self, pipe: Pipe, share: dict[str, Any], port: int,
                 options: dict[str, Any]) -> None:
        self.pipe = pipe
        self.share = share
        self.port = port
        self.options = options
        self.cpu_s = -1.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.pipe.send(await self.open())
        _, start = await loop.run_in_executor(None, self.pipe.recv)
        cpu0 = _cpu()
        await asyncio.sleep(max(0, start - time.monotonic_ns()) / 1e9)
        result = await self.go(start)
        self.cpu_s = _cpu() - cpu0
        self.pipe.send(result)
        await loop.run_in_executor(None, self.pipe.recv)
        await self.close()

    async def open(self) -> dict[str, Any]:
        return {}

    async def go(self, start: int) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self) -> None:
        for client in getattr(self, "clients", []):
            client.close()
        await asyncio.sleep(0.2)

    async def dial(self, tokens: list[str], on_frame: Callable[[WsClient, bytes], None],
                   parallel: int, subprotocol: str | None = None
                   ) -> tuple[list[WsClient | None], list[int], dict[str, int]]:
        """Open one socket per token, `parallel` at a time; latencies in ns."""
        clients: list[WsClient | None] = [None] * len(tokens)
        latencies: list[int] = []
        errors: dict[str, int] = {}
        cursor = iter(range(len(tokens)))

        async def dialer() -> None:
            for index in cursor:
                began = time.monotonic_ns()
                try:
                    clients[index] = await connect(HOST, self.port, PATH, tokens[index],
                                                   on_frame, subprotocol)
                except HandshakeError as error:
                    errors[f"http_{error.status}"] = errors.get(f"http_{error.status}", 0) + 1
                    continue
                except (OSError, TimeoutError) as error:
                    kind = type(error).__name__
                    errors[kind] = errors.get(kind, 0) + 1
                    continue
                latencies.append(time.monotonic_ns() - began)

        await asyncio.gather(*(dialer() for _ in range(max(1, parallel))))
        return clients, latencies, errors


def _subprotocol(options: dict[str, Any]) -> str | None:
    return "taxi.v2" if options.get("v2") else None


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ scenarios


class Scenario:
    """What a scenario needs from the coordinator: users, tokens, shares, merging."""

    name = ""
    figures: tuple[str, ...] = ()
    per_message = ""  # the result count that server CPU is divided by

    def window(self, start: int, args: argparse.Namespace) -> tuple[int, int] | None:
        """The measured window, when it is fixed in advance (else: go until done)."""
        return None

    def population(self, args: argparse.Namespace) -> dict[str, int]:
        raise NotImplementedError

    def params(self, args: argparse.Namespace) -> dict[str, Any]:
        raise NotImplementedError

    def tokens(self, target: Target, population: Population,
               args: argparse.Namespace) -> dict[str, list[str]]:
        return {"rider": [rider_token(target, population)],
                "drivers": issue_tokens(population, population.drivers, target.port)}

    def share(self, tokens: dict[str, list[str]], index: int, procs: int,
              args: argparse.Namespace) -> dict[str, Any]:
        return {"index": index, "rider": tokens["rider"][0] if index == 0 else None,
                "drivers": tokens["drivers"][index::procs]}

    def merge(self, ready: list[dict[str, Any]], done: list[dict[str, Any]], start: int,
              args: argparse.Namespace) -> dict[str, Any]:
        raise NotImplementedError

    def headline(self, result: dict[str, Any]) -> str:
        return " ".join(f"{name}={result.get(name)}" for name in self.figures)


class Echo(Scenario):
    """C clients in a closed loop: each sends the next echo as soon as the last returns."""

    name = "echo"
    figures = ("msgs_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_msg")
    per_message = "n"

    def window(self, start: int, args: argparse.Namespace) -> tuple[int, int] | None:
        return start + int(args.warmup * 1e9), start + int((args.warmup + args.d) * 1e9)

    def population(self, args: argparse.Namespace) -> dict[str, int]:
        return {"drivers": args.c}

    def params(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"c": args.c, "d_s": args.d, "warmup_s": args.warmup}

    def merge(self, ready: list[dict[str, Any]], done: list[dict[str, Any]], start: int,
              args: argparse.Namespace) -> dict[str, Any]:
        latencies = sorted(x for item in done for x in item["latencies"])
        result = {"clients": sum(item["open"] for item in ready),
                  "errors": _sum_errors(ready),
                  "msgs_per_s": round(len(latencies) / args.d, 1),
                  "bad_replies": sum(item["bad"] for item in done)}
        result.update(percentiles(latencies))
        return result


class EchoWorker(Worker):
    async def open(self) -> dict[str, Any]:
        self.clients, _, errors = await self.dial(self.share["drivers"], self.on_frame,
                                                 self.options["p"])
        self.live = [client for client in self.clients if client is not None]
        return {"open": len(self.live), "errors": errors}

    async def go(self, start: int) -> dict[str, Any]:
        self.window = (start + int(self.options["warmup"] * 1e9),
                       start + int((self.options["warmup"] + self.options["d"]) * 1e9))
        self.latencies: list[int] = []
        self.bad = 0
        self.in_flight = len(self.live)
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for client in self.live:
            client.tag = [0, 0]  # seq, sent at
            self.send_next(client)
        await asyncio.wait_for(self.finished, self.options["warmup"] + self.options["d"] + 30)
        return {"latencies": self.latencies, "bad": self.bad}

    def send_next(self, client: WsClient) -> None:
        state = client.tag
        assert isinstance(state, list)
        state[0] += 1
        state[1] = time.monotonic_ns()
        client.send(b'{"type":"echo.message","data":{"seq":%d}}' % state[0])

    def on_frame(self, client: WsClient, payload: bytes) -> None:
        state = client.tag
        if not isinstance(state, list):
            return
        now = time.monotonic_ns()
        if b'"seq":%d}' % state[0] not in payload:
            self.bad += 1
        elif state[1] >= self.window[0] and now < self.window[1]:
            self.latencies.append(now - state[1])
        if now < self.window[1]:
            self.send_next(client)
            return
        client.tag = None
        self.in_flight -= 1
        if self.in_flight == 0 and not self.finished.done():
            self.finished.set_result(None)


class Fanout(Scenario):
    """N idle drivers; the rider requests K trips; time until the last driver has each."""

    name = "fanout"
    figures = ("last_p50_ms", "last_p99_ms", "last_max_ms", "first_p50_ms", "lost",
               "server_cpu_us_per_msg")
    per_message = "deliveries"

    def population(self, args: argparse.Namespace) -> dict[str, int]:
        return {"drivers": args.n}

    def params(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"n": args.n, "k": args.k, "interval_s": args.interval, "p": args.p}

    def merge(self, ready: list[dict[str, Any]], done: list[dict[str, Any]], start: int,
              args: argparse.Namespace) -> dict[str, Any]:
        sent: list[int] = next(item["sent"] for item in done if item["sent"])
        drivers = sum(item["open"] for item in ready)
        last, first, got = [], [], 0
        for k, at in enumerate(sent):
            counts = [item["count"][k] for item in done]
            got += sum(counts)
            firsts = [item["first"][k] for item in done if item["count"][k]]
            if firsts:
                first.append(min(firsts) - at)
            if sum(counts) == drivers:
                last.append(max(item["last"][k] for item in done) - at)
        riders = [at - sent[k] for k, at in enumerate(done[0]["rider_reply"]) if at]
        result: dict[str, Any] = {
            "drivers": drivers, "errors": _sum_errors(ready), "trips_sent": len(sent),
            "deliveries_expected": drivers * len(sent), "deliveries": got,
            "lost": drivers * len(sent) - got,
            "duplicates": sum(item["duplicates"] for item in done),
            "trips_incomplete": len(sent) - len(last),
            "dial_per_s": round(drivers / max(max(item["dial_s"] for item in ready), 1e-9), 1),
        }
        result.update(percentiles(sorted(last), "last_"))
        result.update(percentiles(sorted(first), "first_"))
        result.update(percentiles(sorted(riders), "rider_"))
        return result


class FanoutWorker(Worker):
    async def open(self) -> dict[str, Any]:
        began = time.monotonic()
        self.clients, _, errors = await self.dial(self.share["drivers"], self.on_frame,
                                                 self.options["p"], _subprotocol(self.options))
        dial_s = time.monotonic() - began
        self.live = [client for client in self.clients if client is not None]
        for number, client in enumerate(self.live):
            client.tag = number
        self.rider: WsClient | None = None
        if self.share["rider"]:
            self.rider = await connect(HOST, self.port, PATH, self.share["rider"],
                                       self.on_rider_frame)
        return {"open": len(self.live), "errors": errors, "dial_s": dial_s}

    async def go(self, start: int) -> dict[str, Any]:
        trips = self.options["k"]
        self.prefix = b"lg-%d-" % (start % 1_000_000_007)
        self.count = [0] * trips
        self.first = [0] * trips
        self.last = [0] * trips
        self.seen = bytearray(len(self.live) * trips)
        self.duplicates = 0
        self.sent: list[int] = []
        self.rider_reply = [0] * trips
        expected = len(self.live) * trips
        if self.rider is not None:
            rider_id = self.share["rider_id"]
            for k in range(trips):
                await asyncio.sleep(max(0, start + int(k * self.options["interval"] * 1e9)
                                        - time.monotonic_ns()) / 1e9)
                self.sent.append(time.monotonic_ns())
                self.rider.send(b'{"type":"create.trip","data":{"pick_up_address":"%s%d",'
                                b'"drop_off_address":"B","rider":"%s"}}'
                                % (self.prefix, k, rider_id.encode()))
        else:
            await asyncio.sleep(max(0, start + int((trips - 1) * self.options["interval"] * 1e9)
                                    - time.monotonic_ns()) / 1e9)
        deadline = time.monotonic() + self.options["timeout"]
        while sum(self.count) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return {"sent": self.sent, "count": self.count, "first": self.first,
                "last": self.last, "duplicates": self.duplicates,
                "rider_reply": self.rider_reply}

    def marker(self, payload: bytes) -> int:
        prefix = getattr(self, "prefix", None)
        if prefix is None:
            return -1
        at = payload.find(prefix)
        if at < 0:
            return -1
        at += len(prefix)
        end = payload.find(b'"', at)
        return int(payload[at:end])

    def on_frame(self, client: WsClient, payload: bytes) -> None:
        now = time.monotonic_ns()
        k = self.marker(payload)
        if k < 0 or k >= len(self.count):
            return
        slot = client.tag * len(self.count) + k  # type: ignore[operator]
        if self.seen[slot]:
            self.duplicates += 1
            return
        self.seen[slot] = 1
        if not self.count[k]:
            self.first[k] = now
        self.count[k] += 1
        self.last[k] = now

    def on_rider_frame(self, client: WsClient, payload: bytes) -> None:
        now = time.monotonic_ns()
        k = self.marker(payload)
        if 0 <= k < len(self.rider_reply) and not self.rider_reply[k]:
            self.rider_reply[k] = now

    async def close(self) -> None:
        if self.rider is not None:
            self.rider.close()
        await super().close()


class FanoutShare(Fanout):
    def share(self, tokens: dict[str, list[str]], index: int, procs: int,
              args: argparse.Namespace) -> dict[str, Any]:
        share = super().share(tokens, index, procs, args)
        share["rider_id"] = _claim(tokens["rider"][0], "id")
        return share


class Connect(Scenario):
    """N handshakes, P at a time; the sockets stay open and idle for the RSS sample."""

    name = "connect"
    figures = ("handshakes_per_s", "p50_ms", "p99_ms", "failures", "rss_per_conn_kib",
               "server_cpu_us_per_msg")
    per_message = "ok"

    def population(self, args: argparse.Namespace) -> dict[str, int]:
        return {"drivers": args.n}

    def params(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"n": args.n, "p": args.p, "settle_s": args.settle}

    def share(self, tokens: dict[str, list[str]], index: int, procs: int,
              args: argparse.Namespace) -> dict[str, Any]:
        share = super().share(tokens, index, procs, args)
        share["parallel"] = args.p // procs + (1 if index < args.p % procs else 0)
        return share

    def merge(self, ready: list[dict[str, Any]], done: list[dict[str, Any]], start: int,
              args: argparse.Namespace) -> dict[str, Any]:
        ok = sum(item["ok"] for item in done)
        elapsed = max(item["end"] for item in done) - start
        latencies = sorted(x for item in done for x in item["latencies"])
        result = {"ok": ok, "failures": args.n - ok, "errors": _sum_errors(done),
                  "elapsed_s": round(elapsed / 1e9, 3),
                  "handshakes_per_s": round(ok / (elapsed / 1e9), 1),
                  "dropped_while_open": sum(item["dropped"] for item in done)}
        result.update(percentiles(latencies))
        return result


class ConnectWorker(Worker):
    async def go(self, start: int) -> dict[str, Any]:
        self.clients, latencies, errors = await self.dial(
            self.share["drivers"], lambda client, payload: None, self.share["parallel"],
            _subprotocol(self.options))
        end = time.monotonic_ns()
        live = [client for client in self.clients if client is not None]
        self.live = live
        return {"ok": len(live), "latencies": latencies, "errors": errors, "end": end,
                "dropped": 0}

    async def close(self) -> None:
        dropped = sum(1 for client in self.live if client.closed.done())
        if dropped:
            note(f"connect: {dropped} sockets were closed by the server while held")
        await super().close()


class Location(Scenario):
    """M drivers, each driving its own rider's STARTED trip, send driver.location at 1 Hz."""

    name = "location"
    figures = ("delivered_per_s", "p50_ms", "p99_ms", "lost", "server_cpu_us_per_msg")
    per_message = "n"

    def window(self, start: int, args: argparse.Namespace) -> tuple[int, int] | None:
        return start + int(args.warmup * 1e9), start + int((args.warmup + args.d) * 1e9)

    def population(self, args: argparse.Namespace) -> dict[str, int]:
        return {"drivers": args.m, "riders": args.m, "pairs": args.m}

    def params(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"m": args.m, "d_s": args.d, "warmup_s": args.warmup, "hz": 1}

    def tokens(self, target: Target, population: Population,
               args: argparse.Namespace) -> dict[str, list[str]]:
        return {"drivers": issue_tokens(population, population.drivers, target.port),
                "riders": issue_tokens(population, population.riders, target.port)}

    def share(self, tokens: dict[str, list[str]], index: int, procs: int,
              args: argparse.Namespace) -> dict[str, Any]:
        return {"index": index, "drivers": tokens["drivers"][index::procs],
                "riders": tokens["riders"][index::procs]}

    def merge(self, ready: list[dict[str, Any]], done: list[dict[str, Any]], start: int,
              args: argparse.Namespace) -> dict[str, Any]:
        latencies = sorted(x for item in done for x in item["latencies"])
        sent = sum(item["sent"] for item in done)
        result = {"pairs": sum(item["pairs"] for item in ready), "errors": _sum_errors(ready),
                  "sent": sent, "delivered": len(latencies), "lost": sent - len(latencies),
                  "error_frames": sum(item["error_frames"] for item in done),
                  "delivered_per_s": round(len(latencies) / args.d, 1)}
        result.update(percentiles(latencies))
        return result


class LocationWorker(Worker):
    async def open(self) -> dict[str, Any]:
        riders, _, rider_errors = await self.dial(self.share["riders"], self.on_rider_frame,
                                                  self.options["p"], "taxi.v2")
        drivers, _, driver_errors = await self.dial(self.share["drivers"], self.on_driver_frame,
                                                    self.options["p"], "taxi.v2")
        self.pairs = [(driver, rider) for driver, rider in zip(drivers, riders, strict=True)
                      if driver is not None and rider is not None]
        self.clients = [*riders, *drivers]
        for driver, rider in self.pairs:
            sent: dict[int, int] = {}
            driver.tag = sent
            rider.tag = sent
        return {"pairs": len(self.pairs), "errors": {**rider_errors, **driver_errors}}

    async def go(self, start: int) -> dict[str, Any]:
        warmup, measured = self.options["warmup"], self.options["d"]
        self.window = (start + int(warmup * 1e9), start + int((warmup + measured) * 1e9))
        self.latencies: list[int] = []
        self.sent = 0
        self.error_frames = 0
        count = len(self.pairs)
        ticks = int(warmup + measured)
        for tick in range(ticks):
            for number, (driver, _) in enumerate(self.pairs):
                at = start + tick * 1_000_000_000 + number * 1_000_000_000 // max(count, 1)
                delay = at - time.monotonic_ns()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
                seq = tick % 1000
                now = time.monotonic_ns()
                driver.tag[seq] = now  # type: ignore[index]
                if self.window[0] <= now < self.window[1]:
                    self.sent += 1
                driver.send(b'{"type":"driver.location","data":{"lat":51.5,"lng":-0.12,'
                            b'"heading":90,"speed":%d}}' % seq)
        await asyncio.sleep(2)
        return {"latencies": self.latencies, "sent": self.sent,
                "error_frames": self.error_frames}

    def on_rider_frame(self, client: WsClient, payload: bytes) -> None:
        now = time.monotonic_ns()
        message = orjson.loads(payload)
        if message.get("type") != "driver.location":
            return
        at = client.tag.get(int(message["data"]["speed"]))  # type: ignore[union-attr]
        if at is not None and self.window[0] <= at < self.window[1]:
            self.latencies.append(now - at)

    def on_driver_frame(self, client: WsClient, payload: bytes) -> None:
        if b'"error"' in payload:
            self.error_frames += 1


SCENARIOS: dict[str, Scenario] = {
    "echo": Echo(), "fanout": FanoutShare(), "connect": Connect(), "location": Location(),
}
WORKERS: dict[str, type[Worker]] = {
    "echo": EchoWorker, "fanout": FanoutWorker, "connect": ConnectWorker,
    "location": LocationWorker,
}


# ------------------------------------------------------------------ figures


def percentiles(sorted_ns: list[int], prefix: str = "") -> dict[str, Any]:
    """Nearest-rank p50/p90/p99/max in ms (as wsbench computes them)."""
    if not sorted_ns:
        return {f"{prefix}n": 0}
    size = len(sorted_ns)

    def rank(q: float) -> float:
        index = min(size - 1, max(0, int(size * q + 0.999999) - 1))
        return round(sorted_ns[index] / MS, 3)

    return {f"{prefix}n": size, f"{prefix}p50_ms": rank(0.5), f"{prefix}p90_ms": rank(0.9),
            f"{prefix}p99_ms": rank(0.99), f"{prefix}max_ms": round(sorted_ns[-1] / MS, 3)}


def compare(name: str, figures: tuple[str, ...],
            runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per target over the rounds, and taxi / baseline for each figure."""
    median: dict[str, dict[str, Any]] = {}
    for kind, lines in runs.items():
        median[kind] = {}
        for figure in (*figures, "server_cpu_pct", "client_cpu_pct"):
            values = [line["result"].get(figure) for line in lines]
            numbers = [value for value in values if isinstance(value, int | float)]
            median[kind][figure] = round(statistics.median(numbers), 3) if numbers else None
    ratio: dict[str, Any] = {}
    other = "versus" if "versus" in median else "baseline"
    if "taxi" in median and other in median:
        for figure in figures:
            ours, theirs = median["taxi"][figure], median[other][figure]
            ratio[figure] = round(ours / theirs, 3) if ours is not None and theirs else None
    return {"tool": "bench.loadgen", "scenario": name, "summary": True,
            "rounds": max(len(lines) for lines in runs.values()), "median": median,
            "ratio": ratio}


def rider_token(target: Target, population: Population) -> str:
    """The CLI rider's token: through POST /api/log_in/ on taxi_tornado (the baseline has
    no HTTP API, so there it comes from the same TokenAuthority)."""
    if target.kind == "taxi":
        return log_in(target.port, RIDER)
    assert population.rider is not None
    return issue_tokens(population, [population.rider], target.port)[0]


def _sum_errors(items: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for item in items:
        for kind, count in item.get("errors", {}).items():
            total[kind] = total.get(kind, 0) + count
    return total


def _claim(token: str, name: str) -> str:
    import base64

    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return str(claims[name])


# ------------------------------------------------------------------ serve (for wsbench)


def serve(args: argparse.Namespace) -> int:
    """Set up a server with N drivers, write the tokens file, run until interrupted."""
    if not args.tokens_out:
        note("serve needs --tokens-out FILE")
        return 2
    kind = "baseline" if args.target == "baseline" else "taxi"
    population = prepare(drivers=args.n)
    extra = dict(item.split("=", 1) for item in args.server_env)
    target = Target(kind, population, extra if kind == "taxi" else {})
    target.start()
    # Stop cleanly on SIGTERM too (a shell's background job ignores SIGINT).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        rider = rider_token(target, population)
        drivers = issue_tokens(population, population.drivers, target.port)
        with open(args.tokens_out, "w") as handle:
            handle.write("\n".join([rider, *drivers]) + "\n")
        print(json.dumps({"url": f"ws://{HOST}:{target.port}{PATH}", "pid": target.pid,
                          "tokens": args.tokens_out, "target": kind}), flush=True)
        while target.process is not None and target.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        target.stop()
        shutil.rmtree(population.data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
