"""Conversations without an engine: packing earlier turns, the rule-based standalone question,
and which model rewrites can be trusted (the engine-backed parts are in test_answering.py)."""

from __future__ import annotations

import pytest

from rag_core.answer.conversation import (
    Turn,
    needs_context,
    pack_history,
    render_history,
    rewrite_by_rules,
    usable_rewrite,
)


def words(text: str) -> int:
    return len(text.split())


TURNS = [
    Turn("What is a collection?", "A collection holds entities [1]."),
    Turn("How do I create an HNSW index?", "Call create_index with index_type HNSW [2][3]."),
    Turn("What does M mean?", "M is the number of links per node [1]."),
]


def test_history_keeps_the_latest_turns_that_fit_oldest_dropped_first() -> None:
    assert pack_history(TURNS, 1000, words) == TURNS
    last_two = words(render_history(TURNS[1:]))
    assert pack_history(TURNS, last_two, words) == TURNS[1:]
    assert pack_history(TURNS, last_two - 1, words) == TURNS[2:]
    assert pack_history([], 100, words) == []


def test_a_latest_turn_too_long_alone_keeps_its_start() -> None:
    long = Turn("What does M mean?", "M is the number of links per node. " * 50)
    [kept] = pack_history([*TURNS[:2], long], 40, words)
    assert kept.question == long.question and kept.answer.endswith("…")
    assert (
        kept.answer.startswith("M is the number of links") and words(render_history([kept])) <= 40
    )
    assert pack_history([long], 3, words) == []  # not even the question fits


def test_earlier_answers_lose_their_citation_numbers() -> None:
    text = render_history(TURNS[1:2])
    assert text == (
        "User: How do I create an HNSW index?\nAssistant: Call create_index with index_type HNSW."
    )


@pytest.mark.parametrize(
    "question",
    ["and for IVF?", "What about on Kubernetes?", "how do I delete it?", "Why?", "same for GPU"],
)
def test_follow_ups_that_lean_on_the_previous_turn_are_joined_to_it(question: str) -> None:
    assert needs_context(question)
    assert rewrite_by_rules(question, TURNS[:2]) == f"How do I create an HNSW index? {question}"


@pytest.mark.parametrize(
    "question",
    ["How do I create a collection with a dynamic schema?", "What is the default metric type?"],
)
def test_standalone_questions_are_searched_as_typed(question: str) -> None:
    assert not needs_context(question)
    assert rewrite_by_rules(question, TURNS) == question
    assert rewrite_by_rules("and for IVF?", []) == "and for IVF?"  # nothing to lean on


def test_a_model_rewrite_is_used_only_when_it_keeps_the_topic() -> None:
    previous = "How do I create an HNSW index?"

    def use(text: str, question: str = "and for IVF?") -> str:
        return usable_rewrite(text, question, previous, max_chars=200)

    assert use('Standalone question: "How do I create an IVF index?"\nIt is...') == (
        "How do I create an IVF index?"
    )
    assert (
        use("How do I create an HNSW index with IVF?") == "How do I create an HNSW index with IVF?"
    )
    assert use("How do I delete an HNSW index?", "how do I delete it?")
    for bad in ["", "  \n ", "How do I create an index?", "x" * 201, "zq vr wk"]:
        with pytest.raises(ValueError):
            use(bad)
    with pytest.raises(ValueError):  # no topic of the follow-up nor of the question before it
        use("Bananas are yellow", "why?")
