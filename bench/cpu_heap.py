"""A CPU training step with the C heap `rounds train` gives it (engine.heap: freed memory kept for
reuse) against glibc's defaults (``ROUNDS_MALLOC=system``: every block over 32 MiB a fresh mmap), side
by side on this machine.

Each point is a real TRL step through the same code `rounds train` uses (bench/plan_accuracy.py's
``--one``), in a fresh process for each heap, the two heaps taking turns, ``--rounds`` times; a
point's time for a heap is its fastest round (each round's figure is already its fastest untracked
step: another process's work only ever makes a step slower). It prints the seconds per step, the
ratio (glibc's defaults / reuse: above 1, reuse is faster), the peak resident growth of both and the
live tensor bytes of both (which must be the same: the heap changes where memory comes from, not
how much the step holds).

    python bench/cpu_heap.py [--rounds 2] [--shapes bigvocab,llama3v,...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import plan_accuracy as pa  # noqa: E402

# large tensors (a 32,000-token vocabulary's logits; a long sequence's MLP activations), 4-bit layers,
# and a model whose every tensor is small (where the heap should not matter)
POINTS = [
    {"shape": "bigvocab", "stage": "sft", "plan": "lora", "seq": 256, "batch": 2},
    {"shape": "bigvocab", "stage": "dpo", "plan": "qlora", "precompute_ref": True, "seq": 256, "batch": 2},
    {"shape": "llama3v", "stage": "dpo", "plan": "lora", "seq": 256, "batch": 2},
    {"shape": "llama3v", "stage": "sft", "plan": "full", "seq": 256, "batch": 2},
    {"shape": "gpt2", "stage": "sft", "plan": "lora", "seq": 1024, "batch": 2},
    {"shape": "llama3", "stage": "dpo", "plan": "qlora", "precompute_ref": True, "seq": 256, "batch": 2},
    {"shape": "tiny", "stage": "sft", "plan": "full", "seq": 256, "batch": 2},
]
HEAPS = {"reuse": {}, "system": {"ROUNDS_MALLOC": "system"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per point and heap (default 2)")
    ap.add_argument("--steps", type=int, default=4, help="steps timed in each process (after 3 tracked)")
    ap.add_argument("--shapes", help="only the points of these shapes, comma-separated")
    args = ap.parse_args()
    if args.rounds < 1 or args.steps < 1:
        ap.error("--rounds and --steps take a whole number of at least 1")
    points = [p for p in POINTS if not args.shapes or p["shape"] in args.shapes.split(",")]
    if not points:
        ap.error(f"--shapes: none of {args.shapes!r} is among " + ",".join(sorted({p['shape'] for p in POINTS})))
    print(f"CPU ({os.cpu_count()} cores): {len(points)} points, each {args.rounds} times with each heap, "
          "taking turns, every run a fresh process")
    print(f"{'point':<36}{'reuse s':>9}{'glibc s':>9}{'ratio':>7}{'RSS grow reuse':>16}{'glibc':>8}"
          f"{'live reuse':>12}{'glibc':>8}")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = pa.build_shapes(tmp, sorted({p["shape"] for p in points}))
        for p in points:
            model = models[p["shape"]]
            data = tmp / f"data-{p['shape']}-{p['stage']}-{p['seq']}.jsonl"
            rows = pa.make_rows(model, p["stage"], p["seq"], n=p["batch"] * (args.steps + pa.MEMORY_STEPS + 1))
            data.write_text("".join(json.dumps(r) + "\n" for r in rows))
            runs: dict[str, list[dict]] = {h: [] for h in HEAPS}
            for _ in range(args.rounds):
                for heap, env in HEAPS.items():
                    proc = subprocess.run([sys.executable, pa.__file__, "--one", json.dumps(p), "--model", str(model),
                                           "--data", str(data), "--steps", str(args.steps)],
                                          capture_output=True, text=True, env={**os.environ, **env})
                    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                    if line is None:
                        sys.exit(f"{p}: the step failed with heap {heap}:\n{proc.stderr[-1500:]}")
                    runs[heap].append(json.loads(line[7:]))
            fast = {h: min(r["seconds_per_step"] for r in rs) for h, rs in runs.items()}
            grow = {h: max(r["rss_growth"] for r in rs) / 2**20 for h, rs in runs.items()}
            live = {h: rs[0]["measured"] / 2**20 for h, rs in runs.items()}
            ratio = fast["system"] / fast["reuse"]
            ratios.append(ratio)
            label = (f"{p['shape']} {p['stage']} {p['plan']}{'+pre' if p.get('precompute_ref') else ''} "
                     f"s{p['seq']} b{p['batch']}")
            print(f"{label:<36}{fast['reuse']:>9.3f}{fast['system']:>9.3f}{ratio:>6.2f}x"
                  f"{grow['reuse']:>13.0f}MiB{grow['system']:>5.0f}MiB{live['reuse']:>9.0f}MiB{live['system']:>5.0f}MiB",
                  flush=True)
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"step time, glibc's defaults / reuse: geometric mean {geo:.2f}x, from {min(ratios):.2f}x to "
          f"{max(ratios):.2f}x (above 1: reuse is faster)")


if __name__ == "__main__":
    main()
