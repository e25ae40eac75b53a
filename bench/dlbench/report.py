"""Turn the measured rows into Markdown: limits, one table per (destination, source), the
cost of verification, and the targets of issue 3 with met / missed.

Medians over repetitions for time and CPU; the largest peak RSS seen in any repetition.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

Row = Mapping[str, object]
ENGINE = "localmodel"
NOVERIFY = "localmodel --verify none"
PEERS = ("kserve-storage", "s5cmd", "snapshot_download")
#: (peer, the least engine/peer speed ratio asked for)
PEER_TARGETS = (("kserve-storage", 3.0), ("s5cmd", 1.0), ("snapshot_download", 1.0))
LIMIT_TARGET = 0.9
RSS_TARGET = 300 * 2**20
VERIFY_TARGET = 0.10


class Summary:
    """Medians of one (destination, source, tool) over its repetitions."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.runs = len(rows)
        self.bytes = int(rows[0]["bytes"])  # type: ignore[call-overload]
        self.wall = statistics.median(float(r["wall"]) for r in rows)  # type: ignore[arg-type]
        self.exit_wall = statistics.median(float(r["exit_wall"]) for r in rows)  # type: ignore[arg-type]
        self.cpu = statistics.median(float(r["cpu"]) for r in rows)  # type: ignore[arg-type]
        self.server_cpu = statistics.median(float(r["server_cpu"]) for r in rows)  # type: ignore[arg-type]
        self.peak_rss = max(int(r["peak_rss"]) for r in rows)  # type: ignore[call-overload]
        self.walls = sorted(float(r["wall"]) for r in rows)  # type: ignore[arg-type]
        self.failed = any(r["problems"] for r in rows)

    @property
    def gbps(self) -> float:
        return self.bytes / self.wall / 1e9

    @property
    def cpu_per_gb(self) -> float:
        return self.cpu / (self.bytes / 1e9)

    @property
    def server_cpu_per_gb(self) -> float:
        return self.server_cpu / (self.bytes / 1e9)


def summarize(rows: Iterable[Row]) -> dict[tuple[str, str, str], Summary]:
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(str(row["dest"]), str(row["source"]), str(row["tool"]))].append(row)
    return {key: Summary(group) for key, group in groups.items()}


def limits(summary: Mapping[tuple[str, str, str], Summary]) -> tuple[dict[str, float],
                                                                    dict[str, float]]:
    """Best read rate per source (GB/s) and write rate per destination."""
    read: dict[str, float] = {}
    write: dict[str, float] = {}
    for (dest, source, tool), item in summary.items():
        if tool.startswith("limit: read"):
            read[source] = max(read.get(source, 0.0), item.gbps)
        elif tool == "limit: write":
            write[dest] = item.gbps
    return read, write


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def render(meta: Mapping[str, object], rows: Sequence[Row]) -> str:
    summary = summarize(rows)
    read, write = limits(summary)
    loads = [float(r["load"]) for r in rows]  # type: ignore[arg-type]
    out = [f"## Run {meta['stamp']}", "",
           f"`{meta['command']}`", "",
           f"Model: {meta['model_files']} files, {int(meta['model_bytes']) / 1e9:.2f} GB "  # type: ignore[call-overload]
           f"({meta['shards']} shards of {int(meta['shard_bytes']) / 2**30:.3g} GiB); "  # type: ignore[call-overload]
           + (f"{meta['cpus']} CPUs, every client pinned to CPU {str(meta['pin']).split(',')[0]} and "
              f"every server to CPU {str(meta['pin']).split(',')[-1]}; "
              if meta.get("pin", "none") != "none" else f"{meta['cpus']} CPUs shared by client and servers; ")
           + f"kernel {meta['kernel']}; "
           f"Python {meta['python']}; medians of {meta['runs']} runs. "
           f"1-minute load average before each run: {min(loads, default=0):.2f}–"
           f"{max(loads, default=0):.2f} (median {statistics.median(loads) if loads else 0:.2f}).",
           ""]
    out += _limits_table(summary, read, write)
    dests = sorted({d for d, _, _ in summary if d != "-"}, key=lambda d: (d != "shm", d))
    sources = [s for s in ("http", "s3", "s3-etag", "hf", "http-cap") if any(k[1] == s for k in summary)]
    for dest in dests:
        for source in sources:
            tools = [(t, item) for (d, s, t), item in summary.items() if d == dest and s == source]
            if not tools:
                continue
            limit = min(read.get(source, float("inf")), write.get(dest, float("inf")))
            out += _tool_table(dest, source, tools, limit if limit != float("inf") else None)
    out += _pinned_table(summary, dests, sources)
    out += _verification_table(summary, dests, sources)
    out += _targets_table(summary, read, write, dests, sources)
    out += _issue14_targets(summary, read, dests)
    failed = [f"{k}" for k, item in summary.items() if item.failed]
    if failed:
        out += ["", f"**Failed runs** (see the log): {', '.join(failed)}", ""]
    return "\n".join(out) + "\n"


def _limits_table(summary: Mapping[tuple[str, str, str], Summary], read: Mapping[str, float],
                  write: Mapping[str, float]) -> list[str]:
    lines = ["### Machine limits", "",
             "| limit | GB/s | CPU-s/GB (client) | CPU-s/GB (server) |", "|---|---|---|---|"]
    for (dest, source, tool), item in sorted(summary.items()):
        if tool.startswith("limit"):
            where = f"{source} → /dev/null" if dest == "-" else f"→ {dest}"
            lines.append(f"| {tool}, {where} | {item.gbps:.2f} | {item.cpu_per_gb:.2f} | "
                         f"{item.server_cpu_per_gb:.2f} |")
    lines.append("")
    return lines


def _tool_table(dest: str, source: str, tools: Sequence[tuple[str, Summary]],
                limit: float | None) -> list[str]:
    peers = {name: item for name, item in tools if name in PEERS}
    header = ["tool", "wall s" + (" (+flush)" if dest == "disk" else ""), "GB/s", "× limit"]
    header += [f"× {name}" for name in peers]
    header += ["CPU-s/GB client", "CPU-s/GB server", "peak RSS MiB"]
    lines = [f"### {source} → {dest}" + (f" (limit {limit:.2f} GB/s)" if limit else ""), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, item in tools:
        if name.startswith("limit"):
            continue
        cells = [("**" + name + "**") if name == ENGINE else name,
                 f"{item.wall:.2f}" + (f" ({item.exit_wall:.2f} exit)" if dest == "disk" else ""),
                 f"{item.gbps:.2f}", _ratio(item.gbps / limit if limit else None)]
        cells += [_ratio(item.gbps / peer.gbps) for peer in peers.values()]
        cells += [f"{item.cpu_per_gb:.2f}", f"{item.server_cpu_per_gb:.2f}",
                  f"{item.peak_rss / 2**20:.0f}"]
        if item.failed:
            cells[0] += " (FAILED)"
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _pinned_table(summary: Mapping[tuple[str, str, str], Summary], dests: Sequence[str],
                  sources: Sequence[str]) -> list[str]:
    """Every download tool side by side: what a node's one core gets from each."""
    lines = ["### Every tool, same run (medians; client CPU-s/GB is what caps a node)", "",
             "| destination | source | tool | wall s | GB/s | client CPU-s/GB | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for dest in dests:
        for source in sources:
            for (d, s, tool), item in sorted(summary.items()):
                if d != dest or s != source or tool.startswith("limit"):
                    continue
                name = f"**{tool}**" if tool == ENGINE else tool
                lines.append(f"| {dest} | {source} | {name}{' (FAILED)' if item.failed else ''} | "
                             f"{item.wall:.2f} | {item.gbps:.2f} | {item.cpu_per_gb:.2f} | "
                             f"{item.peak_rss / 2**20:.0f} |")
    lines.append("")
    return lines


def _issue14_targets(summary: Mapping[tuple[str, str, str], Summary], read: Mapping[str, float],
                     dests: Sequence[str]) -> list[str]:
    """Issue 14: verification at the CPU cost of none."""
    lines = ["### Targets of issue 14 (localmodel verified, medians)", "",
             "| destination | target | measured | |", "|---|---|---|---|"]

    def row(dest: str, target: str, measured: str, ok: bool) -> None:
        lines.append(f"| {dest} | {target} | {measured} | {'✅' if ok else '❌'} |")

    for dest in dests:
        engine, s5cmd = summary.get((dest, "s3", ENGINE)), summary.get((dest, "s3", "s5cmd"))
        if engine and s5cmd:
            row(dest, "S3 (CRC64NVME) ≥ 1.0 × s5cmd GB/s", f"{engine.gbps / s5cmd.gbps:.2f}×",
                engine.gbps >= s5cmd.gbps)
        if engine:
            row(dest, "S3 ≤ 0.75 CPU-s/GB", f"{engine.cpu_per_gb:.2f}", engine.cpu_per_gb <= 0.75)
        http = summary.get((dest, "http", ENGINE))
        if http:
            row(dest, "HTTP (BLAKE3 for the manifest) ≤ 1.0 CPU-s/GB", f"{http.cpu_per_gb:.2f}",
                http.cpu_per_gb <= 1.0)
        hf, hub = summary.get((dest, "hf", ENGINE)), summary.get((dest, "hf", "snapshot_download"))
        if hf and hub:
            row(dest, "HF ≥ 2 × snapshot_download", f"{hf.gbps / hub.gbps:.2f}×", hf.gbps >= 2 * hub.gbps)
        cap, cap_none = summary.get((dest, "http-cap", ENGINE)), summary.get((dest, "http-cap", NOVERIFY))
        if cap and "http-cap" in read:
            row(dest, "http-cap ≥ 1.0 × limit", f"{cap.gbps / read['http-cap']:.2f}×",
                cap.gbps >= read["http-cap"])
        if cap and cap_none:
            extra = (cap.wall - cap_none.wall) / cap_none.wall
            row(dest, "http-cap verification ≤ +5 % wall", f"{extra * 100:+.1f} %", extra <= 0.05)
        worst = max((item.peak_rss for (d, _, t), item in summary.items() if d == dest and t == ENGINE),
                    default=None)
        if worst is not None:
            row(dest, "RSS ≤ 300 MiB", f"{worst / 2**20:.0f} MiB", worst <= RSS_TARGET)
    lines.append("")
    return lines


def _verification_table(summary: Mapping[tuple[str, str, str], Summary], dests: Sequence[str],
                        sources: Sequence[str]) -> list[str]:
    lines = ["### Cost of verification (localmodel, same run)", "",
             "| destination | source | variant | wall s | CPU-s/GB | extra wall vs `--verify none` |",
             "|---|---|---|---|---|---|"]
    for dest in dests:
        for source in sources:
            base = summary.get((dest, source, NOVERIFY))
            for (d, s, tool), item in summary.items():
                if d != dest or s != source or not tool.startswith(ENGINE):
                    continue
                extra = "–"
                if base is not None and "--verify none" not in tool:
                    extra = f"{(item.wall - base.wall) / item.wall:+.0%} of wall"
                lines.append(f"| {dest} | {source} | `{tool}` | {item.wall:.2f} | "
                             f"{item.cpu_per_gb:.2f} | {extra} |")
    lines.append("")
    return lines


def _targets_table(summary: Mapping[tuple[str, str, str], Summary], read: Mapping[str, float],
                   write: Mapping[str, float], dests: Sequence[str],
                   sources: Sequence[str]) -> list[str]:
    lines = ["### Targets (localmodel as shipped: `--verify full`)", "",
             "| destination | source | ≥ 0.9 × limit | ≥ 3 × kserve-storage | ≥ 1 × s5cmd | "
             "≥ 1 × snapshot_download | RSS ≤ 300 MiB | verification ≤ 10 % |",
             "|---|---|---|---|---|---|---|---|"]

    def verdict(value: float, ok: bool, fmt: str) -> str:
        return f"{fmt.format(value)} {'✅' if ok else '❌'}"

    for dest in dests:
        for source in sources:
            engine = summary.get((dest, source, ENGINE))
            if engine is None:
                continue
            cells = [dest, source]
            limit = min(read.get(source, float("inf")), write.get(dest, float("inf")))
            cells.append(verdict(engine.gbps / limit, engine.gbps / limit >= LIMIT_TARGET,
                                 "{:.2f}×") if limit != float("inf") else "–")
            for peer, target in PEER_TARGETS:
                other = summary.get((dest, source, peer))
                cells.append(verdict(engine.gbps / other.gbps, engine.gbps / other.gbps >= target,
                                     "{:.2f}×") if other else "–")
            cells.append(verdict(engine.peak_rss / 2**20, engine.peak_rss <= RSS_TARGET,
                                 "{:.0f} MiB"))
            base = summary.get((dest, source, NOVERIFY))
            if base is not None:
                cost = (engine.wall - base.wall) / engine.wall
                cells.append(verdict(cost * 100, cost <= VERIFY_TARGET, "{:+.0f} %"))
            else:
                cells.append("–")
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines
