"""The ``fastproxy`` command line: check, serve, reload, server (drain, disable,
enable), demo, route explain, cache explain, cache purge, hash-password, --version.

Bad input (a bad config file, bad arguments) is reported as plain lines on
stderr and a non-zero exit status, never as a traceback. The heavier modules
(master, demo, uvloop) are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import Any

from fastproxy import __version__
from fastproxy.config import Config, ConfigError, load_config

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _component_version(module: str, function: str) -> str:
    """A version reported by one of the compiled modules, or why it is not there."""
    import importlib

    try:
        return str(getattr(importlib.import_module(module), function)())
    except ImportError:
        return "not available (the compiled module is missing)"


def _version_text() -> str:
    """`fastproxy --version`: fastproxy's version, then the versions of what it runs on."""
    try:
        import uvloop

        uvloop_version = str(getattr(uvloop, "__version__", "unknown"))
    except ImportError:
        uvloop_version = "not installed"
    lines = [
        f"fastproxy {__version__}",
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"uvloop {uvloop_version}",
        f"llhttp {_component_version('fastproxy._http', 'llhttp_version')} (compiled in)",
        f"OpenSSL {_component_version('fastproxy._tls', 'openssl_version')} (TLS engine)",
        f"zlib {_component_version('fastproxy._compress', 'zlib_version')} (gzip)",
    ]
    return "\n".join(lines)


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
    _add_cache_parser(commands)
    hashing = commands.add_parser(
        "hash-password", help="hash a password for basic_auth.users",
        description="Read a password (prompted for on a terminal, else the first line of "
        "standard input) and print its hash for a route's basic_auth.users.")
    hashing.add_argument("--iterations", type=int, default=None,
                         help="PBKDF2 iterations (default: 200000)")
    reload = commands.add_parser(
        "reload", help="reload the running proxy's config (through its admin API)",
        description="Ask the running proxy (the [admin] address and token of CONFIG) to "
        "read its config file again, as SIGHUP does, and print the result: the new "
        "generation, or why the file was refused (the running config stays).")
    reload.add_argument("config", metavar="CONFIG", help="path to the TOML config file")
    server = commands.add_parser(
        "server", help="drain, disable or enable an upstream server (through the admin API)",
        description="Ask the running proxy (the [admin] address and token of CONFIG) to "
        "change a server's state in every worker: drain (no new clients; those bound "
        "to it by a sticky cookie still go), disable (nothing goes to it) or enable.")
    server.add_argument("action", choices=("drain", "disable", "enable"))
    server.add_argument("config", metavar="CONFIG", help="path to the TOML config file")
    server.add_argument("upstream", metavar="UPSTREAM", help="the upstream's name")
    server.add_argument("server", metavar="HOST:PORT", help="the server, as in the config")
    route = commands.add_parser("route", help="inspect the routes of a config")
    route_commands = route.add_subparsers(dest="route_command", metavar="SUBCOMMAND")
    explain = route_commands.add_parser(
        "explain", help="show which route a request takes and what is sent upstream",
        description="Run one request through the compiled router of CONFIG and print "
        "which route matched (and why each earlier one did not), the rewritten "
        "upstream request or the answer the proxy makes itself.")
    explain.add_argument("config", metavar="CONFIG", help="path to the TOML config file")
    explain.add_argument("method", metavar="METHOD", help="request method, e.g. GET")
    explain.add_argument("url", metavar="URL",
                         help="http://host[:port]/path?query, or /path?query with -H 'Host: ...'")
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                         help="a request header (repeatable)")
    explain.add_argument("--client-ip", default="127.0.0.1", metavar="IP",
                         help="client address (default: 127.0.0.1)")
    explain.add_argument("--listener", metavar="NAME",
                         help="listener name (default: the first listener)")
    return parser


def _add_cache_parser(commands: Any) -> None:
    cache = commands.add_parser("cache", help="inspect the HTTP cache of a config")
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    explain = cache_commands.add_parser(
        "explain", help="show the cache key of a URL and how its response is cached",
        description="Route GET URL as the proxy would, show its cache and key, and explain "
        "with RFC 9111 whether and how long its response is stored (which directive "
        "decided). The response comes from the running proxy (HEAD with only-if-cached: "
        "what it has stored) or, with --upstream, from the route's first server.")
    explain.add_argument("config", metavar="CONFIG", help="path to the TOML config file")
    explain.add_argument("url", metavar="URL", help="http://host/path?query or /path")
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                         help="a request header (repeatable)")
    explain.add_argument("--proxy", metavar="HOST:PORT",
                         help="the running proxy to ask (default: the first listener)")
    explain.add_argument("--upstream", action="store_true",
                         help="ask the route's first server instead of the proxy")
    purge = cache_commands.add_parser(
        "purge", help="purge cached responses (through the running proxy's admin API)",
        description="Ask the running proxy (the [admin] address and token of CONFIG) to "
        "purge what its caches hold for a URL, a URL prefix, a tag (from Surrogate-Key "
        "or Cache-Tag) or everything. --soft marks them stale instead: they are "
        "revalidated before use and still served under stale-if-error.")
    purge.add_argument("config", metavar="CONFIG", help="path to the TOML config file")
    what = purge.add_mutually_exclusive_group(required=True)
    what.add_argument("--url", help="one URL: http://host/path?query")
    what.add_argument("--prefix", help="every URL that starts with this: http://host/path")
    what.add_argument("--tag", help="every response tagged so")
    what.add_argument("--all", action="store_true", help="everything")
    purge.add_argument("--cache", metavar="NAME", help="only this cache (default: every one)")
    purge.add_argument("--soft", action="store_true", help="mark stale instead of removing")


def _admin(config: Config, what: str, method: str, path: str, body: Any = None) -> int:
    """Call the admin API and print its JSON answer."""
    import json

    from fastproxy.admin import PurgeError, call

    try:
        status, answer = call(config, method, path, body)
    except PurgeError as exc:
        print(f"fastproxy {what}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"fastproxy {what}: error: cannot reach the admin API: "
              f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return EXIT_CONFIG
    if status != 200:
        error = answer.get("error") if isinstance(answer, dict) else answer
        print(f"fastproxy {what}: error ({status}): {error}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(answer, indent=1))
    return EXIT_OK


def _cache_explain(args: argparse.Namespace) -> int:
    if args.cache_command not in ("explain", "purge"):
        print("fastproxy cache: error: a subcommand is required (explain or purge)",
              file=sys.stderr)
        return EXIT_USAGE
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if args.cache_command == "purge":
        body: dict[str, Any] = ({"all": True} if args.all else
                                {k: getattr(args, k) for k in ("url", "prefix", "tag")
                                 if getattr(args, k) is not None})
        if args.cache:
            body["cache"] = args.cache
        if args.soft:
            body["soft"] = True
        return _admin(config, "cache purge", "POST", "/cache/purge", body)
    from fastproxy.cacheexplain import cache_explain
    from fastproxy.routing import ExplainError

    try:
        lines = cache_explain(config, args.url, args.header, args.proxy, args.upstream)
    except ExplainError as exc:
        print(f"fastproxy cache explain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(lines))
    return EXIT_OK


def _hash_password(args: argparse.Namespace) -> int:
    import getpass

    from fastproxy.auth import DEFAULT_ITERATIONS, MIN_ITERATIONS, hash_password

    iterations = args.iterations or DEFAULT_ITERATIONS
    if iterations < MIN_ITERATIONS:
        print(f"fastproxy hash-password: error: at least {MIN_ITERATIONS} iterations",
              file=sys.stderr)
        return EXIT_USAGE
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("fastproxy hash-password: error: the passwords differ", file=sys.stderr)
            return EXIT_USAGE
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("fastproxy hash-password: error: empty password", file=sys.stderr)
        return EXIT_USAGE
    print(hash_password(password, iterations))
    return EXIT_OK


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


def _explain(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from fastproxy.routing import ExplainError, explain

    try:
        lines = explain(config, args.method, args.url, args.header, args.client_ip,
                        args.listener)
    except ExplainError as exc:
        print(f"fastproxy route explain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(lines))
    return EXIT_OK


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.version:
        print(_version_text())
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
    if args.command == "route":
        if args.route_command != "explain":
            print("fastproxy route: error: a subcommand is required (explain)", file=sys.stderr)
            return EXIT_USAGE
        return _explain(args)
    if args.command == "reload":
        config = _load(args.config)
        if config is None:
            return EXIT_CONFIG
        return _admin(config, "reload", "POST", "/reload")
    if args.command == "server":
        config = _load(args.config)
        if config is None:
            return EXIT_CONFIG
        state = {"drain": "drain", "disable": "disabled", "enable": "enabled"}[args.action]
        return _admin(config, "server", "POST", "/servers/state",
                      {"upstream": args.upstream, "server": args.server, "state": state})
    if args.command == "hash-password":
        return _hash_password(args)
    if args.command == "cache":
        return _cache_explain(args)
    if args.command == "demo":
        from fastproxy.demo import run_demo

        return run_demo(port=args.port)
    parser.print_usage(sys.stderr)
    print("fastproxy: error: a command is required (check, serve, reload, server, demo, "
          "route, cache or hash-password)",
          file=sys.stderr)
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
    except BrokenPipeError:  # e.g. `fastproxy route explain ... | head`
        # Point stdout at /dev/null so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
