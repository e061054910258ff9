"""The servers under test, set up by the bench itself: data, users, tokens, processes.

`prepare()` makes a fresh data directory with the users a scenario needs:
- one rider through the project's CLI (`taxi-tornado createuser … --password-stdin`), so
  the real argon2 path runs; its access token later comes from POST /api/log_in/;
- every other user (up to thousands of drivers) through the project's Store API with one
  shared argon2 hash computed once by `taxi_tornado.auth.hash_password` (hashing 5,000
  passwords would take minutes and measure nothing we care about), and an access token
  issued by the project's own `TokenAuthority` with the server's secret. These tokens are
  byte-for-byte what /api/log_in/ issues; the server still verifies every one (HS256) and
  looks its user up in the store on every connect;
- for the location scenario, STARTED trips (rider i, driver i) through the Store API.

`Target` runs `python -m taxi_tornado serve` (or bench/baseline.py) as a subprocess on a
free port, configured by TAXI_* variables, and waits for it to answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.request import Request, urlopen

from taxi_tornado.auth import TokenAuthority, hash_password
from taxi_tornado.settings import load_settings
from taxi_tornado.store import TripStatus, User, open_store

SECRET = "bench-secret-key-long-enough-for-hs256-signatures"
PASSWORD = "bench-pAssw0rd"
RIDER = "bench-rider"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Population:
    """Who exists in the store, and the trips pairing riders with drivers."""

    data_dir: Path
    rider: User | None = None  # the CLI-created rider
    riders: list[User] = field(default_factory=list)
    drivers: list[User] = field(default_factory=list)
    trips: list[tuple[str, str, str]] = field(default_factory=list)  # trip, rider, driver


def server_env(data_dir: Path, port: int) -> dict[str, str]:
    """The settings of the server under test.

    The per-connection rate limit is raised so that a closed-loop echo client is not
    throttled; the token bucket still runs on every frame. The rider's quota of
    unfinished trips is lifted, and so is its budget of trip requests a minute: the
    fan-out's one rider requests 20 trips in a row.
    """
    return {
        **os.environ,
        "TAXI_DATA_DIR": str(data_dir),
        "TAXI_SERVER_PORT": str(port),
        "TAXI_AUTH_SECRET_KEY": SECRET,
        "TAXI_LIMITS_RATE": "1000000",
        "TAXI_LIMITS_BURST": "1000000",
        "TAXI_LIMITS_TRIPS_PER_RIDER": "0",
        "TAXI_LIMITS_TRIP_REQUESTS": "0",
    }


def prepare(drivers: int, riders: int = 0, pairs: int = 0) -> Population:
    """A fresh data dir with the CLI rider, `drivers` + `riders` users and `pairs` trips."""
    data_dir = Path(tempfile.mkdtemp(prefix="taxi-bench-"))
    population = Population(data_dir)
    created = subprocess.run(
        [sys.executable, "-m", "taxi_tornado", "createuser", RIDER, "--group", "rider",
         "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, env=server_env(data_dir, 0),
        cwd=data_dir, check=True,
    )
    asyncio.run(_bulk_users(population, created.stdout.strip(), drivers, riders, pairs))
    return population


async def _bulk_users(population: Population, rider_id: str, drivers: int, riders: int,
                      pairs: int) -> None:
    settings = load_settings(None, environ=server_env(population.data_dir, 0))
    store = open_store(settings.store_url)
    await store.open()
    try:
        population.rider = await store.get_user(rider_id)
        password_hash = await hash_password(PASSWORD)
        for i in range(drivers):
            population.drivers.append(
                await store.create_user(f"bench-driver-{i}", password_hash, "driver"))
        for i in range(riders):
            population.riders.append(
                await store.create_user(f"bench-rider-{i}", password_hash, "rider"))
        for rider, driver in zip(population.riders[:pairs], population.drivers[:pairs],
                                 strict=True):
            trip = await store.create_trip(rider.id, "bench pick-up", "bench drop-off")
            await store.update_trip(trip.id, expected_status=TripStatus.REQUESTED,
                                    expected_driver_id=None, status=TripStatus.STARTED,
                                    driver_id=driver.id)
            population.trips.append((trip.id, rider.id, driver.id))
    finally:
        await store.close()


def issue_tokens(population: Population, users: list[User], port: int) -> list[str]:
    """Access tokens from the project's TokenAuthority, as /api/log_in/ would issue them."""
    settings = load_settings(None, environ=server_env(population.data_dir, port))
    authority = TokenAuthority(settings.auth)
    base_url = f"http://127.0.0.1:{port}"
    return [authority.issue_access(user, base_url) for user in users]


def log_in(port: int, username: str, password: str = PASSWORD) -> str:
    """An access token through the real HTTP API."""
    body = json.dumps({"username": username, "password": password}).encode()
    request = Request(f"http://127.0.0.1:{port}/api/log_in/", data=body,
                      headers={"Content-Type": "application/json"})
    with urlopen(request, timeout=30) as response:
        token: str = json.load(response)["access"]
        return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit(wanted: int = 65536) -> None:
    """Thousands of sockets need more than the default 1,024 descriptors (root may raise
    the hard limit too: 20,000 drivers need more than a 20,000 hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, wanted), max(hard, wanted)))
    except (ValueError, OSError):
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Target:
    """One server process under test: `taxi` (the project) or `baseline`."""

    def __init__(self, kind: str, population: Population, extra_env: dict[str, str] | None = None
                 ) -> None:
        self.kind = kind
        self.population = population
        self.port = free_port()
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = population.data_dir / f"{kind}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = {**server_env(self.population.data_dir, self.port), **self.extra_env}
        if self.kind == "taxi":
            command = [sys.executable, "-m", "taxi_tornado", "serve"]
        else:
            trips = self.population.data_dir / "trips.json"
            trips.write_text(json.dumps(self.population.trips))
            command = [sys.executable, str(ROOT / "bench" / "baseline.py"), "--port",
                       str(self.port), "--trips", str(trips)]
        handle = self.log_path.open("ab")
        self.process = subprocess.Popen(command, env=env, cwd=self.population.data_dir,
                                        stdout=handle, stderr=subprocess.STDOUT,
                                        preexec_fn=raise_fd_limit)
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited:\n{self.log_path.read_text()}")
            try:
                with urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not answer /healthz")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its live children (forked workers) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(item) for item in children.read_text().split()] if children.exists() else []
    return own + sum(cpu_seconds(kid) for kid in kids)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
