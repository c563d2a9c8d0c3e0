"""Evaluation: run a question set (rag_core/questions.py) through retrieval, the gate and,
optionally, the answer model, and score it (scoring.py).

A follow-up set is scored by retrieving its last turn as typed, rewritten by the rules,
rewritten by the answer model (optional), and written out in full (`standalone`), side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..answer.answering import load_prompt
from ..answer.conversation import Rewrite, Rewriter, Turn, rewrite_by_rules
from ..questions import FollowUp, Question, first_rank, page_url
from ..search.retrieval import fold_near_duplicates
from .results import RESULTS_VERSION
from .scoring import (
    KS,
    QuestionResult,
    citation_counts,
    cited_pages,
    facts_found,
    format_rows,
    score_group,
)

if TYPE_CHECKING:
    from ..answer.answering import Answerer
    from ..answer.llm import Generator
    from ..search.retrieval import Retrieval, Retriever

ProgressCallback = Callable[[int, int], None]


def retrieval_result(
    id: str,
    question: str,
    lang: str,
    expected: Sequence[str],
    retrieval: Retrieval,
    top_k: int,
    threshold: float,
) -> QuestionResult:
    """What retrieval and the gate gave one question (ranks read on every hit retrieved)."""
    pages = [page_url(h.url) for h in fold_near_duplicates(retrieval.hits)]
    best, refused = retrieval.gate(threshold, top_k)
    return QuestionResult(
        id=id,
        question=question,
        lang=lang,
        expected=list(expected),
        pages=pages,
        rank=first_rank(pages, expected),
        best_similarity=round(best, 4),
        refused=refused,
        embed_ms=round(retrieval.embed_s * 1000, 2),
        search_ms=round(retrieval.search_s * 1000, 2),
        unknown_terms=list(retrieval.unknown_terms),
    )


async def run_eval(
    retriever: Retriever,
    questions: Sequence[Question],
    *,
    answerer: Answerer | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[QuestionResult]:
    """Each question through `retriever` and the gate (its settings: top_k, search_mode,
    relevance_threshold); with an `answerer`, also through the answer model.
    """
    settings = retriever.settings
    depth = max(settings.top_k, *KS)  # ranks are read up to @5 even when top_k is smaller
    results: list[QuestionResult] = []
    for i, q in enumerate(questions, 1):
        retrieval = await retriever.retrieve(q.question, top_k=depth)
        result = retrieval_result(
            q.id,
            q.question,
            q.lang,
            q.expected_sources,
            retrieval,
            settings.top_k,
            settings.relevance_threshold,
        )
        if answerer is not None:
            prepared = await answerer.prepare(q.question)
            stream = answerer.stream(prepared)
            async for _ in stream:
                pass
            assert stream.result is not None
            result.refused = prepared.refused  # the answerer's own decision
            result.answer = stream.result.text
            if not prepared.refused:
                answer = stream.result
                result.facts = facts_found(result.answer, q.key_facts)
                result.cited = cited_pages(result.answer, [s.url for s in prepared.sources])
                passages = [s.text for s in prepared.sources]
                result.citations_raw = citation_counts(answer.raw_text, passages)
                result.citations_checked = citation_counts(answer.text, passages)
                result.low_support = answer.low_support
        results.append(result)
        if on_progress is not None:
            on_progress(i, len(questions))
    return results


# --- follow-ups -------------------------------------------------------------------------------

FOLLOW_UP_WAYS = ("typed", "rules", "llm", "standalone")


@dataclass
class FollowUpRun:
    """Retrieval results per way of asking the last question, and the model's rewrites."""

    results: dict[str, list[QuestionResult]]
    rewrites: list[Rewrite] = field(default_factory=list)


async def run_follow_up_eval(
    retriever: Retriever,
    cases: Sequence[FollowUp],
    *,
    generator: Generator | None = None,
    on_progress: ProgressCallback | None = None,
) -> FollowUpRun:
    """Retrieve for each case's last question as typed, rewritten by the rules, rewritten by
    the answer model (when a `generator` is given) and in full (`standalone`).

    Earlier turns are given without their answers, as a reader of the set sees them."""
    settings = retriever.settings
    depth = max(settings.top_k, *KS)
    rewriter = None
    if generator is not None:
        llm_settings = settings.model_copy(update={"conversation_rewrite": "llm"})
        rewriter = Rewriter(llm_settings, generator, load_prompt("rewrite.txt"))
    run = FollowUpRun({way: [] for way in FOLLOW_UP_WAYS if way != "llm" or rewriter})
    for i, case in enumerate(cases, 1):
        history = [Turn(q, "") for q in case.turns[:-1]]
        last = case.turns[-1]
        queries = {"typed": last, "rules": rewrite_by_rules(last, history)}
        if rewriter is not None:
            rewrite = await rewriter.rewrite(last, history)
            run.rewrites.append(rewrite)
            queries["llm"] = rewrite.standalone
        queries["standalone"] = case.standalone
        for way, query in queries.items():
            retrieval = await retriever.retrieve(query, top_k=depth)
            run.results[way].append(
                retrieval_result(
                    case.id,
                    query,
                    "en",
                    case.expected_sources,
                    retrieval,
                    settings.top_k,
                    settings.relevance_threshold,
                )
            )
        if on_progress is not None:
            on_progress(i, len(cases))
    return run


def format_follow_ups(run: FollowUpRun) -> str:
    """One row per way of asking the follow-up, and what the model's rewrites cost."""
    lines = [format_rows([(way, score_group(rs)) for way, rs in run.results.items()], "way")]
    if run.rewrites:
        by_model = [r for r in run.rewrites if r.method == "llm"]
        ms = sum(r.seconds for r in by_model) * 1000 / max(len(by_model), 1)
        prompt = sum(r.prompt_tokens for r in by_model) / max(len(by_model), 1)
        completion = sum(r.completion_tokens for r in by_model) / max(len(by_model), 1)
        lines.append(
            f"\nmodel rewrites used: {len(by_model)}/{len(run.rewrites)} (the rest: rules); "
            f"per rewrite {ms:.0f} ms, {prompt:.0f} prompt + {completion:.0f} completion tokens"
        )
    return "\n".join(lines)


def follow_ups_to_json(
    run: FollowUpRun, *, settings: Mapping[str, Any], questions_file: str = ""
) -> dict[str, Any]:
    return {
        "version": RESULTS_VERSION,
        "kind": "follow-ups",
        "questions_file": questions_file,
        "settings": dict(settings),
        "summary": {way: score_group(rs) for way, rs in run.results.items()},
        "results": {way: [asdict(r) for r in rs] for way, rs in run.results.items()},
        "rewrites": [asdict(r) for r in run.rewrites],
    }
