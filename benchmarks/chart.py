#!/usr/bin/env python3
"""Draw tasks per second against caller memory, per method, from bench.py's --json files.

Usage: ``python benchmarks/chart.py results.json [more.json ...] [-o docs/benchmarks.png]``

One panel per workload that was measured at two caller sizes or more (a line needs two
points); the y axis is logarithmic because the methods that fork the caller fall by two
orders of magnitude, and a linear axis would flatten everything else into one line.
Needs matplotlib: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none is assumed
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.png"

STYLE: dict[str, tuple[str, str]] = {
    # method: (colour, line style); leanpool stands out, the external tools are dashed.
    "leanpool": ("#d62728", "-"),
    "threads": ("#1f77b4", "-"),
    "threads-fork": ("#1f77b4", ":"),
    "mp-fork": ("#2ca02c", "-"),
    "mp-fork-mtpc1": ("#2ca02c", ":"),
    "forloop": ("#7f7f7f", "-"),
    "ceiling": ("#000000", "--"),
    "xargs": ("#9467bd", "--"),
    "parallel": ("#8c564b", "--"),
}


def load(paths: Sequence[str]) -> list[dict[str, Any]]:
    """The summary rows of every file; a later file's row replaces an earlier one for the
    same workload, caller size and method, so a re-run can patch a sweep."""
    rows: dict[tuple[str, int, str], dict[str, Any]] = {}
    for path in paths:
        for row in json.loads(Path(path).read_text())["summary"]:
            rows[(row["workload"], row["memory_mb"], row["method"])] = row
    return list(rows.values())


def draw(rows: list[dict[str, Any]], out: Path) -> int:
    """Write the chart; return the number of panels drawn."""
    workloads = [
        wl
        for wl in dict.fromkeys(r["workload"] for r in rows)
        if len({r["memory_mb"] for r in rows if r["workload"] == wl}) >= 2
    ]
    if not workloads:
        return 0
    fig, axes = plt.subplots(1, len(workloads), figsize=(6.5 * len(workloads), 5), squeeze=False)
    for ax, wl in zip(axes[0], workloads, strict=True):
        mine = [r for r in rows if r["workload"] == wl]
        sizes = sorted({r["memory_mb"] for r in mine})
        # Caller sizes are evenly spaced categories: 0 MB has no place on a log x axis.
        position = {mb: i for i, mb in enumerate(sizes)}
        for method in dict.fromkeys(r["method"] for r in mine):
            points = sorted(
                (r["memory_mb"], r["tps"], r["capped"]) for r in mine if r["method"] == method
            )
            colour, line = STYLE.get(method, ("#17becf", "-"))
            label = method + (" (capped n)" if any(c for _, _, c in points) else "")
            ax.plot(
                [position[mb] for mb, _, _ in points],
                [tps for _, tps, _ in points],
                line,
                color=colour,
                marker="o",
                linewidth=2.5 if method == "leanpool" else 1.5,
                label=label,
            )
        parallel = mine[0]["parallel"]
        ax.set_title(f"{wl} workload, pool of {parallel}")
        ax.set_xticks(range(len(sizes)), [str(mb) for mb in sizes])
        ax.set_xlabel("caller memory (MiB of small Python objects)")
        ax.set_ylabel("tasks per second (log)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return len(workloads)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The original benchmark's shape as Markdown: per workload, method by caller memory,
    tasks per second (``*``: a capped task count), then the best method's ratio."""
    out: list[str] = []
    for wl in dict.fromkeys(r["workload"] for r in rows):
        mine = [r for r in rows if r["workload"] == wl]
        sizes = sorted({r["memory_mb"] for r in mine})
        out.append(f"\n**{wl}**, pool of {mine[0]['parallel']}, tasks/s by caller memory (MiB)\n")
        out.append("| method | " + " | ".join(f"{mb} MB" for mb in sizes) + " |")
        out.append("|---|" + "---:|" * len(sizes))
        cells = {(r["method"], r["memory_mb"]): r for r in mine}
        methods = sorted(
            dict.fromkeys(r["method"] for r in mine),
            key=lambda m: -max(r["tps"] for r in mine if r["method"] == m),
        )
        for method in methods:
            row = [f"| {method} "]
            for mb in sizes:
                r = cells.get((method, mb))
                if r is None:
                    row.append("| - ")
                else:
                    mark = "*" if r["capped"] else ""
                    extra = f" ({r['mb_per_s']:.0f} MB/s)" if r.get("mb_per_s") else ""
                    row.append(f"| {r['tps']:,.0f}{mark}{extra} ")
            out.append("".join(row) + "|")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("json", nargs="+", help="files written by bench.py --json")
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    args = parser.parse_args(argv)
    rows = load(args.json)
    if args.markdown:
        print(markdown(rows))
    panels = draw(rows, args.out)
    if not panels:
        print("no workload was measured at two caller sizes or more: nothing to draw")
        return 1
    print(f"wrote {args.out} ({panels} panel{'s' if panels > 1 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
