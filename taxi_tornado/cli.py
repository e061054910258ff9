"""`taxi-tornado serve | createuser | plugins | check | new-plugin | simulate`.

Every command reads the same settings; a bad one stops it with one line naming the key
and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from taxi_tornado import __version__, collector
from taxi_tornado.app import Server, build_application, listen_sockets
from taxi_tornado.app import _safe_url as safe_url
from taxi_tornado.auth import hash_password
from taxi_tornado.dispatch.service import strategy_factory
from taxi_tornado.handlers.auth import validate_sign_up
from taxi_tornado.logs import setup_logging
from taxi_tornado.plugins.api import PluginError
from taxi_tornado.plugins.loader import PluginInfo, load_plugins
from taxi_tornado.scaffold import ScaffoldError, write_plugin
from taxi_tornado.services import build_services
from taxi_tornado.settings import (
    Settings,
    SettingsError,
    load_settings,
    uvloop_installed,
    with_secret,
)
from taxi_tornado.store import ALL_GROUPS, STAFF, StoreError, UsernameTaken, open_store

log = logging.getLogger("taxi_tornado")

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    if args.command == "new-plugin":
        return new_plugin_command(args)
    try:
        settings = load_settings(args.config, create_secret=False)
        setup_logging(settings.log)
        return int(args.run(settings, args))
    except (SettingsError, PluginError, StoreError) as error:
        print(f"taxi-tornado: {error}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taxi-tornado", description="Real-time taxi hub.")
    parser.add_argument("--version", action="version", version=f"taxi-tornado {__version__}")
    parser.add_argument("--config", metavar="PATH",
                        help="settings file (default: $TAXI_SETTINGS or ./settings.toml)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.set_defaults(run=serve_command)

    check = commands.add_parser("check", help="validate the settings and plugins, then exit")
    check.set_defaults(run=check_command)

    plugins = commands.add_parser(
        "plugins", help="list plugins: message types, routes, tasks, strategies, settings")
    plugins.set_defaults(run=plugins_command)

    asyncapi = commands.add_parser(
        "asyncapi", help="print the socket protocol as an AsyncAPI 3.0 document (as served "
        "at /api/asyncapi.json)")
    asyncapi.add_argument("--update-docs", metavar="PATH",
                          help="instead, rewrite the message table in PATH (docs/protocol.md)")
    asyncapi.set_defaults(run=asyncapi_command)

    simulate = commands.add_parser(
        "simulate", help="run a synthetic city of drivers and riders against a server, "
        "then check what every phone saw (docs/simulate.md)")
    _simulate_options(simulate)
    simulate.set_defaults(run=simulate_command)

    scaffold = commands.add_parser("new-plugin", help="write a new plugin package to start from")
    scaffold.add_argument("name", help="the plugin's name: lower-case letters, digits and _")
    scaffold.add_argument("directory", nargs="?",
                          help="where to write it (default: ./taxi-plugin-NAME)")

    create = commands.add_parser("createuser", help="create a user from the terminal")
    create.add_argument("username")
    roles = create.add_mutually_exclusive_group(required=True)
    roles.add_argument("--group", choices=ALL_GROUPS)
    roles.add_argument("--staff", dest="group", action="store_const", const=STAFF,
                       help="an operator, who may use /admin/ (same as --group staff)")
    create.add_argument("--first-name", default="")
    create.add_argument("--last-name", default="")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input (for scripts)")
    create.set_defaults(run=createuser_command)
    return parser


def serve_command(settings: Settings, args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; with server.processes > 1, fork workers first."""
    collector.tune()
    registry, plugins = load_plugins(settings=settings.plugins)
    # An unknown dispatch.mode stops us here.
    strategy_factory(settings, registry.strategy_factories)
    settings = with_secret(settings)
    services = build_services(settings, registry, plugins)
    build_application(services)  # a plugin route on a core path stops us here, once
    if settings.server.processes > 1:
        for probe in listen_sockets(settings):  # a busy port fails here, once
            probe.close()
        parent_status = fork_workers(settings.server.processes)
        if parent_status is not None:
            return parent_status
        services = build_services(settings, registry, plugins)  # each worker its own
    with asyncio.Runner(loop_factory=event_loop_factory(settings.server.event_loop)) as runner:
        return runner.run(_serve(Server(settings, services)))


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when `server.event_loop` asks for it, or (auto) when installed.

    Tornado runs on any asyncio loop. uvloop's is written in C: with thousands of sockets
    each sending now and then, the loop's own turn (select, callbacks, registering each
    socket's read again after every frame) was a fifth of the server's CPU, and uvloop
    takes most of that away (bench/README.md, location ingest). None is asyncio's own.
    """
    if choice == "asyncio" or (choice == "auto" and not uvloop_installed()):
        return None
    import uvloop

    return uvloop.new_event_loop


def fork_workers(count: int) -> int | None:
    """Fork `count` workers; each binds the port itself with SO_REUSEPORT, so that the
    kernel spreads new connections over them.

    Returns None in a worker. The parent forwards SIGTERM and SIGINT to every worker (so a
    supervisor that signals only the main pid still drains them all), waits for them, and
    returns 0 when all of them exited 0.
    """
    workers: set[int] = set()
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            return None
        workers.add(pid)

    def forward(signum: int, frame: object) -> None:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while workers:
        pid, wait_status = os.wait()
        workers.discard(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0:
            log.error("worker %d exited with %d", pid, code)
            status = 1
    return status


async def _serve(server: Server) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    frozen = collector.freeze_startup()
    log.info("garbage collector: young collections every %s allocations, %s start-up "
             "objects frozen", collector.YOUNG_THRESHOLD, frozen)
    await stop.wait()
    log.info("signal received: draining (at most %ss)", server.settings.server.drain_timeout)
    await server.stop()
    return 0


def check_command(settings: Settings, args: argparse.Namespace) -> int:
    """Everything `serve` checks before it binds a port; then what a server would run,
    in the words of its start-up log line."""
    registry, plugins = load_plugins(settings=settings.plugins)
    strategy_factory(settings, registry.strategy_factories)
    build_application(build_services(settings, registry, plugins))
    print(f"settings OK: store {safe_url(settings.store_url)}, hub {safe_url(settings.hub.url)}")
    print(f"dispatch mode {settings.dispatch.mode} "
          f"(registered: {', '.join(sorted(registry.dispatch_strategies))})")
    names = ", ".join(plugin.name for plugin in plugins) or "none"
    disabled = ", ".join(settings.plugins.disabled)
    print(f"plugins {names}" + (f" (disabled: {disabled})" if disabled else ""))
    return 0


def plugins_command(settings: Settings, args: argparse.Namespace) -> int:
    _, plugins = load_plugins(settings=settings.plugins)
    for plugin in plugins:
        print(f"{plugin.name} ({plugin.distribution} {plugin.version}, {plugin.target})")
        for line in _plugin_lines(plugin):
            print(f"    {line}")
    disabled = ", ".join(settings.plugins.disabled)
    if disabled:
        print(f"disabled: {disabled}")
    return 0


def asyncapi_command(settings: Settings, args: argparse.Namespace) -> int:
    """The document GET /api/asyncapi.json serves, from the plugins installed here; or,
    with --update-docs, the built-in types' table in the protocol reference."""
    import json  # imported here: the CLI's header is shared with other work
    from pathlib import Path

    from taxi_tornado import asyncapi

    registry, plugins = load_plugins(settings=settings.plugins)
    document = asyncapi.build_document(registry, settings)
    if args.update_docs is None:
        print(json.dumps(document, indent=2))
        return 0
    built_in = [plugin.name for plugin in plugins if plugin.distribution == "taxi-tornado"]
    changed = asyncapi.update_docs(Path(args.update_docs),
                                   asyncapi.message_table(document, built_in))
    print(f"{args.update_docs}: {'table updated' if changed else 'table up to date'}")
    return 0


def _simulate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="a running server (default: start one here, on the "
                        "embedded defaults, in a temporary data directory)")
    parser.add_argument("--drivers", type=int, default=50, metavar="N")
    parser.add_argument("--riders", type=int, default=10, metavar="N")
    parser.add_argument("--duration", type=float, default=60.0, metavar="SECONDS",
                        help="wall seconds in which riders request trips (default 60)")
    parser.add_argument("--seed", type=int, default=1, metavar="N")
    parser.add_argument("--speed", type=float, default=30.0, metavar="X",
                        help="simulated seconds per wall second (default 30)")
    parser.add_argument("--center", default="52.52,13.405", metavar="LAT,LNG")
    parser.add_argument("--radius-km", type=float, default=5.0, metavar="R")
    parser.add_argument("--dispatch", choices=("broadcast", "nearest"), default="broadcast",
                        help="dispatch.mode of the server it starts (not with --url)")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here "
                        "(default: print it)")
    parser.add_argument("--accounts", metavar="FILE",
                        help="keep the accounts and their tokens here, for the next run")


def simulate_command(settings: Settings, args: argparse.Namespace) -> int:
    """A city that runs by itself; exit status 1 when an invariant broke."""
    import json  # imported here: the CLI's header is shared with other work
    from pathlib import Path

    from taxi_tornado.simulate import Options, simulate

    try:
        lat, lng = (float(part) for part in args.center.split(","))
    except ValueError:
        print("taxi-tornado: --center: LAT,LNG, e.g. 52.52,13.405", file=sys.stderr)
        return EXIT_USAGE
    options = Options(
        url=args.url, drivers=args.drivers, riders=args.riders, duration=args.duration,
        seed=args.seed, speed=args.speed, center=(lat, lng), radius_km=args.radius_km,
        dispatch=args.dispatch, report=Path(args.report) if args.report else None,
        accounts=Path(args.accounts) if args.accounts else None)
    report = asyncio.run(simulate(options))
    if options.report is None:
        print(json.dumps(report, indent=2))
    else:
        print(f"simulate: trips {report['trips']}; invariants {report['invariants']}; "
              f"report in {options.report}", file=sys.stderr)
    return 0 if report["ok"] else 1


def _plugin_lines(plugin: PluginInfo) -> list[str]:
    """Message types first and bare (as ever), then what else the plugin registered."""
    lines = list(plugin.types)
    lines += [f"route {route}" for route in plugin.routes]
    lines += [f"task {task}" for task in plugin.tasks]
    lines += [f"strategy {strategy}" for strategy in plugin.strategies]
    lines += [f"setting {setting}" for setting in plugin.settings]
    return lines


def new_plugin_command(args: argparse.Namespace) -> int:
    try:
        written = write_plugin(args.name, args.directory)
    except ScaffoldError as error:
        print(f"taxi-tornado: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote the plugin {args.name!r} to {written}. Next:\n"
          f"    pip install -e '{written}[test]'\n"
          f"    pytest {written}")
    return 0


def createuser_command(settings: Settings, args: argparse.Namespace) -> int:
    password = _read_password(args.password_stdin)
    fields = {"username": args.username, "password1": password, "password2": password,
              "group": args.group, "first_name": args.first_name, "last_name": args.last_name}
    errors = validate_sign_up(fields, ALL_GROUPS)
    if errors:
        for name, messages in errors.items():
            print(f"taxi-tornado: {name}: {' '.join(messages)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        user_id = asyncio.run(_create_user(settings, fields))
    except UsernameTaken:
        print("taxi-tornado: username: A user with that username already exists.",
              file=sys.stderr)
        return EXIT_USAGE
    # The id alone on standard output, for scripts; the sentence for people beside it.
    print(f"created the {args.group} user {args.username!r} (id {user_id}) in "
          f"{safe_url(settings.store_url)}", file=sys.stderr)
    print(user_id)
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Password (again): ")
    return first if first == second else first + "\0mismatch"


async def _create_user(settings: Settings, fields: dict[str, str]) -> str:
    store = open_store(settings.store_url)
    await store.open()
    try:
        user = await store.create_user(
            username=fields["username"],
            password_hash=await hash_password(fields["password1"]),
            group=fields["group"],
            first_name=fields["first_name"],
            last_name=fields["last_name"],
        )
    finally:
        await store.close()
    return user.id
