"""Requests per second and latency of `fer serve` under a bounded burst, beside the bare model's forward.

Starts `fer serve MODEL` on a free local port, sends a warm-up, then ``--requests`` POST
/predict requests (one face image each) from ``--concurrency`` client threads, and prints
requests per second, p50/p99 latency and the error count. Then it times the same model
in-process (the same predictor class the server uses) on the same decoded images, one
image per forward and ``--max-batch`` images per forward. With no MODEL it trains a tiny
run first (resnet10t, 32 px synthetic faces, 1 epoch); ``--onnx`` also exports it and
benchmarks the ONNX file.

    python benchmarks/serve.py [MODEL] [--requests 200] [--concurrency 16] [--threads 1] [--onnx]
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_fixtures import free_port, start_server, stop_server  # noqa: E402

from fer_core.data.pack import make_synth_dataset  # noqa: E402
from fer_core.predictor import load_predictor  # noqa: E402

RECIPE = """
name: bench-serve
seed: 0
data: {{root: {root}, image_size: 32, channels: 3, num_workers: 0}}
model: {{backbone: {{name: timm, model: resnet10t}}, head: {{name: linear}}}}
optim: {{name: adamw, lr: 3.0e-3}}
train: {{epochs: 1, batch_size: 32}}
"""


def synth_faces(work: Path, n: int = 64) -> tuple[Path, list[bytes]]:
    root = make_synth_dataset(work / "data", n=max(n * 2, 140), size=32, seed=0, progress=False, shard_size=64)
    images = []
    for shard in sorted(root.glob("**/*.tar")):
        with tarfile.open(shard) as tar:
            images += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png")]
    return root, images[:n]


def train_tiny(work: Path, root: Path) -> Path:
    from fer_core.plugins import get_registry
    from fer_core.recipe import load_recipe
    from fer_core.train import run

    (work / "bench.yaml").write_text(RECIPE.format(root=root))
    return run(load_recipe(work / "bench.yaml", registry=get_registry()), out=str(work / "runs"),
               console=Console(file=io.StringIO()))


def burst(url: str, images: list[bytes], requests: int, concurrency: int) -> dict:
    """Send ``requests`` single-image requests from ``concurrency`` threads; latencies and errors."""
    with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        def one(i: int) -> tuple[float, bool]:
            start = time.perf_counter()
            try:
                response = client.post("/predict", files={"image": (f"{i}.png", images[i % len(images)], "image/png")})
                ok = response.status_code == 200 and "label" in response.json()[0]
            except httpx.HTTPError:
                ok = False
            return time.perf_counter() - start, ok

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(2 * concurrency)))  # warm-up: connections, first forwards
            start = time.perf_counter()
            results = list(pool.map(one, range(requests)))
            elapsed = time.perf_counter() - start
        served = client.get("/info").json()["served"]
    latencies = sorted(t for t, _ in results)
    return {"rps": requests / elapsed, "p50": 1000 * latencies[len(latencies) // 2],
            "p99": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "errors": sum(not ok for _, ok in results), "mean_batch": served["images"] / max(1, served["batches"])}


def forward_throughput(model: Path, images: list[bytes], batch: int, total: int, threads: int) -> float:
    """Images per second of the bare predictor (decode excluded) on the same images and threads."""
    predictor = load_predictor(model, threads=threads)
    decoded = np.stack([predictor.decode(data) for data in images])
    batches = [decoded[np.arange(i, i + batch) % len(decoded)] for i in range(0, total, batch)]
    predictor.predict(batches[0])  # warm-up
    start = time.perf_counter()
    for x in batches:
        predictor.predict(x)
    return len(batches) * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="run directory, checkpoint or .onnx file [default: train a tiny run]")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per forward, server and bare alike")
    parser.add_argument("--onnx", action="store_true", help="also export the model and benchmark the ONNX file")
    args = parser.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory(prefix="fer-bench-serve-") as tmp:
        work = Path(tmp)
        root, images = synth_faces(work)
        models = [Path(args.model) if args.model else train_tiny(work, root)]
        if args.onnx and models[0].suffix != ".onnx":
            from fer_core.export import export_onnx

            models.append(export_onnx(models[0], work / "model.onnx"))

        table = Table(title=f"fer serve: {args.requests} requests, {args.concurrency} concurrent, one image each "
                            f"(max batch {args.max_batch}, max wait {args.max_wait_ms} ms, {args.threads} thread(s))")
        for column in ("model", "served req/s", "p50 ms", "p99 ms", "errors", "mean batch",
                       "bare img/s b=1", f"bare img/s b={args.max_batch}"):
            table.add_column(column, justify="right")
        for model in models:
            port = free_port()
            proc = start_server(model, port, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                                "--threads", str(args.threads))
            try:
                served = burst(f"http://127.0.0.1:{port}", images, args.requests, args.concurrency)
            finally:
                stop_server(proc)
            single = forward_throughput(model, images, 1, args.requests, args.threads)
            batched = forward_throughput(model, images, args.max_batch, 4 * args.requests, args.threads)
            kind = "onnx" if model.suffix == ".onnx" else "pytorch"
            table.add_row(f"{kind}", f"{served['rps']:.1f}", f"{served['p50']:.1f}", f"{served['p99']:.1f}",
                          str(served["errors"]), f"{served['mean_batch']:.1f}", f"{single:.1f}", f"{batched:.1f}")
            if served["errors"]:
                console.print(f"[red]{served['errors']} of {args.requests} requests failed[/]")
        console.print(table)


if __name__ == "__main__":
    main()
