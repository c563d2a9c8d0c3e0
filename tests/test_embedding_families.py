"""Model families: bge-m3 (multilingual, 8192-token window, no query instruction) vs BGE English.

No bge-m3 weights can be had offline: a random-weight XLM-RoBERTa encoder with its window and an
XLM-R-style tokenizer stands in (tests/random_encoders.py). Nothing here depends on the weights:
the instruction, the window, the vector size and the index round trip do not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from rag_core.config import Settings
from rag_core.ingest.chunking import Chunker
from rag_core.ingest.sources import load_folder
from rag_core.runtime import open_rag
from rag_core.search.embedding import Embedder, model_family

from .conftest import FIXTURES, offline_model_path
from .random_encoders import build_random_encoder, build_xlmr_tokenizer

BGE_EN_INSTRUCTION = "Represent this sentence for searching relevant passages: "
QUESTION = "Come si configura il livello di log di Milvus?"
M3_DIM = 48  # the stand-in's hidden size: the vector size must come from the model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoders")


@pytest.fixture(scope="module")
def m3_path(models_dir: Path) -> str:
    """bge-m3's family and window (XLM-R, 8192 tokens), tiny and random: named like the model."""
    path = build_random_encoder(
        models_dir / "bge-m3",
        arch="xlm-roberta",
        tokenizer=build_xlmr_tokenizer(max_length=8192),
        hidden=M3_DIM,
        layers=2,
        heads=2,
        intermediate=96,
        max_seq_length=8192,
    )
    return str(path)


@pytest.fixture(scope="module")
def m3(m3_path: str) -> Iterator[Embedder]:
    embedder = Embedder(m3_path, device="cpu")
    yield embedder
    embedder.close()


def test_families_by_model_name() -> None:
    assert model_family("BAAI/bge-m3").name == "bge-m3"
    assert model_family("/models/bge-m3/").multilingual
    assert model_family("BAAI/bge-m3").query_prefix == ""
    assert model_family("BAAI/bge-base-en-v1.5").query_prefix == BGE_EN_INSTRUCTION
    assert not model_family("BAAI/bge-base-en-v1.5").multilingual
    e5 = model_family("intfloat/multilingual-e5-large")
    assert (e5.query_prefix, e5.passage_prefix, e5.multilingual) == ("query: ", "passage: ", True)
    plain = model_family(offline_model_path())
    assert (plain.name, plain.query_prefix, plain.multilingual) == ("plain", "", False)


def test_bge_m3_queries_carry_no_instruction(m3: Embedder, m3_path: str) -> None:
    direct = SentenceTransformer(m3_path, device="cpu")
    plain, instructed = direct.encode(
        [QUESTION, BGE_EN_INSTRUCTION + QUESTION], normalize_embeddings=True
    )
    vector = m3.embed_query(QUESTION)
    np.testing.assert_allclose(vector, plain, atol=1e-5)
    # The instruction would move the vector: the comparison above can tell them apart.
    assert float(vector @ instructed) < 0.999
    np.testing.assert_allclose(m3.embed_passages([QUESTION])[0], plain, atol=1e-5)


def test_a_bge_english_model_of_the_same_kind_gets_the_instruction(models_dir: Path) -> None:
    from transformers import AutoTokenizer

    path = build_random_encoder(
        models_dir / "bge-small-en-v1.5",
        arch="bert",
        tokenizer=AutoTokenizer.from_pretrained(offline_model_path()),
        hidden=32,
        layers=1,
        heads=2,
        intermediate=64,
        max_seq_length=512,
    )
    embedder = Embedder(str(path), device="cpu")
    try:
        expected = SentenceTransformer(str(path), device="cpu").encode(
            BGE_EN_INSTRUCTION + QUESTION, normalize_embeddings=True
        )
        np.testing.assert_allclose(embedder.embed_query(QUESTION), expected, atol=1e-5)
        assert embedder.max_tokens == 512
    finally:
        embedder.close()


def test_the_8192_token_window_is_read_and_used(m3: Embedder) -> None:
    assert m3.dim == M3_DIM
    assert m3.max_tokens == 8192
    head = " ".join(f"segment{i} index replica" for i in range(200))
    assert m3.count_tokens(head) > 600
    # Two passages alike for their first 600+ tokens: a 512-token model would cut the
    # difference off and embed them alike; bge-m3 reads the whole passage.
    pair = [head + " alpha" * 300, head + " omega" * 300]
    a, b = m3.embed_passages(pair)
    assert float(a @ b) < 0.999
    m3._model.max_seq_length = 512  # what a 512-token window would do to the same pair
    try:
        a, b = m3.embed_passages(pair)
        assert float(a @ b) == pytest.approx(1.0, abs=1e-6)
    finally:
        m3._model.max_seq_length = 8192

    doc = next(
        d
        for d in load_folder(FIXTURES / "milvus-docs", "docs", "https://milvus.io/docs/", 10**7)
        if hasattr(d, "text") and len(d.text) > 8000  # type: ignore[union-attr]
    )
    long_chunks = Chunker(
        m3.count_tokens, max_tokens=m3.max_tokens, chunk_tokens=1024, overlap_tokens=64
    )
    sizes = [m3.count_tokens(c.embed_text) for c in long_chunks.split(doc)]  # type: ignore[arg-type]
    assert max(sizes) > 600, sizes  # past BERT's 512 and MiniLM's 256
    assert max(sizes) <= 1024, sizes


async def test_index_and_search_round_trip_through_milvus_lite(
    m3: Embedder, m3_path: str, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        embedding_model=m3_path,
        embedding_device="cpu",
        docs_base_url="https://milvus.io/docs/",
        chunk_tokens=768,
        chunk_overlap_tokens=32,
    )
    async with open_rag(settings, embedder=m3) as rag:
        report = await rag.indexer.run([str(FIXTURES / "milvus-docs")])
        assert report.published and not report.failed
        live = rag.store.live()
        assert live is not None and live.dim == M3_DIM and live.model == m3_path
        # A stored chunk's own vector finds that chunk first, at cosine ~1.
        doc = next(
            d
            for d in load_folder(FIXTURES / "milvus-docs", "d", "https://milvus.io/docs/", 10**7)
            if hasattr(d, "text")
        )
        chunk = rag.indexer.chunker.split(doc)[0]  # type: ignore[arg-type]
        vector = m3.embed_passages([chunk.embed_text])[0]
        hits = rag.store.search(vector, "", top_k=3, mode="dense")
        assert hits[0].chunk_id == chunk.chunk_id
        assert hits[0].similarity == pytest.approx(1.0, abs=1e-3)
        # And a question goes through the whole retriever (hybrid: dense + BM25).
        retrieval = await rag.retriever.retrieve(QUESTION)
        assert retrieval.hits and all(-1.0 <= h.similarity <= 1.0 for h in retrieval.hits)
