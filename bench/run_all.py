"""Run the benchmarks and (re)write docs/benchmarks.md and its plots in docs/img/.

    python -m bench.run_all                # everything, a few minutes
    python -m bench.run_all --quick        # a fast smoke run (small sizes; not for quoting)
    python -m bench.run_all --only herd    # one benchmark (repeatable, or comma-separated)

Sections that were not run this time are kept as they are in docs/benchmarks.md, so
`--only` refreshes one section without losing the others. A benchmark that fails is
reported in its section as not measured, with the error, and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from bench.common import (
    DOCS,
    IMG,
    Context,
    Goal,
    Section,
    code_version,
    goals_table,
    machine,
    utc_now,
)

# name -> (module, section title), in the order the sections appear in the document.
BENCHES: dict[str, tuple[str, str]] = {
    "outbox": ("bench.outbox", "Outbox"),
    "kit_overhead": ("bench.kit_overhead", "Kit overhead on the write path"),
    "wire_cost": ("bench.wire_cost", "Wire cost"),
    "herd": ("bench.herd", "Reconnect herd"),
    "contention": ("bench.contention", "Backoff under contention"),
    "coldstart": ("bench.coldstart", "Cold start and size"),
    "reconnect": ("bench.reconnect", "Reconnect latency"),
}

OUT = DOCS / "benchmarks.md"
_GOALS_MARK = "<!-- goals: "
_INTRO = """# FieldSync benchmarks

Every figure here is a ratio or a distribution measured side by side in one run, on the
machine named in its section, by the command named in its section (`make bench` runs
`python -m bench.run_all`). Benchmarks are not tests: they measure, they do not pass or
fail, but every stated goal is listed below with its figure, met or missed. Plots are in
`docs/img/`. Rerun one section with `python -m bench.run_all --only NAME`
(names: {names}).
"""


def _render_default(name: str, module: Any) -> Callable[[dict[str, Any], Context], Section]:
    render = getattr(module, "render", None)
    if callable(render):
        return render  # type: ignore[no-any-return]
    if name == "outbox":
        from bench.outbox_report import render as outbox_render

        return outbox_render
    raise RuntimeError(f"{module.__name__} has no render()")


def run_one(name: str, ctx: Context) -> Section:
    """Run one benchmark; any failure becomes a section that says so."""
    module_name, title = BENCHES[name]
    started = time.monotonic()
    try:
        module = importlib.import_module(module_name)
        results = module.run(ctx.quick)
        section = _render_default(name, module)(results, ctx)
        section.title = title
        if name == "outbox":
            from bench.plots import outbox_figures

            section.body = section.body.rstrip() + "\n" + outbox_figures(results, IMG)
    except Exception as exc:
        trace = traceback.format_exc(limit=6)
        print(trace, file=sys.stderr)
        body = (
            f"Command: `{ctx.command}`  \nDate: {ctx.date}  \nMachine: {ctx.machine}\n\n"
            f"**Not measured in this run**: the benchmark failed with "
            f"`{type(exc).__name__}: {str(exc)[:300]}`.\n\n```\n{trace[-1500:]}```\n"
        )
        section = Section(title, body, [Goal(title, "-", "not measured", None)])
    print(f"[bench] {name}: {time.monotonic() - started:.1f} s", file=sys.stderr)
    return section


def _section_text(section: Section) -> str:
    goals = json.dumps([asdict(g) for g in section.goals])
    text = f"## {section.title}\n\n{section.body.rstrip()}\n"
    if section.goals and "| goal | target |" not in section.body:
        text += "\nGoals:\n\n" + goals_table(section.goals)
    return text + f"\n{_GOALS_MARK}{goals} -->\n"


def _split(document: str) -> dict[str, str]:
    """The existing document's `## ` sections by title (the text after the title line)."""
    sections: dict[str, str] = {}
    parts = re.split(r"^## (.+)$", document, flags=re.MULTILINE)
    for i in range(1, len(parts) - 1, 2):
        sections[parts[i].strip()] = parts[i + 1]
    return sections


def _goals_of(text: str) -> list[Goal]:
    for line in text.splitlines():
        if line.startswith(_GOALS_MARK):
            with_json = line[len(_GOALS_MARK) :].rsplit("-->", 1)[0]
            try:
                return [Goal(**g) for g in json.loads(with_json)]
            except (ValueError, TypeError):
                return []
    return []


def assemble(new: dict[str, Section], previous: str) -> str:
    """Fresh sections replace their old text; the rest of the old document is kept."""
    old = _split(previous)
    ordered_titles = [title for _, title in BENCHES.values()]
    ordered_titles += [t for t in old if t not in ordered_titles and t != "Summary of goals"]
    texts: dict[str, str] = {}
    for title in ordered_titles:
        fresh = next((s for s in new.values() if s.title == title), None)
        if fresh is not None:
            texts[title] = _section_text(fresh)
        elif title in old:
            texts[title] = f"## {title}\n\n{old[title].strip()}\n"
    summary = ["| section | goal | target | measured | verdict |", "|---|---|---|---|---|"]
    for title, text in texts.items():
        for goal in _goals_of(text):
            summary.append(
                f"| {title} | {goal.name} | {goal.target} | {goal.figure} | {goal.verdict} |"
            )
    intro = _INTRO.format(names=", ".join(BENCHES))
    doc = intro + "\n## Summary of goals\n\n" + "\n".join(summary) + "\n\n"
    return doc + "\n".join(texts.values())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a fast smoke run")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these benchmarks: {', '.join(BENCHES)}",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="the markdown file to write")
    args = parser.parse_args(argv)
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    selected = names or list(BENCHES)
    raw = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench.run_all", *raw])
    ctx = Context(
        command=command,
        date=utc_now(),
        machine=machine(),
        quick=args.quick,
        code=code_version(),
    )
    IMG.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so every benchmark stops the servers it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    sections: dict[str, Section] = {}
    for name in selected:
        sections[name] = run_one(name, ctx)
        # Write after every benchmark: an interrupted run still leaves what it measured.
        previous = args.out.read_text() if args.out.exists() else ""
        args.out.write_text(assemble(sections, previous))
    print(
        f"[bench] wrote {args.out} ({len(sections)} sections) in "
        f"{time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
