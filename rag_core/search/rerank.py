"""Reranking by query likelihood: how likely the answer model finds the question after a passage.

The embedder ranks passages by one vector each; the answer model reads the passage and the
question together. For each retrieved passage it scores the question's tokens after
"<passage>\\n\\nA user read this passage and asked:" (one prefill, nothing generated; the
mean log-probability per token), and that score moves the passage against its retrieval rank:

    key = RERANK_WEIGHT x mean log-probability - ln(retrieval rank)

so a clear winner of the model's reading moves up, and where the model hardly distinguishes
the passages the retrieval order stands. Any scoring failure keeps the retrieval order: the
reranker can improve an answer, never cost one.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Protocol

from ..config import Settings
from ..documents import Hit
from ..errors import RagError

log = logging.getLogger(__name__)

# A chunk is at most CHUNK_TOKENS embedder tokens (~1,000-1,300 characters at 256); the cap
# keeps one passage's prefill bounded whatever the chunk settings.
PASSAGE_CHARS = 1200
QUESTION_CHARS = 300
PROMPT = "Passage: {context}\n{text}\n\nA user read this passage and asked:"


class LikelihoodScorer(Protocol):
    """What the reranker needs of the answer model (answer.llm.Generator is one)."""

    async def continuation_logprob(self, prefix: str, continuation: str) -> float: ...


def passage_prompt(hit: Hit) -> str:
    context = " > ".join(p for p in (hit.title, hit.heading_path) if p)
    return PROMPT.format(context=context, text=hit.text[:PASSAGE_CHARS])


def rerank_order(scores: Sequence[float], weight: float) -> list[int]:
    """Positions of `scores` (one per passage, retrieval order) in their new order."""
    return sorted(range(len(scores)), key=lambda i: (-(weight * scores[i] - math.log(i + 1)), i))


class Reranker:
    """Reorders retrieved passages with the answer model (RERANK=llm)."""

    def __init__(self, generator: LikelihoodScorer, weight: float) -> None:
        self.generator = generator
        self.weight = weight

    async def rerank(self, question: str, hits: Sequence[Hit]) -> list[Hit]:
        """`hits` reordered; unchanged when fewer than two or when any passage fails to score."""
        if len(hits) < 2 or not getattr(self.generator, "can_score", True):
            return list(hits)
        asked = " " + question.strip()[:QUESTION_CHARS]
        try:
            scores = await asyncio.gather(
                *(self.generator.continuation_logprob(passage_prompt(h), asked) for h in hits)
            )
        except (RagError, TimeoutError) as exc:
            log.warning("reranking failed (%s): keeping the retrieval order", exc)
            return list(hits)
        return [hits[i] for i in rerank_order(scores, self.weight)]


def make_reranker(settings: Settings, generator: LikelihoodScorer | None) -> Reranker | None:
    """The reranker RERANK asks for; None when it is off or no answer model is loaded."""
    if generator is None or settings.rerank != "llm":
        return None
    if not getattr(generator, "can_score", True):
        # Prompt log-probabilities are a vLLM extension, scored on token ids from the model's
        # own tokenizer: other servers answer, in the retrieval order.
        log.warning(
            "RERANK=llm needs prompt log-probabilities: the in-process engine, or a vLLM server "
            "with the model's tokenizer here. This server has none: passages keep the "
            "retrieval order"
        )
    return Reranker(generator, settings.rerank_weight)
