"""The ``fastproxy`` command line: check, serve, demo, --version.

Bad input (a bad config file, bad arguments) is reported as plain lines on
stderr and a non-zero exit status, never as a traceback. The heavier modules
(master, demo, uvloop) are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import platform
import sys

from fastproxy import __version__
from fastproxy.config import Config, ConfigError, load_config

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _version_line() -> str:
    try:
        import uvloop

        uvloop_version = str(getattr(uvloop, "__version__", "unknown"))
    except ImportError:
        uvloop_version = "not installed"
    return f"fastproxy {__version__} (Python {platform.python_version()}, uvloop {uvloop_version})"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastproxy", description="A reverse proxy configured by one TOML file."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser("check", help="validate a config file and print a summary")
    check.add_argument("config", metavar="CONFIG", help="path to the TOML config file")
    serve = commands.add_parser("serve", help="run the proxy with a config file")
    serve.add_argument("config", metavar="CONFIG", help="path to the TOML config file")
    demo = commands.add_parser("demo", help="run a self-contained demo proxy")
    demo.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    return parser


def _load(path: str) -> Config | None:
    """Load the config, reporting issues and warnings on stderr; None if refused."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for issue in exc.errors:
            print(f"error: {issue}", file=sys.stderr)
        return None
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return config


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.version:
        print(_version_line())
        return EXIT_OK
    if args.command == "check":
        config = _load(args.config)
        if config is None:
            return EXIT_CONFIG
        print(config.summary())
        return EXIT_OK
    if args.command == "serve":
        config = _load(args.config)
        if config is None:
            return EXIT_CONFIG
        from fastproxy.master import serve

        return serve(config)
    if args.command == "demo":
        from fastproxy.demo import run_demo

        return run_demo(port=args.port)
    parser.print_usage(sys.stderr)
    print("fastproxy: error: a command is required (check, serve or demo)", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help or a usage error, already printed
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        return _run(args, parser)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
