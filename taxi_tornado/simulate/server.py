"""The server a run starts for itself when it is given no `--url`: `taxi-tornado serve`
in a subprocess (its own core, as in production), on the embedded defaults, in a data
directory of its own, with the dispatch timeouts scaled to the simulation's speed and
the sign-up budget lifted (the run signs up hundreds of people from one address)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from taxi_tornado.simulate import api
from taxi_tornado.simulate.options import Options

START_TIMEOUT = 30.0


class ServerFailed(Exception):
    """The server did not come up; the message ends with its log."""


@contextlib.asynccontextmanager
async def own_server(options: Options, data_dir: Path) -> AsyncIterator[str]:
    """Run a server until the block ends; yields its base URL (http://127.0.0.1:port)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("TAXI_")}
    env.update({
        "TAXI_DATA_DIR": str(data_dir),
        "TAXI_SERVER_HOST": "127.0.0.1",
        "TAXI_SERVER_PORT": str(port),
        "TAXI_LIMITS_AUTH_RATE": "0",
        "TAXI_DISPATCH_MODE": options.dispatch,
        "TAXI_DISPATCH_OFFER_TIMEOUT": f"{options.offer_timeout:.3f}",
        "TAXI_DISPATCH_MAX_WAIT": f"{options.max_wait:.3f}",
        "TAXI_DISPATCH_LOCATION_TTL": f"{options.location_ttl:.3f}",
        "TAXI_LOG_LEVEL": "warning",
    })
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "taxi_tornado", "serve", env=env, cwd=str(data_dir),
            stdout=log, stderr=asyncio.subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(base, process, log_path)
        yield base
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait_healthy(base: str, process: asyncio.subprocess.Process,
                        log_path: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while loop.time() < deadline:
        if process.returncode is not None:
            break
        if await api.healthy(base):
            return
        await asyncio.sleep(0.2)
    raise ServerFailed(f"the server did not start:\n{log_path.read_text(errors='replace')}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
