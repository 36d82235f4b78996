"""Training steps on the CPU with glibc's malloc as it is and as `fer run` sets it (``fer_core.allocator``).

Each measurement is a fresh process (malloc's settings are per process): the quickstart model
(resnet10t, fused AdamW, label smoothing, batch 64 at 56 px) stepping through random batches of
normalised tensors in memory, ``--steps`` steps after ``--warmup``, timed one by one; the median
step is its figure. Processes alternate (system, tuned, tuned, system, ...) so that a machine whose
speed drifts favours neither side, and the medians over ``--repeats`` pairs are printed side by side.

    python benchmarks/allocator.py                  # 3 pairs of 40 steps
    python benchmarks/allocator.py --repeats 5 --model resnet18 --size 112

Figures from a busy machine are not quiet-machine figures: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def steps(model_name: str, size: int, batch: int, count: int, warmup: int) -> list[float]:
    import timm
    import torch
    import torch.nn.functional as F
    from timm.optim import create_optimizer_v2

    from fer_core.allocator import tune_malloc

    tune_malloc()  # a no-op under FER_MALLOC_TUNE=0
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=7, drop_rate=0.1).train()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=2e-3, weight_decay=0.05, fused=True)
    images, labels = torch.randn(4096, 3, size, size), torch.randint(0, 7, (4096,))
    times = []
    for _ in range(warmup + count):
        index = torch.randint(0, len(images), (batch,))
        started = time.perf_counter()
        loss = F.cross_entropy(model(images[index]), labels[index], label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return times[warmup:]


def measure(args, tuned: bool) -> float:
    env = {**os.environ, "FER_MALLOC_TUNE": "1" if tuned else "0"}
    command = [sys.executable, __file__, "--child", "--model", args.model, "--size", str(args.size),
               "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return statistics.median(json.loads(out))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of processes")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(steps(args.model, args.size, args.batch_size, args.steps, args.warmup)))
        return {}
    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {"system": [], "tuned": []}
    for repeat in range(args.repeats):
        for side in ("system", "tuned") if repeat % 2 == 0 else ("tuned", "system"):
            runs[side].append(measure(args, side == "tuned"))
            print(f"{side:6s} median step {1000 * runs[side][-1]:.1f} ms", flush=True)
    medians = {side: statistics.median(values) for side, values in runs.items()}
    print(f"{args.model} at {args.size} px, batch {args.batch_size}: median step over {args.repeats} pairs: "
          f"malloc as it is {1000 * medians['system']:.1f} ms, as fer run sets it {1000 * medians['tuned']:.1f} ms; "
          f"speed-up {medians['system'] / medians['tuned']:.3f}x")
    pairs = [s / t for s, t in zip(runs["system"], runs["tuned"])]
    print("per pair: " + ", ".join(f"{p:.3f}x" for p in pairs))
    after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
          f"after: {', '.join(f'{x:.2f}' for x in after)}")
    return {"runs": runs, "medians": medians, "pairs": pairs}


if __name__ == "__main__":
    main()
