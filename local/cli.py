"""`sync-local`: the embedded default cloud, for development and demos (docs/operations.md)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Optional

from local.errors import LocalCloudError

DEFAULT_ENDPOINT = "http://127.0.0.1:8787"
SHUTDOWN_GRACE_S = 25.0


def _default_template() -> Path:
    here = Path.cwd() / "template.yaml"
    return here if here.is_file() else Path(__file__).resolve().parent.parent / "template.yaml"


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"{what} {item!r}: expected NAME=VALUE")
        pairs[name] = value
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sync-local",
        description="The FieldSync cloud on this machine: moto, the template's resources, "
        "the real handlers behind a local REST gateway, and the retry queue worker.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="start the local cloud and serve until SIGINT/SIGTERM",
        description="Prints `endpoint: URL` and `token: TOKEN` (a device of tenant 'dev'). "
        "sync-admin reaches this stack with `sync-admin --local URL ...`, which asks the "
        "gateway's local-only route GET /_local/resources for the moto endpoint and names.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8787, help="port to listen on (0: any free)")
    serve.add_argument("--verbose", action="store_true", help="log every request and handler logs")
    serve.add_argument("--template", type=Path, default=None, help="SAM template (template.yaml)")
    serve.add_argument(
        "--parameter-overrides",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="template parameter values, as for `sam deploy`",
    )
    serve.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a function environment variable (repeatable), "
        "e.g. --env CONFLICT_STRATEGIES=notes=custom",
    )
    serve.add_argument(
        "--retry-visibility-timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="make a message the retry worker failed visible again after SECONDS instead of "
        "the queue's VisibilityTimeout (speeds up retries and DLQ redrive in tests)",
    )
    serve.add_argument(
        "--authorizer-ttl",
        type=int,
        default=0,
        metavar="SECONDS",
        help="cache the authorizer's decisions this long (default 0: every request is "
        "authorized, so a revocation is seen at once; pass the template's ReauthorizeEvery, "
        "e.g. 60, for AWS-like caching)",
    )
    token = commands.add_parser("token", help="register a device with a running sync-local")
    token.add_argument("--tenant", required=True)
    token.add_argument("--device", required=True)
    token.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="the gateway's URL")
    return parser


def _serve(args: argparse.Namespace) -> int:
    # Imported here: moto, PyYAML and the SAM translator are the 'local' extras, which a
    # device's `pip install` leaves out (main says so in one line).
    from local.server import DEV_DEVICE, DEV_TENANT, LocalCloud, ServeOptions

    options = ServeOptions(
        host=args.host,
        port=args.port,
        template=args.template or _default_template(),
        verbose=args.verbose,
        parameters=_pairs(args.parameter_overrides, "--parameter-overrides"),
        env=_pairs(args.env, "--env"),
        retry_visibility_s=args.retry_visibility_timeout,
        authorizer_ttl_s=args.authorizer_ttl,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        if not stopping.is_set():
            # A stuck shutdown must not keep the port and the moto child forever.
            watchdog = threading.Timer(SHUTDOWN_GRACE_S, _force_exit)
            watchdog.daemon = True
            watchdog.start()
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cloud = LocalCloud(options)
    # stdout carries exactly the two banner lines; handler logs and metrics go to stderr.
    banner, sys.stdout = sys.stdout, sys.stderr
    try:
        cloud.start()
        token = cloud.register_device(DEV_TENANT, DEV_DEVICE)
        print(f"endpoint: {cloud.endpoint}", file=banner, flush=True)
        print(f"token: {token}", file=banner, flush=True)
        if args.verbose:  # stderr: stdout is exactly the two lines above
            print(
                f"sync-local: moto endpoint (for sync-admin --endpoint-url): {cloud.moto_endpoint}",
                file=sys.stderr,
                flush=True,
            )
        while not stopping.wait(0.5):
            pass
    finally:
        sys.stdout = banner
        cloud.stop()
    return 0


def _force_exit() -> None:
    print(f"sync-local: shutdown took over {SHUTDOWN_GRACE_S:.0f} s; exiting", file=sys.stderr)
    os._exit(1)


def _token(args: argparse.Namespace) -> int:
    if not args.endpoint.startswith(("http://", "https://")):
        raise LocalCloudError(f"--endpoint {args.endpoint!r} is not an http(s) URL")
    url = args.endpoint.rstrip("/") + "/_local/devices"
    body = json.dumps({"tenant": args.tenant, "device": args.device}).encode("utf-8")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        message = _error_message(exc.read()) or exc.reason
        raise LocalCloudError(f"sync-local refused the device: {message}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LocalCloudError(
            f"cannot reach sync-local at {args.endpoint}: start it with `sync-local serve` "
            "or pass --endpoint"
        ) from exc
    print(payload["token"])
    return 0


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and not 0 <= args.port <= 65535:
        # A usage error, in one line (argparse would add the whole usage text).
        print(f"sync-local: --port {args.port}: use 0-65535 (0: any free port)", file=sys.stderr)
        return 2
    try:
        return _serve(args) if args.command == "serve" else _token(args)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    except LocalCloudError as exc:
        print(f"sync-local: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        print(
            f"sync-local: {exc.name} is not installed: the local cloud needs the 'local' extras "
            "- run `make demo` in a checkout, or `pip install '.[local]'` there",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # one line, never a traceback, for anything unforeseen
        print(f"sync-local: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
