"""Builds lc2d's default algorithm table (csrc/lc2d_selection.cpp, between its BEGIN/END markers) from
measured per-pass times.

Sources, each a bench_lc2d.py JSON:
  * runs with ``--algorithm all``: rows carry ``algo_ms`` (every algorithm, forced), or runs with one algorithm
    forced (--algorithm NAME or BIOPLAUS_LC2D_ALGORITHM, recorded in settings.selection.forced); the winner of a (device, pass,
    shape class, dtype) is the algorithm with the smallest geometric mean of time over the best time of each
    shape in the class;
    A ``--tf32`` run fills the "tfloat32" rows (float32 calls while TF32 matmuls are allowed).
  * ``--baseline-proxy FILE``: a run from before the library algorithm existed, whose unfold+bmm baseline
    (the same batched GEMMs, plus an unfold and without chunking) stands in for "library" and whose
    "ours" is "fused". The table says which rows come from a proxy.

    python benchmarks/lc2d_selection_table.py RESULT.json [RESULT.json ...] [--baseline-proxy OLD.json ...]
    python benchmarks/lc2d_selection_table.py --check   # exit 1 if the C++ table is not what the sources give
    python benchmarks/lc2d_selection_table.py --print RESULT.json   # the table those results make, written nowhere

The sources of the committed table are listed in benchmarks/results/lc2d-selection-sources.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from typing import Dict, Iterable, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPP = os.path.join(ROOT, "csrc", "lc2d_selection.cpp")
SOURCES = os.path.join(ROOT, "benchmarks", "results", "lc2d-selection-sources.json")
BEGIN = "// BEGIN default table"
END = "// END default table"
PASSES = {"fwd": "forward", "dgrad": "backward_input", "wgrad": "backward_weight"}


def shape_class(K: int, kernel: Tuple[int, int], stride: Tuple[int, int]) -> str:
    """The C++ lc2d_shape_class, for a shape of a bench_lc2d JSON."""
    size = "small" if K <= 32 else "mid" if K <= 512 else "large"
    overlap = "high" if kernel[0] * kernel[1] > 3 * stride[0] * stride[1] else "low"
    return f"{size}-{overlap}"


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def timings(path: str, proxy: bool) -> Iterable[Tuple[str, str, str, str, str, float, str]]:
    """(device, pass, class, dtype, algorithm, ms, shape) for every per-pass row of one result."""
    with open(path) as f:
        result = json.load(f)
    device = result["settings"]["device"]
    tf32 = result["settings"].get("tf32", False)
    forced = (result["settings"].get("selection") or {}).get("forced") or {}
    shapes = {s["name"]: s for s in result["shapes"]}
    for row in result["rows"]:
        if row["pass"] not in PASSES:
            continue
        s = shapes[row["shape"]]
        cls = shape_class(s["K"], _pair(s["kernel"]), _pair(s["stride"]))
        key = (device, PASSES[row["pass"]], cls, "tfloat32" if tf32 else row["dtype"])
        if proxy:
            yield (*key, "fused", row["ours_ms"], row["shape"])
            if row.get("base_ms"):
                yield (*key, "library", row["base_ms"], row["shape"])
        elif row.get("algo_ms"):
            for algo, ms in row["algo_ms"].items():
                yield (*key, algo, ms, row["shape"])
        elif forced.get(PASSES[row["pass"]]):  # a run with one algorithm forced: its "ours" is that algorithm
            yield (*key, forced[PASSES[row["pass"]]], row["ours_ms"], row["shape"])


def winners(sources: List[Dict]) -> List[Tuple[str, str, str, str, str, str]]:
    """Rows (device, pass, class, dtype, algorithm, provenance) of the table, sorted."""
    times: Dict[tuple, Dict[str, Dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    provenance: Dict[tuple, str] = {}
    for src in sources:
        proxy = src.get("proxy", False)
        for dev, pass_, cls, dtype, algo, ms, shape in timings(os.path.join(ROOT, src["path"]), proxy):
            key = (dev, pass_, cls, dtype)
            # A measurement of both algorithms replaces a proxy for the same key.
            if key in provenance and provenance[key] == "proxy" and not proxy:
                times[key].clear()
            if key in provenance and provenance[key] == "measured" and proxy:
                continue
            provenance[key] = "proxy" if proxy else "measured"
            times[key][shape][algo] = ms
    rows = []
    for key, per_shape in times.items():
        score: Dict[str, List[float]] = defaultdict(list)
        for algos in per_shape.values():
            best = min(algos.values())
            for algo, ms in algos.items():
                score[algo].append(math.log(ms / best))
        complete = {a: v for a, v in score.items() if len(v) == len(per_shape)}
        algo = min(sorted(complete), key=lambda a: sum(complete[a]) / len(complete[a]))
        rows.append((*key, algo, provenance[key]))
    return sorted(rows)


def render(rows) -> str:
    lines = [BEGIN + ": written by benchmarks/lc2d_selection_table.py from its JSON sources; do not edit.",
             "constexpr TableRow kDefaultTable[] = {"]
    for dev, pass_, cls, dtype, algo, prov in rows:
        lines.append(f'    {{"{dev}", "{pass_}", "{cls}", "{dtype}", "{algo}"}},  // {prov}')
    if not rows:
        lines.append('    {"", "", "", "", ""},  // no measurements: every call takes the first candidate')
    lines += ["};", END]
    return "\n".join(lines)


def splice(text: str, block: str) -> str:
    start = text.index(BEGIN)
    stop = text.index(END) + len(END)
    return text[:start] + block + text[stop:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="*", help="bench_lc2d.py JSON files with --algorithm all rows")
    ap.add_argument("--baseline-proxy", nargs="*", default=[], help="older bench_lc2d.py JSON files (see above)")
    ap.add_argument("--check", action="store_true", help="compare the C++ table with the committed sources")
    ap.add_argument("--print", action="store_true", help="print the table the given results make; write nothing")
    args = ap.parse_args(argv)
    if args.check:
        with open(SOURCES) as f:
            sources = json.load(f)["sources"]
    else:
        sources = ([{"path": os.path.relpath(os.path.abspath(p), ROOT), "proxy": True} for p in args.baseline_proxy]
                   + [{"path": os.path.relpath(os.path.abspath(p), ROOT)} for p in args.results])
    if args.print:
        print(render(winners(sources)))
        return 0
    with open(CPP) as f:
        text = f.read()
    new = splice(text, render(winners(sources)))
    if args.check:
        if new != text:
            print(f"{CPP}: the default table differs from what {SOURCES} gives; rerun this script", file=sys.stderr)
            return 1
        return 0
    with open(CPP, "w") as f:
        f.write(new)
    with open(SOURCES, "w") as f:
        json.dump({"sources": sources}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(winners(sources))} rows to {os.path.relpath(CPP, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
