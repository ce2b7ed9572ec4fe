"""The ``controlroom`` command (architecture.md, "The controlroom command").

Subcommands import what they need lazily, so ``controlroom keys list`` does
not pay for Qt and ``controlroom gateway`` runs on a machine with no display.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

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
    return parser


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
