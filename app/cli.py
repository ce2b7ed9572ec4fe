"""The ``controlroom`` command (architecture.md, "The controlroom command").

Subcommands import what they need lazily, so ``controlroom keys list`` does
not pay for Qt and ``controlroom gateway`` runs on a machine with no display.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help="store URL (sqlite:///PATH or postgresql+psycopg://...); default: $CONTROLROOM_STORE, "
        "else a SQLite file in the data directory",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="controlroom",
        description="Control Room: see, act on and decide about the LLM APIs your services depend on.",
    )
    parser.add_argument("--version", action="version", version=f"controlroom {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ui = sub.add_parser("ui", help="open the desktop app (the default)")
    _add_ui_arguments(ui)

    keys = sub.add_parser("keys", help="API keys in the OS keyring (read from a prompt or stdin, never argv)")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    for action, text in (
        ("set", "store a key"),
        ("delete", "delete a key"),
        ("list", "list providers with keys"),
    ):
        p = keys_sub.add_parser(action, help=text)
        if action != "list":
            p.add_argument("provider", metavar="PROVIDER")
            p.add_argument(
                "--admin", action="store_true", help="the provider's admin key (usage and cost APIs)"
            )

    sim = sub.add_parser("sim", help="run the simulated provider (OpenAI and Anthropic wire formats)")
    sim.add_argument("--listen", default="127.0.0.1:8700", metavar="HOST:PORT")
    sim.add_argument("--scenario", default="healthy", metavar="NAME|FILE")
    sim.add_argument("--seed", type=int, default=0, metavar="N")

    _add_gateway_parsers(sub)
    _add_ingest_parser(sub)
    _add_collect_parser(sub)
    from app.experiments.cli import add_ab_parser  # argparse only: the runner loads when it runs

    add_ab_parser(sub)
    return parser


def _add_gateway_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``gateway``, ``config`` and ``breaker``: the data plane and its control state."""
    gateway = sub.add_parser(
        "gateway", help="run the OpenAI- and Anthropic-compatible gateway server (loopback by default)"
    )
    gateway.add_argument("--listen", default="127.0.0.1:8787", metavar="HOST:PORT")
    _add_store(gateway)
    gateway.add_argument(
        "--token",
        metavar="TOKEN",
        help="clients must send it as their API key; required off loopback. Prefer "
        "$CONTROLROOM_GATEWAY_TOKEN: a command line is visible to other users",
    )
    gateway.add_argument(
        "--max-body-mib", type=float, default=4.0, metavar="N", help="largest request body accepted [4]"
    )

    config = sub.add_parser("config", help="config as code: apply a YAML file to the store, or export it")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    apply = config_sub.add_parser(
        "apply",
        help="make the store hold exactly the file's objects (objects not in the file are deleted)",
    )
    apply.add_argument("file", type=Path, metavar="FILE.yaml")
    _add_store(apply)
    apply.add_argument("--reason", default="", help="why (kept in the audit log)")
    apply.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    export = config_sub.add_parser("export", help="write the store's configuration as YAML")
    _add_store(export)
    export.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout")

    breaker = sub.add_parser(
        "breaker", help="the operator's breaker switch (what the UI's breakers page does)"
    )
    breaker_sub = breaker.add_subparsers(dest="breaker_command", metavar="ACTION", required=True)
    listing = breaker_sub.add_parser("list", help="targets, their overrides and their last recorded state")
    _add_store(listing)
    for action, text in (
        ("open", "force the breaker open: no traffic to the target"),
        ("close", "force the breaker closed: traffic whatever the failures"),
        ("auto", "give the breaker back to its automatic behaviour"),
    ):
        p = breaker_sub.add_parser(action, help=text)
        p.add_argument("target", metavar="TARGET")
        _add_store(p)
        p.add_argument("--reason", default="", help="why (required for open and close; audited)")
        if action != "auto":
            p.add_argument(
                "--for",
                dest="for_",
                metavar="DURATION",
                help="then back to auto by itself (90s, 15m, 2h, 1d)",
            )
        p.add_argument(
            "--allow-unknown",
            action="store_true",
            help="accept a target the store does not define (one a gateway configures in code)",
        )


def _add_ingest_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ingest``: one-shot ingest of log files."""
    ingest = sub.add_parser(
        "ingest", help="read log files into the store once; prints ingested, duplicate and rejected counts"
    )
    ingest.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    _add_store(ingest)
    ingest.add_argument(
        "--format",
        metavar="NAME",
        help="event, otlp, litellm, openai-response, or a field-mapping file (.json/.yaml); "
        "default: detected from each file's first lines",
    )
    ingest.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    ingest.add_argument(
        "--parse-process",
        choices=("auto", "on", "off"),
        default="auto",
        help="read and check the lines in a second process while this one writes (Linux only); "
        "auto: for 8 MB of files or more (default)",
    )


def _add_collect_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``collect``: run the configured sources headless."""
    collect = sub.add_parser(
        "collect",
        help="run the configured sources headless (OTLP receiver, file tails, HTTP polls, usage APIs) until stopped",
    )
    _add_store(collect)
    collect.add_argument(
        "--otlp",
        nargs="?",
        const="127.0.0.1:4318",
        metavar="HOST:PORT",
        help="also receive OTLP/HTTP traces here (default when given without a value: 127.0.0.1:4318)",
    )
    collect.add_argument(
        "--config",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="a YAML/JSON file with a 'sources:' list, besides the sources in the store (repeatable)",
    )
    collect.add_argument(
        "--status-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="print every source's status this often (0: only at start)",
    )


def _window_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 320 or int(height) < 240:
        raise argparse.ArgumentTypeError(f"{text!r} is not a window size like 960x640 (at least 320x240)")
    return int(width), int(height)


def _add_ui_arguments(parser: argparse.ArgumentParser) -> None:
    _add_store(parser)
    parser.add_argument(
        "--smoke", action="store_true", help="paint the window once, then exit (works offscreen)"
    )
    parser.add_argument(
        "--screenshot", type=Path, metavar="PNG", help="with --smoke: save the window as a picture"
    )
    parser.add_argument("--page", metavar="NAME", help="open on this page (overview, traffic, breakers, ...)")
    parser.add_argument("--theme", choices=["system", "light", "dark"], default="system")
    parser.add_argument(
        "--size", type=_window_size, metavar="WxH", help="open the window at this size, e.g. 960x640"
    )
    parser.add_argument("--demo", action="store_true", help="start the simulator and synthetic traffic")
    parser.add_argument(
        "--demo-if-empty",
        action="store_true",
        help="start the demo when the store has no provider configured",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `controlroom --smoke ...` and bare `controlroom` mean `controlroom ui ...`.
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "ui")
    args = parser.parse_args(args_list)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    command = args.command
    if command == "ui":
        return _cmd_ui(args)
    if command == "keys":
        return _cmd_keys(args)
    if command == "sim":
        return _cmd_sim(args)
    if command == "gateway":
        return _cmd_gateway(args)
    if command == "config":
        return _cmd_config(args)
    if command == "breaker":
        return _cmd_breaker(args)
    if command == "ingest":
        return _cmd_ingest(args)
    if command == "collect":
        return _cmd_collect(args)
    if command == "ab":
        from app.experiments.cli import run_ab_command

        return run_ab_command(args)
    parser.print_help()
    return EXIT_USAGE


# -- ui -------------------------------------------------------------------------------
def _cmd_ui(args: argparse.Namespace) -> int:
    from app.ui.pages import PAGE_KEYS

    if args.page and args.page not in PAGE_KEYS:
        print(f"controlroom: no page named {args.page!r}; pages are: {', '.join(PAGE_KEYS)}", file=sys.stderr)
        return EXIT_USAGE
    if args.screenshot and not args.smoke:
        print("controlroom: --screenshot goes with --smoke", file=sys.stderr)
        return EXIT_USAGE
    from app.ui.app import UiOptions, run_ui
    from app.ui.theme import Scheme

    options = UiOptions(
        store_url=args.store,
        smoke=args.smoke,
        screenshot=args.screenshot,
        page=args.page,
        theme=Scheme(args.theme),
        demo=args.demo,
        demo_if_empty=args.demo_if_empty,
        size=args.size,
    )
    return run_ui(options)


# -- keys -------------------------------------------------------------------------------
def _read_secret(prompt: str) -> str:
    """From a prompt on a terminal, else the first line of stdin.  Never from argv."""
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline() if sys.stdin is not None else ""
    return line.rstrip("\r\n")


def _cmd_keys(args: argparse.Namespace) -> int:
    from app import secrets

    try:
        if args.keys_command == "list":
            keys = secrets.list_keys()
            status = secrets.backend_status()
            print(f"# {status.message}")
            if not keys:
                print("no keys stored")
            for name, kinds in sorted(keys.items()):
                print(f"{name}\t{', '.join(k.value for k in kinds)}")
            return EXIT_OK
        kind = secrets.KeyKind.ADMIN if args.admin else secrets.KeyKind.API
        if args.keys_command == "set":
            secret = _read_secret(f"{kind.value} key for {args.provider}: ")
            secrets.set_key(args.provider, secret, kind)
            print(f"stored the {kind.value} key for {args.provider} in {secrets.backend_status().backend}")
            return EXIT_OK
        deleted = secrets.delete_key(args.provider, kind)
        print(
            f"deleted the {kind.value} key for {args.provider}"
            if deleted
            else f"no {kind.value} key for {args.provider}"
        )
        return EXIT_OK if deleted else EXIT_FAILURE
    except (secrets.SecretsUnavailable, secrets.InvalidProviderName, ValueError) as exc:
        print(f"controlroom: {exc}", file=sys.stderr)
        return EXIT_FAILURE


# -- sim -------------------------------------------------------------------------------------
def _parse_listen(value: str, default_port: int) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host:
        host, port = value, str(default_port)
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise SystemExit(f"controlroom: --listen wants HOST:PORT, got {value!r}") from None


def _cmd_sim(args: argparse.Namespace) -> int:
    import asyncio

    from app.sim.server import run_simulator

    host, port = _parse_listen(args.listen, 8700)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_simulator(host, port, args.scenario, args.seed))
    return EXIT_OK


# -- gateway, config, breaker --------------------------------------------------------------------
def _actor() -> str:
    """Who makes a control change: the OS user (audited)."""
    try:
        return getpass.getuser()
    except Exception:  # no USER variable and no passwd entry (a bare container)
        return "unknown"


def _fast_loop_factory() -> Any:
    """uvloop's event loop where it is installed (not on Windows): the gateway's per-request
    overhead is mostly the event loop's; else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _cmd_gateway(args: argparse.Namespace) -> int:
    import asyncio
    import gc
    import os
    import signal

    from app.gateway.server import TOKEN_ENV, GatewayServer, ListenError, check_listen, run_gateway
    from storage.engine import StoreError

    host, port = _parse_listen(args.listen, 8787)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        check_listen(host, token)
    except ListenError as exc:
        print(f"controlroom gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.max_body_mib > 0:
        print("controlroom gateway: --max-body-mib must be more than 0", file=sys.stderr)
        return EXIT_USAGE

    def ready(server: GatewayServer, store_url: str) -> None:
        # Everything loaded so far lives as long as the process: out of the collector's way.  Young
        # collections every 3,000 allocations: at 20,000 each one walked enough live objects of the
        # requests in flight to stall the loop 3-6 ms (measured with a gc callback under 400
        # requests/s); at 3,000 they take well under 1 ms, and the default 700 runs them for nothing.
        gc.collect()
        gc.freeze()
        gc.set_threshold(3_000, 20, 10)
        auth = "token required" if token else "no token (loopback)"
        print(f"controlroom gateway: listening on {server.url} ({auth}; store {store_url})", flush=True)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: KeyboardInterrupt instead
                loop.add_signal_handler(sig, stop.set)
        await run_gateway(
            host,
            port,
            store_url=args.store,
            token=token,
            max_body_bytes=int(args.max_body_mib * 1024 * 1024),
            on_ready=ready,
            stop=stop,
        )

    try:
        with asyncio.Runner(loop_factory=_fast_loop_factory()) as runner:
            runner.run(serve())
    except KeyboardInterrupt:
        pass
    except StoreError as exc:
        print(f"controlroom gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"controlroom gateway: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print("controlroom gateway: stopped; every event was written", flush=True)
    return EXIT_OK


def _cmd_config(args: argparse.Namespace) -> int:
    from app.core.config import check_config
    from app.gateway import control
    from storage.engine import StoreError, open_store
    from storage.queries.control import ConflictError

    try:
        if args.config_command == "export":
            with open_store(args.store) as store:
                text = control.export_text(store)
            if args.output is None:
                sys.stdout.write(text)
            else:
                args.output.write_text(text, encoding="utf-8")
                print(f"wrote {args.output}", file=sys.stderr)
            return EXIT_OK
        name = str(args.file)
        try:
            text = args.file.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"controlroom: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILURE
        except UnicodeDecodeError:
            print(f"{name}:1: not UTF-8 text", file=sys.stderr)
            return EXIT_FAILURE
        check = check_config(text, name)
        for warning in check.warnings:
            print(f"{warning} (warning)", file=sys.stderr)
        if check.config is None:
            for problem in check.errors:
                print(problem, file=sys.stderr)
            n = len(check.errors)
            print(
                f"controlroom: {name} was not applied ({n} problem{'s' if n != 1 else ''}); "
                "nothing in the store changed",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        with open_store(args.store) as store:
            report = control.apply_config(
                store,
                check.config,
                actor=_actor(),
                reason=args.reason,
                source_file=name,
                dry_run=args.dry_run,
            )
            where = store.url
        _print_apply(report, name, where)
        return EXIT_OK
    except ConflictError as exc:
        print(f"controlroom: {exc}; nothing was applied, run it again", file=sys.stderr)
        return EXIT_FAILURE
    except (control.ControlError, StoreError, ValueError) as exc:
        # ValueError: the store refused an object (its own checks); the transaction rolled back.
        print(f"controlroom: {exc}; nothing in the store changed", file=sys.stderr)
        return EXIT_FAILURE


def _print_apply(report: object, name: str, where: str) -> None:
    from app.gateway.control import ApplyReport

    assert isinstance(report, ApplyReport)
    if not report.changed:
        print(f"nothing to change: {where} already holds {name} (control version {report.version_after})")
        return
    if report.dry_run:
        print(f"dry run: applying {name} to {where} would make these changes (nothing was written):")
    else:
        print(
            f"applied {name} to {where} "
            f"(control version {report.version_before} -> {report.version_after}; gateways follow within 1 s):"
        )
    for change in report.changes:
        note = "  (not in the file: the file is the truth)" if change.action == "delete" else ""
        print(f"  {change}{note}")
    print(f"  {len(report.changes)} changed, {len(report.unchanged)} unchanged")


def _cmd_breaker(args: argparse.Namespace) -> int:
    import datetime as dt

    from app.gateway import control
    from storage.engine import StoreError, open_store

    def when(ts: float) -> str:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    try:
        with open_store(args.store) as store:
            if args.breaker_command == "list":
                rows = control.list_breakers(store)
                if not rows:
                    print("no targets in the store")
                    return EXIT_OK
                print("TARGET\tOVERRIDE\tUNTIL\tBY\tREASON\tLAST RECORDED STATE")
                for row in rows:
                    o = row.override
                    last = row.last_transition
                    name = row.target if row.in_store else f"{row.target} (not in the store)"
                    print(
                        "\t".join(
                            (
                                name,
                                o.state if o else "auto",
                                when(o.expires_at) if o and o.expires_at else "-",
                                o.actor if o else "-",
                                o.reason if o else "-",
                                f"{last.to_state} since {when(last.ts)} ({last.cause})" if last else "-",
                            )
                        )
                    )
                return EXIT_OK
            for_s = control.parse_duration(args.for_) if getattr(args, "for_", None) else None
            override = control.set_breaker(
                store,
                args.target,
                args.breaker_command,
                reason=args.reason,
                actor=_actor(),
                for_s=for_s,
                allow_unknown=args.allow_unknown,
            )
        until = f" until {when(override.expires_at)}" if override.expires_at else ""
        print(
            f"breaker {override.target}: {override.state}{until} by {override.actor}"
            f"{': ' + override.reason if override.reason else ''} (gateways obey within 1 s)"
        )
        return EXIT_OK
    except (control.ControlError, StoreError) as exc:
        print(f"controlroom: {exc}", file=sys.stderr)
        return EXIT_FAILURE


# -- ingest ------------------------------------------------------------------------------------
class _ProgressLine:
    """How far ``controlroom ingest`` has read, on one terminal line rewritten at most twice a second."""

    def __init__(self, stream: Any, *, every: float = 0.5, clock: Any = None) -> None:
        import time

        self.stream = stream
        self.every = every
        self.clock = clock or time.monotonic
        self.start = self.clock()
        self.last = -math.inf
        self.width = 0

    def __call__(self, p: Any) -> None:  # an app.sources.jsonl.IngestProgress
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        share = f"{p.bytes_read / p.bytes_total:.0%}" if p.bytes_total else "?"
        rate = p.records / (now - self.start) if now > self.start else 0.0
        text = (
            f"read {share} ({p.bytes_read / 1e6:,.0f} of {p.bytes_total / 1e6:,.0f} MB), "
            f"{p.records:,} records, {rate:,.0f}/s"
        )
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        """Clear the line, so the summary starts on a clean one."""
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    import json

    from app.sources.formats import MappingError, get_format
    from app.sources.jsonl import ingest_files
    from app.sources.parse_process import ParserProcessFailed
    from app.sources.pipeline import Pipeline, StoreUnavailable
    from storage import StoreError, open_store

    try:
        fmt = get_format(args.format) if args.format else None
    except MappingError as exc:
        print(f"controlroom: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        store = open_store(args.store)
    except StoreError as exc:
        print(f"controlroom: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    progress = _ProgressLine(sys.stderr) if sys.stderr.isatty() else None
    try:
        # A short queue: the next batch is parsed while one is written, and memory stays small.
        with store, Pipeline(store, queue_events=40_000) as pipeline:
            parallel = {"auto": None, "on": True, "off": False}[args.parse_process]
            report = ingest_files(pipeline, list(args.paths), fmt, parallel=parallel, progress=progress)
    except StoreUnavailable as exc:
        print(f"controlroom: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ParserProcessFailed as exc:  # a bug: say so, and how to go on without the second process
        print(
            f"controlroom: {exc}\nTo read the files in this process instead: --parse-process off",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        if progress is not None:
            progress.close()
    for error in report.errors:
        print(f"controlroom: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(f"ingested {report.ingested:,}, duplicates {report.duplicates:,}, rejected {report.rejected:,}")
        for reason, n in sorted(report.reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {reason}: {n:,}")
    return EXIT_FAILURE if report.errors else EXIT_OK


# -- collect -----------------------------------------------------------------------------------
def _cmd_collect(args: argparse.Namespace) -> int:
    from app.sources.collector import run_collect

    return run_collect(
        args.store, otlp=args.otlp, config_files=args.config, status_every_s=args.status_every or None
    )
