#!/usr/bin/env python3
"""The fan-out benchmark's figures for docs/benchmarks.md, drawn from raw results.

    python3 benches/plots.py                      # docs/img/*.png from the committed docs/bench-data/*.json
    python3 benches/plots.py collect OUT DATA.json --source "how OUT was made"
                                                  # a benches/fanout.sh OUT directory -> one data file
    python3 benches/plots.py plot --latency DATA.json --cpu DATA.json --rss DATA.json [--img DIR]
                                  [--only latency-cdf cpu rss] [--suffix=-NAME]

Figures (PNG, in docs/img/ unless --img says otherwise):
  fanout-latency-cdf.png   latency (trigger -> kernel receipt, every delivery) per N: nchan and flagrelay.
                           A full CDF when the data has the load tool's `latency_cdf_ms`; when it
                           only has p50 / p99 / max (the published tables) those three points are
                           drawn, joined by a dashed line, and the legend says so.
  fanout-cpu.png           server CPU per delivered message against N, one panel per core count:
                           flagrelay, with the floor (one write() per socket) and nchan as lines.
  fanout-rss.png           RSS per connection against N: nchan and flagrelay.

A data file is {"title", "source", "runs": [{"server": "floor"|"nchan"|"flagrelay", "clients",
"cores", "cpu_per_delivery_us", "last_ms_median", "rss_per_conn_kb", "latency_ms": {"p50",
"p99", "max"} | null, "latency_cdf_ms": [[q, ms], ...] | null}]}. `collect` makes one from an
OUT directory (OUT/{nchan,flagrelay}-N-Cc.json written by flagrelay-load --json-out, and
OUT/floor-N.txt); the committed ones in docs/bench-data/ were transcribed from the tables of
docs/benchmarks.md and say so in their "source".

matplotlib comes from PyPI: if it is not importable, the script creates a virtualenv
(FLAGRELAY_PLOTS_VENV, default $TMPDIR/flagrelay-plots-venv), installs the pinned version and runs
itself again there. Nothing else is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "docs" / "bench-data"
# The current figures: one run of benches/fanout.sh with every server, N and core count (the
# task-less writer pass). Earlier runs stay in DATA for their sections of docs/benchmarks.md.
LATENCY_DATA = DATA / "fanout-taskless-2026-12-02.json"
WRITER_PASS_DATA = LATENCY_DATA
REQUIREMENTS = ["matplotlib==3.11.2"]


def ensure_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
        return
    except ModuleNotFoundError:
        pass
    if os.environ.get("FLAGRELAY_PLOTS_REEXEC"):
        sys.exit("plots.py: matplotlib is still missing inside the virtualenv")
    venv = Path(os.environ.get("FLAGRELAY_PLOTS_VENV") or Path(os.environ.get("TMPDIR", "/tmp")) / "flagrelay-plots-venv")
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"plots.py: creating virtualenv {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if subprocess.run([str(py), "-c", "import matplotlib"], capture_output=True).returncode != 0:
        print(f"plots.py: installing {' '.join(REQUIREMENTS)}", file=sys.stderr)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS], check=True)
    os.execve(str(py), [str(py), __file__, *sys.argv[1:]], {**os.environ, "FLAGRELAY_PLOTS_REEXEC": "1"})


# ------------------------------------------------------------------ collect


def collect(out_dir: Path, dest: Path, source: str) -> None:
    """A benches/fanout.sh OUT directory -> a data file."""
    runs = []
    for f in sorted(out_dir.glob("*-*-*c.json")):
        m = re.fullmatch(r"(nchan|flagrelay)-(\d+)-(\d+)c\.json", f.name)
        if not m:
            continue  # flagrelay-eval-… and the like are other experiments
        rep = json.loads(f.read_text())
        srv = rep.get("server") or {}
        runs.append({
            "server": m.group(1), "clients": int(m.group(2)), "cores": int(m.group(3)),
            "cpu_per_delivery_us": srv.get("cpu_per_delivery_us"),
            "last_ms_median": rep.get("last_ms_median"),
            "rss_per_conn_kb": srv.get("rss_per_conn_kb"),
            "latency_ms": rep.get("latency_ms"),
            "latency_cdf_ms": rep.get("latency_cdf_ms") or None,
            "ready": rep.get("ready"), "failed": rep.get("failed"),
            "other_load_changes_pct": rep.get("other_load_changes_pct"),
        })
    cores = sorted({r["cores"] for r in runs})
    for f in sorted(out_dir.glob("floor-*.txt")):
        text = f.read_text()
        n = int(re.fullmatch(r"floor-(\d+)\.txt", f.name).group(1))
        cpu = re.search(r"sender cpu/write=([0-9.]+) ns", text)
        ev = re.search(r"sockets: median ([0-9.]+) ms", text)
        # One single-threaded sender: the same floor for every core count of the run.
        for c in cores or [1]:
            runs.append({"server": "floor", "clients": n, "cores": c,
                         "cpu_per_delivery_us": float(cpu.group(1)) / 1000 if cpu else None,
                         "last_ms_median": float(ev.group(1)) if ev else None,
                         "rss_per_conn_kb": None, "latency_ms": None, "latency_cdf_ms": None})
    if not runs:
        sys.exit(f"plots.py: no nchan-N-Cc.json, flagrelay-N-Cc.json or floor-N.txt in {out_dir}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"title": f"benches/fanout.sh results from {out_dir.name}", "source": source,
                                "runs": runs}, indent=2) + "\n")
    print(f"{dest}: {len(runs)} runs", file=sys.stderr)


# ------------------------------------------------------------------ plot

COLOURS = {"flagrelay": "#1f77b4", "nchan": "#d62728", "floor": "#555555"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def footer(fig, data: dict, width: int) -> None:
    """Where the figures come from, at the bottom of the figure (wrapped to its width)."""
    width = min(width, int(fig.get_figwidth() * 19))
    fig.text(0.5, 0.005, textwrap.fill(f"data: {data['source']}", width), ha="center", va="bottom", fontsize=6.5, color="#666")


def fmt_n(n: int) -> str:
    return f"{n:,}"


def plot_latency(data: dict, dest: Path, plt) -> None:
    runs = [r for r in data["runs"] if r["server"] in ("nchan", "flagrelay") and (r.get("latency_cdf_ms") or r.get("latency_ms"))]
    keys = sorted({(r["cores"], r["clients"]) for r in runs})
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    only_pcts = False
    for ax, (cores, n) in zip(axes.flat, keys):
        for r in sorted((r for r in runs if (r["cores"], r["clients"]) == (cores, n)), key=lambda r: r["server"]):
            col = COLOURS[r["server"]]
            if r.get("latency_cdf_ms"):
                q, ms = zip(*((p[0], p[1]) for p in r["latency_cdf_ms"]))
                l = r.get("latency_ms")
                ax.step(ms, q, where="post", color=col, label=r["server"] + (
                    f": p50 {l['p50']:.1f}, p99 {l['p99']:.1f}, max {l['max']:.1f} ms" if l else ""))
            else:
                only_pcts = True
                l = r["latency_ms"]
                ax.plot([l["p50"], l["p99"], l["max"]], [0.5, 0.99, 1.0], "--", color=col, alpha=0.6)
                ax.plot([l["p50"], l["p99"], l["max"]], [0.5, 0.99, 1.0], "o", color=col,
                        label=f"{r['server']}: p50 {l['p50']:g}, p99 {l['p99']:g}, max {l['max']:g} ms")
        notes = [f"{r['server']}: {r['note']}" for r in runs if (r["cores"], r["clients"]) == (cores, n) and r.get("note")]
        for k, note in enumerate(notes):
            ax.text(0.02, 0.88 - 0.14 * k, textwrap.fill(note, 28), transform=ax.transAxes, fontsize=6.5, va="top", color="#444")
        ax.set_title(f"N = {fmt_n(n)}, {cores} server core{'s' if cores > 1 else ''}", fontsize=10)
        ax.set_xlabel("trigger → kernel receipt, ms")
        ax.set_ylabel("fraction of deliveries")
        ax.set_ylim(0, 1.03)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right")
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    what = "p50 / p99 / max only (the published tables keep no full distribution); dashed: joined by straight lines" \
        if only_pcts else "the distribution over every delivery (the load tool's latency_cdf_ms)"
    fig.suptitle(f"Fan-out latency per delivery, per N: {what}", fontsize=10)
    footer(fig, data, 230)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def by_server(runs: list[dict], cores: int, field: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in runs:
        if r["cores"] == cores and r.get(field) is not None:
            out.setdefault(r["server"], []).append((r["clients"], r[field]))
    return {k: sorted(v) for k, v in out.items()}


def plot_cpu(data: dict, dest: Path, plt) -> None:
    runs = data["runs"]
    cores = sorted({r["cores"] for r in runs})
    fig, axes = plt.subplots(1, len(cores), figsize=(5.4 * len(cores), 4.8), squeeze=False, sharey=True)
    for ax, c in zip(axes.flat, cores):
        s = by_server(runs, c, "cpu_per_delivery_us")
        for name, style in [("floor", dict(ls="--", lw=1.5)), ("nchan", dict(ls="-", lw=1.5))]:
            if name in s:
                x, y = zip(*s[name])
                ax.plot(x, y, color=COLOURS[name], marker=".", label=name + (" (one write() per socket)" if name == "floor" else ""), **style)
        if "flagrelay" in s:
            x, y = zip(*s["flagrelay"])
            ax.plot(x, y, color=COLOURS["flagrelay"], lw=2.5, marker="o", label="flagrelay")
            fl, nc = dict(s.get("floor", [])), dict(s.get("nchan", []))
            for xi, yi in zip(x, y):
                note = f"{yi:.2f} µs" + (f", {yi / fl[xi]:.2f}× floor" if fl.get(xi) else "") + \
                    (f"\nnchan {nc[xi] / yi:.2f}× flagrelay" if nc.get(xi) else "")
                # In the empty band under the floor, so that no line is hidden.
                ax.annotate(note, (xi, 0.12), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                            fontsize=7, color=COLOURS["flagrelay"])
        ax.set_title(f"{c} server core{'s' if c > 1 else ''}", fontsize=10)
        ax.set_xlabel("SSE clients (N)")
        ticks = sorted({r["clients"] for r in runs if r["cores"] == c})
        ax.set_xticks(ticks)
        pad = (ticks[-1] - ticks[0]) * 0.17 or 1
        ax.set_xlim(ticks[0] - pad, ticks[-1] + pad)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: fmt_n(int(v))))
        ax.set_ylim(0, max(r["cpu_per_delivery_us"] or 0 for r in runs) * 1.3)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", ncol=3)
    axes.flat[0].set_ylabel("server CPU µs per delivered message")
    others = [n for n in ("the floor", "nchan") if any(r["server"] == n.removeprefix("the ") for r in runs)]
    names = ["flagrelay", *others]
    fig.suptitle("CPU per delivery against N: " + ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1],
                 fontsize=10)
    footer(fig, data, 190)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def plot_rss(data: dict, dest: Path, plt) -> None:
    runs = [r for r in data["runs"] if r["server"] in ("nchan", "flagrelay")]
    cores = sorted({r["cores"] for r in runs})
    fig, ax = plt.subplots(figsize=(6.4, 3.9))
    styles = {1: "-", 2: ":"}
    for c in cores:
        for name, pts in by_server(runs, c, "rss_per_conn_kb").items():
            x, y = zip(*pts)
            ax.plot(x, y, styles.get(c, "-."), color=COLOURS[name], marker="o",
                    label=f"{name}, {c} core{'s' if c > 1 else ''}")
    for name in ("nchan", "flagrelay"):
        vals = [r["rss_per_conn_kb"] for r in runs if r["server"] == name and r.get("rss_per_conn_kb") is not None]
        if vals:
            ax.annotate(f"{name}: {min(vals):.2f}–{max(vals):.2f} KB", (max(r["clients"] for r in runs), max(vals)),
                        textcoords="offset points", xytext=(-5, 6), ha="right", fontsize=8, color=COLOURS[name])
    ax.set_xlabel("SSE clients (N)")
    ax.set_ylabel("RSS KB per connection")
    ax.set_xticks(sorted({r["clients"] for r in runs}))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: fmt_n(int(v))))
    ax.set_ylim(0, max(r["rss_per_conn_kb"] or 0 for r in runs) * 1.25)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    ax.set_title("RSS per SSE connection (VmRSS after connecting minus before, / N)", fontsize=10)
    footer(fig, data, 120)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def plot(latency: Path, cpu: Path, rss: Path, img: Path, only: list[str] | None = None, suffix: str = "") -> None:
    ensure_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    for fn, src, what in [(plot_latency, latency, "latency-cdf"), (plot_cpu, cpu, "cpu"), (plot_rss, rss, "rss")]:
        if only and what not in only:
            continue
        name = f"fanout-{what}{suffix}.png"
        fn(load(src), img / name, plt)
        print(f"{img / name} (from {src.relative_to(REPO) if src.is_relative_to(REPO) else src})", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("collect", help="a benches/fanout.sh OUT directory -> a data file")
    c.add_argument("out_dir", type=Path)
    c.add_argument("dest", type=Path)
    c.add_argument("--source", required=True, help="how the run was made (command, machine, date, commit)")
    p = sub.add_parser("plot", help="data files -> PNGs")
    p.add_argument("--latency", type=Path, default=LATENCY_DATA)
    p.add_argument("--cpu", type=Path, default=WRITER_PASS_DATA)
    p.add_argument("--rss", type=Path, default=WRITER_PASS_DATA)
    p.add_argument("--img", type=Path, default=REPO / "docs" / "img")
    p.add_argument("--only", nargs="+", choices=["latency-cdf", "cpu", "rss"], help="draw only these figures")
    p.add_argument("--suffix", default="", help="appended to the file names: fanout-cpu<SUFFIX>.png")
    a = ap.parse_args()
    if a.cmd == "collect":
        collect(a.out_dir, a.dest, a.source)
    elif a.cmd == "plot":
        plot(a.latency, a.cpu, a.rss, a.img, a.only, a.suffix)
    else:
        plot(LATENCY_DATA, WRITER_PASS_DATA, WRITER_PASS_DATA, REPO / "docs" / "img")


if __name__ == "__main__":
    main()
