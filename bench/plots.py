"""PNG plots for docs/benchmarks.md (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

_DPI = 110
_SIZE = (7.5, 4.5)


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def line_chart(
    path: Path,
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    xs_by_series: Optional[Mapping[str, Sequence[float]]] = None,
    ymin: Optional[float] = None,
) -> None:
    """One line per series against shared (or per-series) x values; `ymin` fixes the bottom
    of the y axis (0 for rates, so a small difference does not look like a cliff)."""
    fig, ax = plt.subplots(figsize=_SIZE)
    for name, ys in series.items():
        x = xs_by_series[name] if xs_by_series else xs
        ax.plot(list(x)[: len(ys)], list(ys), marker="o", markersize=3, linewidth=1.8, label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if ymin is not None:
        ax.set_ylim(bottom=ymin)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def bar_chart(
    path: Path,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    ylabel: str,
    logy: bool = False,
    annotate: bool = True,
    limit: Optional[float] = None,
    limit_label: str = "",
) -> None:
    """Bars with their values written on top, and an optional horizontal goal line."""
    fig, ax = plt.subplots(figsize=_SIZE)
    bars = ax.bar(list(labels), list(values), color="#4C72B0")
    if annotate:
        for bar, value in zip(bars, values):
            ax.annotate(
                f"{value:,.3g}" if value < 1000 else f"{value:,.0f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    if limit is not None:
        ax.axhline(limit, color="#C44E52", linestyle="--", linewidth=1.2, label=limit_label)
        ax.legend(fontsize=8)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    _save(fig, path)


def stacked_timeseries(
    path: Path,
    panels: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    width: float,
    vlines: Sequence[tuple[float, str]] = (),
) -> None:
    """One panel per scenario, sharing the x axis: bars of width `width` at each x."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.3 * len(panels)), sharex=True)
    if len(panels) == 1:
        axes = [axes]
    for ax, (name, (xs, ys)) in zip(axes, panels.items()):
        ax.bar(list(xs), list(ys), width=width, align="edge", color="#4C72B0")
        for x, label in vlines:
            ax.axvline(x, color="#C44E52", linestyle="--", linewidth=1.0, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(True, alpha=0.3)
        if vlines:
            ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel(xlabel)
    fig.suptitle(title)
    _save(fig, path)


def cdf_chart(
    path: Path,
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    vline: Optional[float] = None,
    vline_label: str = "",
) -> None:
    """Empirical CDF per series."""
    fig, ax = plt.subplots(figsize=_SIZE)
    for name, values in series.items():
        ordered = sorted(values)
        if not ordered:
            continue
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.step(ordered, ys, where="post", label=name)
    if vline is not None:
        ax.axvline(vline, color="#C44E52", linestyle="--", linewidth=1.2, label=vline_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def grouped_bars(
    path: Path,
    groups: Sequence[str],
    series: Mapping[str, Sequence[Optional[float]]],
    *,
    title: str,
    ylabel: str,
    logy: bool = True,
) -> None:
    """Bars grouped by `groups`, one colour per series; a missing value leaves a gap."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    count = max(1, len(series))
    width = 0.8 / count
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (count - 1) / 2) * width for i in range(len(groups))]
        pairs = [(x, v) for x, v in zip(xs, values) if v]
        if not pairs:
            continue
        bars = ax.bar([x for x, _ in pairs], [v for _, v in pairs], width=width, label=name)
        for bar, (_, value) in zip(bars, pairs):
            ax.annotate(
                f"{value:,.0f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90,
            )
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups), fontsize=8)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def outbox_figures(results: Mapping[str, object], img: Path) -> str:
    """Plots for bench.outbox's results; returns the markdown that shows them."""
    subjects = results.get("subjects")
    backlog = results.get("backlog")
    if not isinstance(subjects, Mapping) or not isinstance(backlog, Mapping):
        return ""
    kinds = {
        "single_ops_s": "durable single enqueue",
        "batch_ops_s": "batched enqueue",
        "drain_ops_s": "drain",
    }
    names = list(subjects)
    series = {label: [_num(subjects[name], key) for name in names] for key, label in kinds.items()}
    grouped_bars(
        img / "outbox_contenders.png",
        names,
        series,
        title="Outbox vs peers, ops/s (log scale, higher is better)",
        ylabel="ops/s",
    )
    # Drain rate against backlog size: every size bench.outbox reports.
    points: dict[float, float] = {}
    by_size = backlog.get("drain_by_backlog")
    if isinstance(by_size, Mapping):
        points.update({float(k): float(v) for k, v in by_size.items()})
    small, big = _num(backlog, "drain_1k_ops_s"), _num(backlog, "drain_1m_ops_s")
    if small:
        points.setdefault(1_000.0, small)
    size = _num(backlog, "backlog_ops")
    if big and size:
        points.setdefault(size, big)
    sizes = sorted(points)
    line_chart(
        img / "outbox_drain_backlog.png",
        sizes,
        {"fieldsync outbox: drain (claim 100 + ack)": [points[s] for s in sizes]},
        title="Outbox drain rate against backlog size",
        xlabel="ops pending in the outbox (log scale)",
        ylabel="drain ops/s",
        logx=True,
        ymin=0.0,
    )
    return (
        "\n![outbox vs peers](img/outbox_contenders.png)\n"
        "![drain vs backlog](img/outbox_drain_backlog.png)\n"
        + (
            ""
            if len(sizes) > 2
            else "\n(bench.outbox reports the drain rate at two backlog sizes, "
            f"{', '.join(f'{int(s):,}' for s in sizes)}; the line joins those two points.)\n"
        )
    )


def _num(data: object, key: str) -> Optional[float]:
    if not isinstance(data, Mapping):
        return None
    value = data.get(key)
    return float(value) if isinstance(value, (int, float)) and value else None
