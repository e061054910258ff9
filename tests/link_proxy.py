"""A TCP proxy between clients and a server that the test controls, to stand for a
phone's link: it can drop every link without a close frame (a tunnel), refuse new ones
until the network is back, swallow one direction's bytes (a reply lost on the way),
hold what a client sends after its handshake (so that a live event overtakes a resume),
and stop reading what the server sends (a reader too slow for the server's queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any


class Link:
    """One client connection and its connection to the server."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.up = bytearray()  # what the client sent (the handshake, then frames)
        self.down = bytearray()  # what the server sent that reached the client
        self.open = asyncio.Event()  # set when the server's 101 went down

    def sent(self) -> int:
        """How many bytes the client sent after its handshake (frames are masked: their
        text cannot be read here, only their coming)."""
        _, _, frames = bytes(self.up).partition(b"\r\n\r\n")
        return len(frames)

    def abort(self) -> None:
        """Drop both sides at once: the client gets no close frame, only a reset."""
        for writer in (self.client, self.server):
            writer.transport.abort()


class LinkProxy:
    def __init__(self, upstream_port: int, path: str = "/taxi/") -> None:
        self.upstream_port = upstream_port  # may change between links (another node)
        self.path = path
        self.links: list[Link] = []
        self.refused = 0  # connections dropped while offline
        self.port = 0
        self._online = True
        self._blackhole: set[str] = set()  # "up" and/or "down"
        self._hold = False
        self._held = asyncio.Event()
        self._held.set()
        self._flowing = asyncio.Event()  # cleared: nothing is read from the server
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Every open link drops without a close frame."""
        for link in self.links:
            link.abort()

    def offline(self) -> None:
        """The phone's network is gone: links drop, and new ones are refused."""
        self._online = False
        self.cut()

    def online(self) -> None:
        self._online = True

    def blackhole(self, *directions: str) -> None:
        """Swallow what goes `up` (client to server) or `down` from now on; with no
        directions, let everything through again."""
        self._blackhole = set(directions)

    def hold_after_handshake(self) -> None:
        """New links pass their handshake, then what the client sends waits for
        `release()`."""
        self._hold = True
        self._held.clear()

    def release(self) -> None:
        self._hold = False
        self._held.set()

    def stall(self) -> None:
        """Stop reading what the server sends (a phone that reads too slowly): its
        socket buffers fill, then its own outbound queue, until `flow()`."""
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    @property
    def last(self) -> Link:
        return self.links[-1]

    async def wait_links(self, count: int, timeout: float = 10) -> Link:
        """Wait until `count` links have opened through the proxy; return the last."""
        await until(lambda: len(self.links) >= count and self.links[count - 1].open.is_set(),
                    f"{count} links through the proxy", timeout)
        return self.links[count - 1]

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if not self._online:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        link = Link(writer, server_writer)
        self.links.append(link)
        self._spawn(self._pump_up(reader, link))
        self._spawn(self._pump_down(server_reader, link))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump_up(self, reader: asyncio.StreamReader, link: Link) -> None:
        handshake_done = False
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if handshake_done and self._hold:
                    await self._held.wait()
                link.up += data
                handshake_done = handshake_done or b"\r\n\r\n" in link.up
                if "up" in self._blackhole:
                    continue
                link.server.write(data)
                await link.server.drain()
        link.server.close()

    async def _pump_down(self, reader: asyncio.StreamReader, link: Link) -> None:
        with contextlib.suppress(OSError):
            while (await self._flowing.wait()) and (data := await reader.read(65536)):
                if "down" in self._blackhole:
                    continue
                link.down += data
                if not link.open.is_set() and b" 101 " in link.down:
                    link.open.set()
                link.client.write(data)
                await link.client.drain()
        link.client.close()


async def until(condition: Callable[[], object], what: str, timeout: float = 10) -> None:
    """Wait until `condition()` is true, at most `timeout` seconds (then fail naming
    `what`)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        await asyncio.sleep(0.01)
