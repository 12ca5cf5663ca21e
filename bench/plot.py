"""Plot benchmark results (``bench/results/NAME.jsonl``) to a PNG beside the file.

    python -m bench.plot bench/results/flat.jsonl                  # -> bench/results/flat.png
    python -m bench.plot bench/results/ivfpq.jsonl --mode curve    # recall-vs-QPS curves, one line per method
    python -m bench.plot R.jsonl --mode bar --x threads --y qps    # bars: one group per x value, one bar per method
    python -m bench.plot R.jsonl --where k=10 --where dataset_name=glove-50 --out /tmp/p.png

Modes:

* ``curve``: x = ``--x`` (default ``recall``), y = ``--y`` (default ``qps``, log scale), one line per method through
  its configurations sorted by x, one panel per data set (the usual ann-benchmarks picture).
* ``bar``: one group of bars per value of ``--x`` (default ``threads``), one bar per method, height ``--y``; one panel
  per data set. Good for exact methods, where recall is 1 and only speed differs.
* ``line``: like ``curve`` but x is any numeric field (e.g. ``nprobe``, ``nb``) and y is linear unless ``--logy``.
* ``auto`` (default): ``bar`` when every method has a single recall value per data set, else ``curve``.

Records are grouped by ``method`` (or ``--group``) and by data set (``dataset_name``, else ``dataset``). By default
only the latest record of each configuration is kept (same data set, method, threads, k, nq, params/config), so
re-running a benchmark replaces its points; ``--all`` keeps every record.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .common import read_results

#: fields that describe a configuration (the rest are measurements)
CONFIG_FIELDS = ("bench", "dataset", "dataset_name", "method", "threads", "k", "nq", "nb", "params", "config",
                 "build_params", "search_params", "label")


def config_key(rec: dict) -> str:
    return json.dumps({f: rec.get(f) for f in CONFIG_FIELDS}, sort_keys=True, default=str)


def latest(records: list[dict]) -> list[dict]:
    """Keep the last record of each configuration, in first-seen order."""
    last: dict[str, dict] = {}
    for r in records:
        last[config_key(r)] = r
    return list(last.values())


def _match(rec: dict, where: list[str]) -> bool:
    for cond in where:
        key, _, val = cond.partition("=")
        have = rec.get(key)
        if have is None or str(have) != val:
            try:
                if float(have) == float(val):
                    continue
            except (TypeError, ValueError):
                pass
            return False
    return True


def _panel_name(rec: dict) -> str:
    name = str(rec.get("dataset_name") or rec.get("dataset") or "?")
    return f"{name} | {rec['config']}" if rec.get("config") else name


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def choose_mode(records: list[dict], group: str) -> str:
    seen: dict = {}
    for r in records:
        seen.setdefault((_panel_name(r), r.get(group)), set()).add(r.get("recall"))
    return "bar" if all(len(v) <= 1 for v in seen.values()) else "curve"


def plot(records: list[dict], out: Path, *, mode: str = "auto", x: str | None = None, y: str = "qps",
         group: str = "method", logy: bool | None = None, title: str | None = None) -> Path:
    """Draw ``records`` into ``out`` (PNG); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not records:
        raise ValueError("no records to plot (check --where filters)")
    if mode == "auto":
        mode = choose_mode(records, group)
    if x is None:
        x = "threads" if mode == "bar" else "recall"
    if logy is None:
        logy = mode in ("curve", "bar") and y in ("qps",)
    panels: dict[str, list[dict]] = {}
    for r in records:
        panels.setdefault(_panel_name(r), []).append(r)
    methods = list(dict.fromkeys(str(r.get(group)) for r in records))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    ncol = 2 if len(panels) == 4 else min(len(panels), 3)
    nrow = math.ceil(len(panels) / ncol)
    width = max(5.6 * ncol, 8.0)
    fig, axes = plt.subplots(nrow, ncol, figsize=(width, 4.2 * nrow + 0.6), squeeze=False)
    for ax, (pname, recs) in zip(axes.ravel(), panels.items()):
        if mode == "bar":
            _bars(ax, recs, x, y, group, methods, colors)
        else:
            _lines(ax, recs, x, y, group, methods, colors, mode)
        if logy:
            ax.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:.2g}")
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        first = recs[0]
        sub = ", ".join(f"{f}={first[f]}" for f in ("nb", "nq", "k") if f in first)
        ax.set_title(f"{pname}" + (f"\n({sub})" if sub else ""), fontsize=10)
        ax.set_ylabel({"qps": "queries / s"}.get(y, y) + (" (log scale)" if logy else ""))
        ax.set_xlabel(x)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=colors[m], marker="s", linestyle="", markersize=9) for m in methods]
    per_row = max(1, min(len(methods), int(width // 2.6)))
    fig.legend(handles, methods, loc="lower center", ncol=per_row, frameon=False, bbox_to_anchor=(0.5, 0.02))
    legend_rows = math.ceil(len(methods) / per_row)
    machine = records[-1].get("machine") or {}
    foot = f"{machine.get('cpu', '')} ({machine.get('cores', '?')} cores)  {records[-1].get('timestamp', '')}"
    label = {"qps": "QPS"}.get(y, y)
    fig.suptitle(title or f"{records[-1].get('bench', out.stem)}: {label} by {x}", fontsize=12)
    fig.text(0.99, 0.005, foot, ha="right", va="bottom", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.04 + 0.045 * legend_rows, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _bars(ax, recs, x, y, group, methods, colors):
    xs = sorted({r.get(x) for r in recs}, key=lambda v: (_num(v) is None, _num(v) or 0, str(v)))
    present = [m for m in methods if any(str(r.get(group)) == m for r in recs)]
    width = 0.8 / max(len(present), 1)
    for j, m in enumerate(present):
        for i, xv in enumerate(xs):
            vals = [_num(r.get(y)) for r in recs if str(r.get(group)) == m and r.get(x) == xv]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            pos = i - 0.4 + width * (j + 0.5)
            ax.bar(pos, vals[-1], width=width * 0.95, color=colors[m])
            ax.annotate(f"{vals[-1]:,.0f}" if vals[-1] >= 10 else f"{vals[-1]:.3g}", (pos, vals[-1]),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([str(v) for v in xs])
    ax.margins(y=0.15)


def _lines(ax, recs, x, y, group, methods, colors, mode):
    for m in methods:
        pts = [(_num(r.get(x)), _num(r.get(y))) for r in recs if str(r.get(group)) == m]
        pts = sorted(p for p in pts if p[0] is not None and p[1] is not None)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4, color=colors[m], label=m)
    if mode == "curve" and x.startswith("recall"):
        lo = min((_num(r.get(x)) for r in recs if _num(r.get(x)) is not None), default=0.0)
        ax.set_xlim(max(0.0, lo - 0.02), 1.005)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("results", help="a JSONL results file (bench/results/NAME.jsonl) or a bare NAME")
    p.add_argument("--mode", choices=("auto", "curve", "bar", "line"), default="auto")
    p.add_argument("--x", default=None, help="x field (default: recall for curves, threads for bars)")
    p.add_argument("--y", default="qps", help="y field")
    p.add_argument("--group", default="method", help="field naming the series")
    p.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE", help="keep matching records")
    p.add_argument("--all", action="store_true", help="keep every record, not only the latest per configuration")
    p.add_argument("--logy", action=argparse.BooleanOptionalAction, default=None, help="log-scale y")
    p.add_argument("--title", default=None)
    p.add_argument("--out", default=None, help="PNG path (default: beside the results file)")
    args = p.parse_args(argv)
    from .common import results_path

    src = results_path(args.results)
    if not src.exists():
        print(f"no results file {src}", file=sys.stderr)
        return 1
    recs = [r for r in read_results(src) if _match(r, args.where)]
    if not args.all:
        recs = latest(recs)
    out = Path(args.out) if args.out else src.with_suffix(".png")
    try:
        plot(recs, out, mode=args.mode, x=args.x, y=args.y, group=args.group, logy=args.logy, title=args.title)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
