"""Batched generation vs a one-item-at-a-time generate() loop, side by side on the same model.

Both use the same prompts (the demo test set), greedy decoding and the same number of new
tokens; the loop is what a quick script does (`for q in questions: model.generate(...)`).
Prints items/s for each and the ratio. Target: batched >= 3x the loop.

    python bench/eval_throughput.py [--size small] [--items 32] [--batch-size 16] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "small"], default="small")
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()

    from engine.evaluate import generate_batch, load_for_generation
    from engine.tinymodel import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "m", size=args.size)
        tok, model, device = load_for_generation(str(model_dir), None, "cpu")
        rows = [json.loads(x) for x in (ROOT / "engine" / "demo_data" / "test.jsonl").read_text().splitlines()]
        prompts = [r["question"] for r in rows][: args.items]
        generate_batch(tok, model, device, prompts[:2], 4)  # warm-up

        t = time.perf_counter()
        single = [generate_batch(tok, model, device, [p], args.max_new_tokens)[0] for p in prompts]
        loop_s = time.perf_counter() - t

        t = time.perf_counter()
        batched = []
        for i in range(0, len(prompts), args.batch_size):
            batched += generate_batch(tok, model, device, prompts[i:i + args.batch_size], args.max_new_tokens)
        batch_s = time.perf_counter() - t

    same = sum(a[0] == b[0] for a, b in zip(single, batched, strict=True))
    print(f"{len(prompts)} items, {args.size} model, greedy, max {args.max_new_tokens} new tokens, CPU "
          f"({os.cpu_count()} cores)")
    print(f"one at a time : {len(prompts) / loop_s:7.2f} items/s ({loop_s:.1f} s)")
    print(f"batched ({args.batch_size:>3}) : {len(prompts) / batch_s:7.2f} items/s ({batch_s:.1f} s)")
    ratio = loop_s / batch_s
    print(f"ratio (batched / one at a time): {ratio:.2f}x -> target (>= 3x) {'MET' if ratio >= 3 else 'NOT MET'}; "
          f"identical answers: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
