"""Print the README's Markdown table of a bench_lc2d.py result (full-step rows), so the README is generated
from the committed JSON, never typed: python3 benchmarks/readme_table.py benchmarks/results/<file>.json"""
import json
import sys


def main(path: str) -> None:
    d = json.load(open(path))
    print("| shape | step ms ours / unfold+bmm | step speedup | peak MB ours / base (need) | memory ratio |")
    print("|---|---|---|---|---|")
    for r in d["rows"]:
        if r["pass"] != "step":
            continue
        print(f"| {r['shape']} {r['geometry']} | {r['ours_ms']:.3g} / {r['base_ms']:.3g} | {r['speedup']:.2f} | "
              f"{r['ours_peak_mb']:.1f} / {r['base_peak_mb']:.1f} ({r['need_mb']:.1f}) | {r['mem_ratio']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
