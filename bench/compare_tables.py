#!/usr/bin/env python3
"""One side-by-side table of `mixtrain bench --json` and `bench/pytorch_reference.py --json`.

Usage: python3 bench/compare_tables.py MIXTRAIN_JSON [TORCH_JSON] [--markdown]

Rows: every (workload, precision) mixtrain measured. Columns: mixtrain steady-state samples/s,
PyTorch's best samples/s for that precision (the fastest of eager and torch.compile, and which),
mixtrain / PyTorch, mixtrain's speedup over its own strict fp32, mixtrain end-to-end samples/s,
and peak device memory of both (MiB). Then BENCHMARKS.md's H200 targets for these workloads,
each marked met or not. A missing or unreadable PyTorch file leaves its columns as "-".
"""
import argparse
import json
import sys

# BENCHMARKS.md: samples/s targets (mixed precision: the better of fp16/bf16 unless named) and the
# speedup of mixed precision over mixtrain's strict fp32.
TARGETS = {
    "small_mlp": dict(precisions=("fp16",), samples_per_s=1_000_000, over_fp32=1.7),
    "large_mlp": dict(precisions=("fp16", "bf16"), samples_per_s=1_000_000, over_fp32=1.7),
    "resnet18_cifar": dict(precisions=("fp16",), samples_per_s=50_000, over_fp32=3.0),
    "gpt_small": dict(precisions=("fp16", "bf16"), samples_per_s=8_000, over_fp32=3.0),
}


def load(path, what):
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"({what}: cannot read {path}: {e})", file=sys.stderr)
        return None


def number(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mixtrain_json")
    ap.add_argument("torch_json", nargs="?")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table (BENCHMARKS.md)")
    a = ap.parse_args()

    mx = load(a.mixtrain_json, "mixtrain")
    if mx is None:
        return 1
    th = load(a.torch_json, "PyTorch")

    best = {}  # (workload, precision) -> the fastest PyTorch variant's record
    for r in (th or {}).get("results", []):
        key = (r["workload"], r["precision"])
        if key not in best or r["samples_per_s"] > best[key]["samples_per_s"]:
            best[key] = r

    header = ["workload", "precision", "mixtrain samples/s", "PyTorch best samples/s", "variant",
              "mixtrain / PyTorch", "mixtrain vs fp32", "mixtrain e2e samples/s",
              "peak MiB mixtrain", "peak MiB PyTorch", "mixtrain step"]
    rows = []
    steady = {}
    for r in mx.get("results", []):
        key = (r["workload"], r["precision"])
        sps = r["steady"]["samples_per_s"]
        steady[key] = sps
        t = best.get(key)
        ratio = sps / t["samples_per_s"] if t and t["samples_per_s"] > 0 else None
        rows.append([
            r["workload"], r["precision"], number(sps),
            number(t["samples_per_s"]) if t else "-", t["variant"] if t else "-",
            f"{ratio:.2f}x" if ratio is not None else "-",
            f"{r['speedup_vs_fp32']:.2f}x" if r.get("speedup_vs_fp32") is not None else "-",
            number(r["end_to_end"]["samples_per_s"]),
            number(r["peak_memory_bytes"] / 2**20, 1),
            number(t.get("peak_mem_mb"), 1) if t else "-",
            r.get("step", "-"),
        ])

    if a.markdown:
        print("| " + " | ".join(header) + " |")
        print("| " + " | ".join(["---"] * 2 + ["---:"] * (len(header) - 3) + ["---"]) + " |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
                  for i, h in enumerate(header)]
        line = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i < 2 or i == 4 or i == len(header) - 1 else c.rjust(w) for i, (c, w) in
            enumerate(zip(cells, widths)))
        print(line(header))
        print("  ".join("-" * w for w in widths))
        for row in rows:
            print(line(row))

    device = mx.get("device", "?")
    torch_info = f"PyTorch {th.get('torch')} on {th.get('gpu')}" if th else "no PyTorch figures"
    print(f"\nmixtrain on {device} ({mx.get('date', '?')}); {torch_info}")
    for workload, t in TARGETS.items():
        got = [(steady[(workload, p)], p) for p in t["precisions"] if (workload, p) in steady]
        if not got:
            continue
        sps, p = max(got)
        fp32 = steady.get((workload, "fp32"))
        over = sps / fp32 if fp32 else None
        ok_rate = sps >= t["samples_per_s"]
        ok_over = over is not None and over >= t["over_fp32"]
        print(f"target {workload} {p}: {sps:,.0f} samples/s (>= {t['samples_per_s']:,}: "
              f"{'met' if ok_rate else 'NOT met'}); "
              + (f"{over:.2f}x fp32 (>= {t['over_fp32']}x: {'met' if ok_over else 'NOT met'})"
                 if over is not None else "no fp32 row"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
