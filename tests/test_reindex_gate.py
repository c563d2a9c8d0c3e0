"""The reindex gate: real Milvus Lite, the real offline embedder, real question files."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from rag_core.__main__ import main as cli_main
from rag_core.golden import GoldenQuestion
from rag_core.quality.gate import ReindexGate
from rag_core.runtime import Rag, open_rag
from rag_core.search.verified import VerifiedAnswer, doc_id_of

from .conftest import offline_model_path

ROOT = Path(__file__).resolve().parents[1]
BASE = "https://milvus.io/docs/"
REPLICA_Q = "How do in-memory replicas improve query throughput?"
BITSET_Q = "What is a bitset used for in Milvus?"


def question_file(tmp_path: Path) -> Path:
    path = tmp_path / "golden.jsonl"
    lines = [
        {"id": "replica", "question": REPLICA_Q, "expected_sources": ["replica.md"]},
        {"id": "bitset", "question": BITSET_Q, "expected_sources": ["bitset.md"]},
        {"id": "off-topic", "question": "Who won the 1998 world cup?", "expected_sources": []},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
async def rag(settings, embedder, tmp_path: Path, corpus: Path):
    gated = settings.model_copy(
        update={
            "docs_base_url": BASE,
            "reindex_gate_questions": str(question_file(tmp_path)),
            "reindex_gate_max_drop": 0.2,
        }
    )
    async with open_rag(gated, embedder=embedder) as r:
        first = await r.indexer.run([str(corpus)])
        assert first.published and first.gate is None  # nothing live to compare with yet
        yield r


async def top_pages(rag: Rag, question: str) -> list[str]:
    return [h.url.split("#")[0] for h in (await rag.retriever.retrieve(question, top_k=5)).hits]


async def test_a_reindex_that_loses_a_golden_page_is_held_back_and_force_publishes_it(
    rag: Rag, corpus: Path
) -> None:
    live_before = await asyncio.to_thread(rag.store.live)
    assert BASE + "replica.md" in await top_pages(rag, REPLICA_Q)

    (corpus / "reference" / "replica.md").unlink()
    held = await rag.indexer.run([str(corpus)])
    assert held.held_back and not held.published and held.removed == 1
    gate = held.gate
    assert gate is not None and not gate.passed
    assert gate.questions == 2  # the unanswerable question is not part of the golden set
    assert (gate.live_recall, gate.new_recall) == (1.0, 0.5)
    assert [q.id for q in gate.lost] == ["replica"]
    assert gate.changed_pages == [BASE + "replica.md"]
    assert any("replica" in line and REPLICA_Q in line for line in gate.details())
    # The live index is untouched and no unfinished version is left behind.
    assert await asyncio.to_thread(rag.store.live) == live_before
    assert BASE + "replica.md" in await top_pages(rag, REPLICA_Q)
    assert await asyncio.to_thread(rag.store.drop_orphans) == []

    forced = await rag.indexer.run([str(corpus)], force=True)
    assert forced.published and forced.forced and not forced.held_back
    assert BASE + "replica.md" not in await top_pages(rag, REPLICA_Q)


async def test_a_harmless_change_passes_the_gate(rag: Rag, corpus: Path) -> None:
    page = corpus / "reference" / "bitset.md"
    page.write_text(page.read_text() + "\n\n## Zebra\n\nZebras are striped.\n")
    report = await rag.indexer.run([str(corpus)])
    assert report.published and not report.forced
    assert report.gate is not None and report.gate.passed and report.gate.lost == []
    assert report.gate.changed_pages == [BASE + "bitset.md"]


async def test_a_verified_answer_that_would_be_lost_holds_the_reindex_back(
    rag: Rag, corpus: Path
) -> None:
    """Extra golden questions (what the bot adds from its feedback) count like the file's, and a
    lost verified answer holds a version back whatever the drop in recall."""
    await rag.verified.add(VerifiedAnswer(4, "Can Milvus run on a toaster?", "No.", "https://d/4"))
    (corpus / "reference" / "bitset.md").unlink()
    gate = rag.indexer.check
    assert isinstance(gate, ReindexGate)  # what open_rag hands the indexer
    gate.settings = gate.settings.model_copy(update={"reindex_gate_max_drop": 1.0})
    report = await rag.indexer.run([str(corpus)])
    assert report.published  # the lost bitset question is within the (lenient) allowed drop
    assert report.gate is not None and [q.id for q in report.gate.lost] == ["bitset"]

    # An empty question file (an export before anything was vouched for) gates nothing.
    empty = Path(gate.settings.reindex_gate_questions)
    empty.write_text("", encoding="utf-8")
    golden = [GoldenQuestion("verified-9", "What colour is the sky?", ("https://d/9",), True)]
    page = corpus / "reference" / "replica.md"
    page.write_text(page.read_text() + "\n\nMore text.\n")
    report = await rag.indexer.run([str(corpus)], golden=golden)
    # Never found on the live version either: not "lost", so it does not hold anything back.
    assert report.published and report.gate is not None and report.gate.lost == []
    assert [v.id for v in await rag.verified.listed()] == [4]
    assert doc_id_of(4) in await asyncio.to_thread(rag.store.documents)


def test_cli_index_exits_non_zero_when_held_back_and_force_publishes(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The CLI's own code in this process (its process boundary is tested in test_entrypoints)."""
    for name, value in {
        "DATA_DIR": str(tmp_path / "data"),
        "EMBEDDING_MODEL": offline_model_path(),
        "EMBEDDING_DEVICE": "cpu",
        "DOCS_BASE_URL": BASE,
        "REINDEX_GATE_QUESTIONS": str(question_file(tmp_path)),
        # What the CLI would set for itself, set here so the test's environment is restored.
        "VLLM_CONFIGURE_LOGGING": "0",
        "GRPC_VERBOSITY": "NONE",
        "TQDM_DISABLE": "1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no .env there

    @dataclass
    class Run:
        returncode: int
        stdout: str
        stderr: str

    def index(*extra: str) -> Run:
        code = cli_main(["index", str(corpus), "-q", *extra])
        out = capsys.readouterr()
        return Run(code, out.out, out.err)

    assert index().returncode == 0
    (corpus / "reference" / "replica.md").unlink()
    held = index()
    assert held.returncode == 3, held.stderr
    assert "held back by the reindex gate" in held.stdout
    assert "lost question replica" in held.stdout and BASE + "replica.md" in held.stdout
    assert "--force" in held.stderr
    forced = index("--force")
    assert forced.returncode == 0, forced.stderr
    assert "published despite the reindex gate" in forced.stdout
