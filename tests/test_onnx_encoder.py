"""EMBEDDING_BACKEND=onnx: the real MiniLM exported to ONNX, run by the real onnxruntime."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rag_core.search.embedding import Embedder
from rag_core.search.onnx_encoder import export_key

from .conftest import offline_model_path

TEXTS = [
    "How do I create an HNSW index?",
    "hi",
    "Milvus is a vector database built for scalable similarity search. " * 12,
    "What does nlist control in IVF_FLAT, and how do I pick it for a million vectors?",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def onnx_embedder(onnx_cache: Path):
    stale = onnx_cache / "model-onnx" / "0123456789abcdef.onnx"  # an export of older files
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    embedder = Embedder(offline_model_path(), backend="onnx", onnx_cache=onnx_cache)
    assert not stale.exists()
    yield embedder
    embedder.close()


def test_onnx_vectors_match_torch_padded_or_alone(embedder, onnx_embedder) -> None:
    torch_vectors = embedder.embed_passages(TEXTS)
    batch = onnx_embedder.embed_passages(TEXTS)  # one padded batch: short texts carry padding
    alone = np.stack([onnx_embedder.embed_query(t) for t in TEXTS])
    assert batch.dtype == np.float32 and batch.shape == (len(TEXTS), embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert (batch * torch_vectors).sum(axis=1).min() > 0.9999
    assert (alone * torch_vectors).sum(axis=1).min() > 0.9999
    assert onnx_embedder.count_tokens(TEXTS[0]) == embedder.count_tokens(TEXTS[0])
    assert onnx_embedder.max_tokens == embedder.max_tokens


async def test_concurrent_onnx_queries_share_a_run(onnx_embedder) -> None:
    import asyncio

    vectors = await asyncio.gather(*(onnx_embedder.aembed_query(t) for t in TEXTS))
    alone = [onnx_embedder.embed_query(t) for t in TEXTS]
    for got, want in zip(vectors, alone, strict=True):
        assert float(got @ want) > 0.9999


def test_export_is_cached_and_stale_ones_removed(onnx_cache: Path, onnx_embedder) -> None:
    """The fixture's export replaced a stale file; the same folder and options reuse it."""
    (path,) = (onnx_cache / "model-onnx").glob("*.onnx")
    made = path.stat().st_mtime_ns
    again = Embedder(offline_model_path(), backend="onnx", onnx_cache=onnx_cache)
    again.close()
    assert path.stat().st_mtime_ns == made  # reused, not exported again


def test_export_key_follows_the_model_files_and_options(onnx_embedder, tmp_path: Path) -> None:
    folder = tmp_path / "all-MiniLM-L6-v2"
    shutil.copytree(offline_model_path(), folder, copy_function=_link_or_copy)
    model = onnx_embedder._model
    key = export_key(model, str(folder), "onnx")
    assert export_key(model, str(folder), "onnx") == key
    assert export_key(model, str(folder), "onnx-int8") != key
    config = folder / "config.json"
    text = config.read_text()
    config.unlink()  # a new file (the copy is a hard link to the package's)
    config.write_text(text + "\n")
    assert export_key(model, str(folder), "onnx") != key


def _link_or_copy(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def test_int8_vectors_stay_close_to_torch(embedder, onnx_cache: Path) -> None:
    """onnx-int8 (per-channel weights): close to torch, the same padded or alone."""
    int8 = Embedder(offline_model_path(), backend="onnx-int8", onnx_cache=onnx_cache)
    try:
        batch = int8.embed_passages(TEXTS)
        alone = np.stack([int8.embed_query(t) for t in TEXTS])
    finally:
        int8.close()
    torch_vectors = embedder.embed_passages(TEXTS)
    # Measured on 512 corpus chunks: mean 0.993, min 0.980 (per-tensor weights: min 0.81).
    assert (batch * torch_vectors).sum(axis=1).min() > 0.97
    # Activations are quantized per run: a text's vector depends a little on its batch
    # neighbours, which is why int8 encodes each question alone.
    assert (batch * alone).sum(axis=1).min() > 0.97
    assert int8.queries_per_call == 1


def test_an_xlm_roberta_model_with_cls_pooling_matches_torch(tmp_path: Path) -> None:
    """bge-m3's architecture (XLM-R, pad id 1, CLS pooling), tiny and random, exports too."""
    from .random_encoders import build_random_encoder, build_xlmr_tokenizer

    path = build_random_encoder(
        tmp_path / "bge-m3",
        arch="xlm-roberta",
        tokenizer=build_xlmr_tokenizer(max_length=512),
        hidden=48,
        layers=2,
        heads=2,
        intermediate=96,
        max_seq_length=512,
    )
    torch_embedder = Embedder(str(path), device="cpu")
    onnx_embedder = Embedder(str(path), backend="onnx", onnx_cache=tmp_path / "onnx")
    try:
        want = torch_embedder.embed_passages(TEXTS)
        got = onnx_embedder.embed_passages(TEXTS)
        alone = np.stack([onnx_embedder.embed_query(t) for t in TEXTS])
    finally:
        torch_embedder.close()
        onnx_embedder.close()
    assert (got * want).sum(axis=1).min() > 0.9999
    assert (alone * want).sum(axis=1).min() > 0.9999
