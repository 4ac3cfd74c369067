"""`sync-agent`: the device's command line (CLI.md).

Exit codes: 0 success, 2 usage error, 1 any other error, and `sync` exits 75 (EX_TEMPFAIL)
when it could not finish for a reason that passes - the cloud unreachable or timing out,
throttling (429/503) or another 5xx, its own --timeout running out, ops the cloud left
unsettled - so running it again later is the advice. An answer that retrying will not change
(a refused token, a 400, a 404 or other 4xx, a response that breaks the protocol) exits 1 and
names the problem. Either way the ops not sent stay in the outbox. Errors are one line
on stderr saying what was wrong and what to do; never a traceback. A reader that closes
stdout early (`status --json | head -c 200`) ends the command quietly with 141 (128 +
SIGPIPE, what a shell reports for a program killed by a closed pipe).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn, Optional

from device_agent.agent import Agent
from device_agent.errors import AgentError, InvalidInput, NotConfigured, NotFound
from device_agent.init_checks import token_device_id
from device_agent.outcomes import BadRequest, Failure, ServerError
from device_agent.progress import Progress
from device_agent.summary import ProcessingSummary
from device_agent.sync_failures import describe, retry_may_help
from device_agent.worker import Worker
from shared.contracts import ContractError, Priority

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_TEMPFAIL = 0, 1, 2, 75
EXIT_BROKEN_PIPE = 128 + 13  # 128 + SIGPIPE
PROG = "sync-agent"
PRIORITIES = [p.name.lower() for p in Priority]


class UsageError(Exception):
    """Bad command-line usage: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _timeout(text: str) -> float:
    """`sync --timeout S`: a finite number of seconds above 0 (0 could never reach the cloud,
    so it would only ever report the cloud as unreachable)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds above 0")
    return seconds


def _bound(text: str) -> int:
    """`init --max-ops/--max-bytes`: a whole number above 0."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return number


def _db_path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty path: give the device database's file, or leave --db out for the default"
        )
    return text


def _default_db() -> str:
    return os.environ.get("SYNC_AGENT_DB") or "./fieldsync.db"


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        type=_db_path,
        metavar="PATH",
        help="device database (default: $SYNC_AGENT_DB, else ./fieldsync.db)",
    )
    parser = _Parser(prog=PROG, description="FieldSync device agent.", parents=[common])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text, parents=[common]
        )
        return sub

    init = command("init", "create or update the device database and its settings")
    init.add_argument("--endpoint", required=True, metavar="URL")
    init.add_argument("--token", required=True, metavar="TOKEN")
    init.add_argument("--device-id", metavar="ID")
    init.add_argument(
        "--max-ops", type=_bound, metavar="N", help="bound the outbox (default 100000 ops)"
    )
    init.add_argument(
        "--max-bytes",
        type=_bound,
        metavar="N",
        help="bound the outbox's size (default 268435456 bytes)",
    )

    for name, help_text in (
        ("put", "record a whole-document write (works offline); prints its op id"),
        ("patch", "record a field update (null removes a field); prints its op id"),
    ):
        sub = command(name, help_text)
        sub.add_argument("collection", metavar="COLLECTION")
        sub.add_argument("key", metavar="KEY")
        sub.add_argument("json", metavar="JSON", help="the document (a JSON object)")
        sub.add_argument("--priority", choices=PRIORITIES, default="normal")
    delete = command("delete", "record a delete; prints its op id")
    delete.add_argument("collection", metavar="COLLECTION")
    delete.add_argument("key", metavar="KEY")
    delete.add_argument("--priority", choices=PRIORITIES, default="normal")

    get = command("get", "print the local view of a document as JSON")
    get.add_argument("collection", metavar="COLLECTION")
    get.add_argument("key", metavar="KEY")

    sync = command("sync", "push the outbox and pull changes now")
    sync.add_argument(
        "--timeout",
        type=_timeout,
        default=30.0,
        metavar="S",
        help="give up after S seconds (a finite number above 0; default 30)",
    )
    command("run", "sync continuously until SIGTERM/SIGINT")
    status = command("status", "show the outbox and sync state")
    status.add_argument("--json", action="store_true")

    quarantine = command("quarantine", "ops the cloud rejected permanently")
    actions = quarantine.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    listing = actions.add_parser("list", help="list quarantined ops", parents=[common])
    listing.add_argument("--json", action="store_true")
    for name, help_text in (("retry", "send a quarantined op again"), ("drop", "discard it")):
        action = actions.add_parser(name, help=help_text, parents=[common])
        action.add_argument("op_id", metavar="OP_ID")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    db = getattr(args, "db", None) or _default_db()
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose
        else logging.INFO
        if args.command == "run"
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        code = _dispatch(args, db)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _broken_pipe()
    except (InvalidInput, ContractError, UsageError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except NotFound as exc:
        hint = f"`{PROG} quarantine list`"
        return _fail(str(exc) if hint in str(exc) else f"{exc}: see {hint}", EXIT_ERROR)
    except NotConfigured as exc:
        return _fail(str(exc), EXIT_ERROR)
    except AgentError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # the promise: one line, never a traceback
        logging.getLogger("device_agent.cli").debug("unexpected error", exc_info=True)
        return _fail(
            f"unexpected {type(exc).__name__}: {exc}; rerun with -v for details and report it",
            EXIT_ERROR,
        )


def _broken_pipe() -> int:
    """Stdout was closed by its reader: stop quietly. Later writes (the interpreter's final
    flush) go to /dev/null, so Python prints no "Exception ignored" either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    return code


def _dispatch(args: argparse.Namespace, db: str) -> int:
    command = args.command
    if command == "init":
        _warn_device_mismatch(args.device_id, args.token)
        try:
            with Agent.init(
                db,
                endpoint=args.endpoint,
                token=args.token,
                device_id=args.device_id,
                max_ops=args.max_ops,
                max_bytes=args.max_bytes,
            ) as agent:
                print(f"initialised {db} device_id={agent.state.device_id}")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        return EXIT_OK
    if command == "run":
        worker = Worker(db)
        with Agent.open(db) as agent:  # fail fast, with the usual messages:
            agent.require_configured()  # no database, or no endpoint/token
        worker.install_signal_handlers()
        worker.run()
        return EXIT_OK
    with Agent.open(db) as agent:
        if command in ("put", "patch", "delete"):
            return _write(agent, args)
        if command == "get":
            document = agent.get(args.collection, args.key)
            if document is None:
                return _fail(f"not found: {args.collection}/{args.key} has no document", 1)
            print(json.dumps(document, ensure_ascii=False, sort_keys=True))
            return EXIT_OK
        if command == "sync":
            return _sync(agent, args.timeout)
        if command == "status":
            return _status(agent, as_json=args.json)
        return _quarantine(agent, args)


def _warn_device_mismatch(device_id: Optional[str], token: str) -> None:
    named = token_device_id(token)
    if device_id is not None and named is not None and named != device_id:
        sys.stderr.write(
            f"{PROG}: warning: --device-id {device_id} is not the device this token was "
            f"issued for ({named}); keeping {device_id}, but a cloud that requires the HLC "
            "node to be the token's device will reject its ops\n"
        )


def _reject_constant(name: str) -> float:
    raise InvalidInput(
        f"JSON argument contains {name}: NaN and Infinity are not valid JSON; use a finite "
        "number, a string or null"
    )


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999: valid syntax, but no JSON number can hold it
        raise InvalidInput(
            f"JSON argument contains {text}, too large for a finite number: NaN and Infinity "
            "are not valid JSON; use a smaller number or a string"
        )
    return number


def _write(agent: Agent, args: argparse.Namespace) -> int:
    if args.command == "delete":
        print(agent.delete(args.collection, args.key, priority=args.priority))
        return EXIT_OK
    try:
        document = json.loads(args.json, parse_constant=_reject_constant, parse_float=_finite_float)
    except InvalidInput:
        raise
    except ValueError as exc:
        raise InvalidInput(
            f"JSON argument is not valid JSON ({exc}): quote it, e.g. '{{\"a\": 1}}'"
        ) from exc
    if not isinstance(document, dict):
        raise InvalidInput("JSON argument must be a JSON object, e.g. '{\"a\": 1}'")
    write = agent.put if args.command == "put" else agent.patch
    print(write(args.collection, args.key, document, priority=args.priority))
    return EXIT_OK


def _sync(agent: Agent, timeout: float) -> int:
    progress = Progress(sys.stdout, agent.outbox.depth())
    summary = agent.sync(timeout=timeout, progress=progress)
    progress.finish(summary)
    print(summary.line())
    if not summary.synced:
        return _sync_failed(agent, summary, timeout)
    quarantined = agent.outbox.stats().quarantined
    if quarantined:
        sys.stderr.write(
            f"{PROG}: warning: {quarantined} op(s) quarantined: see `{PROG} quarantine list`\n"
        )
    return EXIT_OK


def _sync_failed(agent: Agent, summary: ProcessingSummary, timeout: float) -> int:
    """The one-line error and exit code of a sync that did not finish: 75 when running it
    again later is the advice, 1 when the cloud's answer will not change by itself."""
    failure = agent.last_failure
    if failure is not None:
        reason = describe(failure)
    elif summary.deferred:
        reason = f"it did not settle {summary.deferred} op(s) yet"
    else:
        reason = summary.stopped_by or "incomplete"
    if summary.stopped_by == "auth":
        return _fail(
            f"the cloud refused this device's token ({reason}): get a new one and run "
            f"`{PROG} init --endpoint URL --token TOKEN`; {_kept(summary)}",
            EXIT_ERROR,
        )
    if failure is not None and not retry_may_help(failure):
        endpoint = agent.state.settings().endpoint
        return _fail(f"{_lasting(failure, endpoint)}; {_kept(summary)}", EXIT_ERROR)
    if summary.stopped_by == "timeout":
        problem = f"the sync did not finish within --timeout {timeout:g}s"
        if failure is not None:
            problem += f" (before that: {reason})"
        elif summary.reached_cloud:
            problem += " (the cloud is slow)"
        else:
            problem += " (no answer from the cloud in that time)"
        advice = (
            "run `sync-agent sync` again (when online), with a longer --timeout for a slow "
            "link or a large backlog"
        )
    elif not summary.reached_cloud:
        problem = f"could not reach the cloud ({reason})"
        advice = "run `sync-agent sync` again when online"
    else:
        problem = f"the cloud could not take everything now ({reason})"
        advice = "run `sync-agent sync` again later"
    return _fail(f"{problem}; {_kept(summary)}; {advice}", EXIT_TEMPFAIL)


def _lasting(failure: Failure, endpoint: Optional[str]) -> str:
    """What is wrong when the cloud answers in a way retrying will not change."""
    where = f"the cloud at {endpoint}"
    versions = "and that this agent's version speaks the cloud's protocol"
    fix = f"fix it with `{PROG} init --endpoint URL --token TOKEN`"
    if isinstance(failure, ServerError) and failure.status == 200:
        return (
            f"{where} answered in a way that breaks the FieldSync protocol ({failure.message}): "
            f"check that the endpoint is a FieldSync API {versions}; {fix}"
        )
    if isinstance(failure, ServerError) and failure.status == 404:
        return (
            f"{where} has no FieldSync API at that address (HTTP 404: {failure.message}): the "
            f"endpoint is probably wrong (it is the base URL, without /v1/...); {fix}"
        )
    if isinstance(failure, BadRequest):
        return (
            f"{where} refused the agent's requests as malformed (HTTP 400: {failure.message}), "
            f"which retrying will not change: check the endpoint {versions}; {fix}"
        )
    if isinstance(failure, ServerError):
        answer = f"HTTP {failure.status}"
        if failure.message and failure.message != answer:
            answer += f" ({failure.message})"
    else:
        answer = describe(failure)
    return (
        f"{where} answered {answer}, which retrying will not change: check the endpoint "
        f"{versions}; {fix}"
    )


def _kept(summary: ProcessingSummary) -> str:
    """Where the ops this sync did not settle are: never "nothing is lost" when it
    quarantined some."""
    waiting = f"{summary.remaining} op(s) wait in the outbox"
    if not summary.quarantined:
        return f"nothing is lost: {waiting}"
    return (
        f"{summary.quarantined} op(s) were quarantined in this sync (see `{PROG} quarantine "
        f"list`) and {waiting}"
    )


def _status(agent: Agent, *, as_json: bool) -> int:
    status = agent.status()
    if as_json:
        print(json.dumps(status, sort_keys=True))
        return EXIT_OK
    depth = ", ".join(f"{name} {count}" for name, count in status["depth"].items() if count)
    age = status["oldest_pending_age_s"]
    rows = [
        ("database", status["database"]),
        ("device", status["device_id"]),
        ("endpoint", status["endpoint"] or "- (run sync-agent init)"),
        ("connectivity", status["connectivity"]),
        (
            "pending",
            f"{status['pending']} ops ({depth or 'none'}), {status['bytes']} bytes"
            + (f", oldest {age:.0f}s" if age is not None else "")
            + f" (bounds {status['max_ops']} ops, {status['max_bytes']} bytes)",
        ),
        ("quarantined", status["quarantined"]),
        ("last success", _when(status["last_success_at"])),
        ("last error", _last_error(status)),
        ("failures", f"{status['consecutive_failures']} in a row"),
        ("backoff", f"{status['current_backoff_s']:g}s"),
        ("clock offset", _offset(status["clock_offset_ms"])),
    ]
    for name, value in rows:
        print(f"{name + ':':<14}{value}")
    return EXIT_OK


def _when(epoch: Optional[float]) -> str:
    if epoch is None:
        return "never"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    return f"{stamp} ({max(0.0, time.time() - epoch):.0f}s ago)"


def _last_error(status: dict[str, object]) -> str:
    error = status["last_error"]
    if not error:
        return "-"
    at, success = status.get("last_error_at"), status["last_success_at"]
    if not isinstance(at, (int, float)):
        return str(error)
    settled = isinstance(success, (int, float)) and success > at
    return f"{error} at {_when(at)}" + (", before the last success" if settled else "")


def _offset(ms: Optional[int]) -> str:
    return "unknown" if ms is None else f"{ms / 1000:+.1f}s (cloud minus device)"


def _quarantine(agent: Agent, args: argparse.Namespace) -> int:
    if args.action == "list":
        items = agent.quarantined()
        if args.json:
            print(json.dumps({"quarantined": items}, sort_keys=True))
        else:
            for item in items:
                print(
                    f"{item['op_id']} {item['collection']}/{item['key']} {item['kind']} "
                    f"{item['code']}: {item['message']}"
                )
            if not items:
                print("no quarantined ops")
        return EXIT_OK
    if args.action == "retry":
        print(agent.retry_quarantined(args.op_id))
        return EXIT_OK
    agent.drop_quarantined(args.op_id)
    print(f"dropped {args.op_id}")
    return EXIT_OK
