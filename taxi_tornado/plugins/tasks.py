"""Runs the plugins' tasks: start-up hooks, periodic tasks, shutdown hooks.

The server calls `start()` before it accepts anything, `stop_periodic()` when the drain
begins, and `shut_down()` once the sockets are closed, while the hub and the store still
work. A periodic task never overlaps itself and never takes the process down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from taxi_tornado import metrics
from taxi_tornado.hub import Hub
from taxi_tornado.plugins.api import PeriodicTask, PluginContext, PluginError, Registry, task_name
from taxi_tornado.settings import Settings
from taxi_tornado.store import Store

log = logging.getLogger("taxi_tornado.plugins")

# Least time a shutdown hook, or the periodic tasks' last runs, may take in the drain.
MIN_SHUTDOWN_SECONDS = 1.0


class PluginTasks:
    """The plugins' tasks of one server process, and the PluginContext of each plugin."""

    def __init__(self, registry: Registry, hub: Hub, store: Store, settings: Settings) -> None:
        self.registry = registry
        self.hub = hub
        self.store = store
        self.settings = settings
        self._contexts: dict[str, PluginContext] = {}
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    def context(self, plugin: str) -> PluginContext:
        context = self._contexts.get(plugin)
        if context is None:
            config = self.registry.configs.get(plugin, {})
            context = PluginContext(plugin, config, self.hub, self.store, self.settings)
            self._contexts[plugin] = context
        return context

    async def start(self) -> None:
        """Await every start-up hook in order, then start the periodic tasks; a hook that
        raises is a PluginError naming its plugin."""
        for plugin, hook in self.registry.startup_hooks:
            try:
                await hook(self.context(plugin))
            except Exception as error:
                raise PluginError(
                    f"plugin {plugin!r} failed in its start-up hook {task_name(hook)}: "
                    f"{type(error).__name__}: {error}"
                ) from error
        for task in self.registry.periodic_tasks:
            self._loops.append(asyncio.create_task(self._run_every(task)))

    def stop_periodic(self) -> None:
        """No periodic task starts a new run from now on; a run under way finishes."""
        self._stopping.set()

    async def shut_down(self) -> None:
        """Wait for the periodic tasks' last runs, then await the shutdown hooks in the
        reverse order of registration, each for at most the drain timeout."""
        self.stop_periodic()
        timeout = max(self.settings.server.drain_timeout, MIN_SHUTDOWN_SECONDS)
        if self._loops:
            _, late = await asyncio.wait(self._loops, timeout=timeout)
            for loop in late:
                log.warning("periodic task still running at shutdown: cancelled")
                loop.cancel()
            self._loops.clear()
        for plugin, hook in reversed(self.registry.shutdown_hooks):
            try:
                await asyncio.wait_for(hook(self.context(plugin)), timeout)
            except TimeoutError:
                log.error("shutdown hook %s of plugin %s took over %ss: cancelled",
                          task_name(hook), plugin, timeout)
            except Exception:
                log.exception("shutdown hook %s of plugin %s failed", task_name(hook), plugin)

    async def _run_every(self, task: PeriodicTask) -> None:
        context = self.context(task.plugin)
        failures = metrics.PLUGIN_TASK_FAILURES.labels(task.plugin, task.name)
        runs = metrics.PLUGIN_TASK_RUNS.labels(task.plugin, task.name)
        next_run = time.monotonic() + task.seconds
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), next_run - time.monotonic())
                return
            except TimeoutError:
                pass
            runs.inc()
            try:
                await task.function(context)
            except Exception:
                failures.inc()
                log.exception("periodic task %s of plugin %s failed", task.name, task.plugin)
            next_run = _next_tick(next_run, task.seconds, time.monotonic())


def _next_tick(previous: float, period: float, now: float) -> float:
    """The first tick of the schedule after `now`: a run that took longer than its period
    skips the ticks it missed instead of running twice in a row."""
    ticks = max(1, math.floor((now - previous) / period) + 1)
    return previous + ticks * period
