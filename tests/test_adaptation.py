"""Adapting the embedding model to the docs (`python -m rag_core models adapt`), real MiniLM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from rag_core.__main__ import main
from rag_core.models.adaptation import adapted_folder, section_pairs
from rag_core.runtime import open_rag
from rag_core.search.embedding import Embedder, model_family

from .conftest import offline_model_path


def test_sections_are_grouped_by_title_and_heading_path() -> None:
    rows = [
        {"title": "MMap", "heading_path": "Configure", "text": "first"},
        {"title": "MMap", "heading_path": "Configure", "text": "second"},
        {"title": "MMap", "heading_path": "", "text": "intro"},
        {"title": "", "heading_path": "", "text": "no label: not a pair"},
        {"title": "Empty", "heading_path": "", "text": "  "},
    ]
    assert section_pairs(rows) == {"MMap > Configure": ["first", "second"], "MMap": ["intro"]}


def test_the_adapted_folder_keeps_the_base_models_family(tmp_path: Path) -> None:
    folder = adapted_folder(tmp_path, "BAAI/bge-base-en-v1.5")
    assert folder == tmp_path / "models" / "bge-base-en-v1.5-adapted"
    assert model_family(str(folder)).query_prefix  # still gets BGE's query instruction


def _mrr(embedder: Embedder, sections: dict[str, list[str]]) -> float:
    """How well each section's label ranks its own texts first among all sections' texts."""
    labels = sorted(sections)
    texts = [t for label in labels for t in sections[label]]
    owner = np.array([i for i, label in enumerate(labels) for _ in sections[label]])
    passages = embedder.embed_passages(texts)
    total = 0.0
    for i, label in enumerate(labels):
        scores = passages @ embedder.embed_query(label)
        best_own = scores[owner == i].max()
        total += 1.0 / (1 + int((scores[owner != i] > best_own).sum()))
    return total / len(labels)


async def test_adapting_teaches_the_model_which_text_each_section_heading_names(
    indexed_settings, embedder, tmp_path: Path, capsys
) -> None:
    dest = tmp_path / "adapted"
    args = ["--data-dir", str(indexed_settings.data_dir), "--embedding-device", "cpu"]
    args += ["--embedding-model", offline_model_path(), "--dir", str(dest), "--epochs", "1"]
    assert await asyncio.to_thread(main, ["models", "adapt", *args]) == 0
    out = capsys.readouterr()
    assert str(dest.resolve()) in out.out and "EMBEDDING_MODEL" in out.out
    assert "progress: step" in out.err

    async with open_rag(indexed_settings, embedder=embedder) as rag:
        sections = section_pairs(await asyncio.to_thread(rag.store.rows, ""))
    adapted = await asyncio.to_thread(Embedder, str(dest), device="cpu")
    try:
        # A drop-in replacement: same width and window, so the index only needs re-embedding.
        assert (adapted.dim, adapted.max_tokens) == (embedder.dim, embedder.max_tokens)
        before, after = _mrr(embedder, sections), _mrr(adapted, sections)
    finally:
        adapted.close()
    print(f"MRR {before:.3f} -> {after:.3f}")
    assert after > before + 0.02, (before, after)


def test_adapting_an_empty_index_says_to_index_first(tmp_path: Path, capsys) -> None:
    args = ["--data-dir", str(tmp_path / "data"), "--embedding-model", offline_model_path()]
    assert main(["models", "adapt", *args, "--embedding-device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "only 0 sections" in err and "index the docs first" in err
    assert not (tmp_path / "data" / "models").exists()
