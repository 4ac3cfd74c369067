"""`sync-admin`: operate a FieldSync stack - devices, the dead-letter queue, stats.

Works against AWS (`--stack-name`, or explicit names) or a local stack: `--local URL` asks a
running `sync-local serve` for its moto endpoint and resource names. Exit 0 on success, 2 on
a usage error, 1 on anything else, with a one-line error on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, Optional

from admin.errors import AdminError, UsageError
from admin.stack import StackResources, discover

EPILOG = (
    "Where the stack is: --stack-name S (CloudFormation outputs), --local URL (a running "
    "`sync-local serve`, e.g. --local http://127.0.0.1:8787), or explicit --table, "
    "--devices-table, --queue-url, --dlq-url with --endpoint-url/--region. These options go "
    "before or after the command."
)


def _stack_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    default = None if defaults else argparse.SUPPRESS
    group = parser.add_argument_group("stack")
    group.add_argument("--stack-name", default=default, help="CloudFormation stack name")
    group.add_argument("--local", default=default, metavar="URL", help="a running sync-local")
    group.add_argument("--endpoint-url", default=default, help="AWS endpoint (emulators)")
    group.add_argument("--region", default=default, help="AWS region")
    group.add_argument("--table", default=default, help="records table name")
    group.add_argument("--devices-table", default=default, help="devices table name")
    group.add_argument("--queue-url", default=default, help="retry queue URL")
    group.add_argument("--dlq-url", default=default, help="dead-letter queue URL")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sync-admin", description=__doc__, epilog=EPILOG)
    _stack_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _stack_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True)

    device = commands.add_parser("device", help="register, revoke, list devices")
    device_commands = device.add_subparsers(dest="action", required=True)
    register = device_commands.add_parser("register", parents=[common], help="print a new token")
    register.add_argument("--tenant", required=True)
    register.add_argument("--device", required=True)
    revoke = device_commands.add_parser("revoke", parents=[common], help="revoke a device")
    revoke.add_argument("--device", required=True)
    listing = device_commands.add_parser("list", parents=[common], help="list devices")
    listing.add_argument("--tenant")
    listing.add_argument("--json", action="store_true")

    dlq = commands.add_parser("dlq", help="inspect and replay the dead-letter queue")
    dlq_commands = dlq.add_subparsers(dest="action", required=True)
    dlq_list = dlq_commands.add_parser("list", parents=[common], help="show dead letters")
    dlq_list.add_argument("--json", action="store_true")
    redrive = dlq_commands.add_parser("redrive", parents=[common], help="replay dead letters")
    which = redrive.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every message")
    which.add_argument("message_id", nargs="?", metavar="MESSAGE_ID", help="one message")
    purge = dlq_commands.add_parser("purge", parents=[common], help="delete every dead letter")
    purge.add_argument("--yes", action="store_true", help="confirm: the messages are lost")

    stats = commands.add_parser("stats", parents=[common], help="numbers per tenant")
    stats.add_argument("--json", action="store_true")
    return parser


NEEDS = {"device": ("devices_table",), "dlq": ("dlq_url",), "stats": ("dlq_url",)}


def _resources(args: argparse.Namespace) -> StackResources:
    resources = discover(
        region=args.region,
        endpoint_url=args.endpoint_url,
        stack_name=args.stack_name,
        local=args.local,
        explicit={
            "table": args.table,
            "devices_table": args.devices_table,
            "queue_url": args.queue_url,
            "dlq_url": args.dlq_url,
        },
    )
    # stats shows the DLQ when it can be found; device and dlq commands need theirs.
    resources = resources.complete(*NEEDS[args.command], strict=args.command != "stats")
    resources.export()
    return resources


def _print(payload: Any, as_json: bool, text: str) -> None:
    print(json.dumps(payload, sort_keys=True) if as_json else text)


def _device(args: argparse.Namespace, resources: StackResources) -> int:
    from shared.dal import list_devices, register_device, revoke_device

    resources.require("devices_table")
    if args.action == "register":
        print(register_device(args.tenant, args.device))
    elif args.action == "revoke":
        info = revoke_device(args.device)
        print(f"revoked {info.device_id} (tenant {info.tenant_id}) at {info.revoked_at}")
    else:
        devices = list_devices(args.tenant)
        rows = [f"{'device':<24} {'tenant':<16} {'created':<26} revoked"]
        rows += [
            f"{d.device_id:<24} {d.tenant_id:<16} {d.created_at:<26} {d.revoked_at or '-'}"
            for d in devices
        ]
        _print({"devices": [d.to_dict() for d in devices]}, args.json, "\n".join(rows))
    return 0


def _dlq(args: argparse.Namespace, resources: StackResources) -> int:
    from admin.dlq import DeadLetterQueue

    resources.require("dlq_url")
    queue = DeadLetterQueue(resources.client("sqs"), resources.dlq_url, resources.queue_url)
    if args.action == "list":
        letters = [message.summary() for message in queue.peek()]
        rows = [f"{'message id':<38} {'tenant':<12} {'device':<14} {'op':<38} target / reason"]
        rows += [
            f"{m['message_id']:<38} {m['tenant_id']:<12} {m.get('device_id', '?'):<14} "
            f"{m.get('op_id', '?'):<38} {m.get('collection', '?')}/{m.get('key', '?')} "
            f"({m.get('reason', 'unreadable')})"
            for m in letters
        ]
        rows.append(f"{len(letters)} message(s) in the dead-letter queue")
        _print({"messages": letters, "count": len(letters)}, args.json, "\n".join(rows))
    elif args.action == "redrive":
        moved = queue.redrive(None if args.all else args.message_id)
        print(f"redrove {len(moved)} message(s) to the retry queue")
    else:
        if not args.yes:
            raise UsageError("dlq purge deletes every message for good: add --yes to confirm")
        print(f"purged about {queue.purge()} message(s)")
    return 0


def _stats(args: argparse.Namespace, resources: StackResources) -> int:
    from admin.stats import collect, render

    resources.require("table")
    stats = collect(resources)
    _print(stats, args.json, render(stats))
    return 0


def _describe(exc: BaseException) -> Optional[str]:
    """A one-line reason for an AWS or store failure, with what to check."""
    try:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            NoRegionError,
        )
    except ModuleNotFoundError:  # (then no failure can be one of these)
        return None

    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, EndpointConnectionError):
            return f"cannot reach AWS ({seen}): check --endpoint-url/--region and the network"
        if isinstance(seen, NoCredentialsError):
            return "no AWS credentials: configure a profile or AWS_ACCESS_KEY_ID"
        if isinstance(seen, NoRegionError):
            return "no AWS region: pass --region"
        if isinstance(seen, ClientError):
            code = seen.response.get("Error", {}).get("Code", "")
            if code in ("ResourceNotFoundException", "AWS.SimpleQueueService.NonExistentQueue"):
                return f"not found ({code}): check the stack name, table and queue flags"
            return f"AWS refused the call: {code}: {seen.response.get('Error', {}).get('Message')}"
        seen = seen.__cause__ or getattr(seen, "cause", None) or seen.__context__
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resources = _resources(args)
        if args.command == "device":
            return _device(args, resources)
        if args.command == "dlq":
            return _dlq(args, resources)
        return _stats(args, resources)
    except UsageError as exc:
        print(f"sync-admin: {exc}", file=sys.stderr)
        return 2
    except AdminError as exc:
        print(f"sync-admin: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        print(
            f"sync-admin: {exc.name} is not installed: sync-admin needs the 'cloud' extras "
            "(boto3) - `pip install '.[cloud]'` in a checkout",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # one line, never a traceback
        from shared.errors import FieldSyncError

        known = str(exc) if isinstance(exc, FieldSyncError) else f"{type(exc).__name__}: {exc}"
        print(f"sync-admin: {_describe(exc) or known}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
