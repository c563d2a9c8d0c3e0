"""Attribution: hand-written answers over real passages, scored with the real offline embedder."""

from __future__ import annotations

import pytest

from rag_core.answer.attribution import attribute, split_answer

HNSW = (
    "HNSW (Hierarchical Navigable Small World Graph) is a graph-based indexing algorithm. In "
    "order to improve performance, HNSW limits the maximum degree of nodes on each layer of "
    "the graph to `M`. In addition, you can use `efConstruction` (when building index) or `ef` "
    "(when searching targets) to specify a search range. M defines the maximum number of "
    "outgoing connections in the graph. Higher M leads to higher accuracy/run_time at fixed "
    "ef/efConstruction. ef_construction controls index search speed/build speed tradeoff."
)
MMAP = (
    "To adjust your cluster's memory mapping settings, edit the configs/milvus.yaml file. "
    "Within this file, you can specify whether to enable memory mapping by default and "
    "determine the directory path for storing memory-mapped files. If the path (mmapDirPath) "
    "is left unspecified, the system defaults to storing memory-mapped files in "
    "{localStorage.path}/mmap. For dynamic adjustments within a collection, toggle "
    "mmap.enabled between True or False with set_properties()."
)
REPLICA = (
    "With in-memory replicas, Milvus can load the same segment on multiple query nodes. If "
    "one query node has failed or is busy with a current search request when another "
    "arrives, the system can send new requests to an idle query node that has a replication "
    "of the same segment. In-memory replicas allow you to leverage extra CPU and memory "
    "resources and improve read throughput."
)
PASSAGES = [HNSW, MMAP, REPLICA]


@pytest.fixture(scope="module")
def embed(embedder):
    async def run(texts: list[str]):
        return await embedder.aembed_passages(texts)

    return run


async def test_a_wrong_citation_moves_to_the_passage_that_supports_it(embed) -> None:
    answer = "HNSW limits the maximum degree of nodes on each graph layer to M [2]."
    result = await attribute(answer, PASSAGES, embed)
    assert result.text == "HNSW limits the maximum degree of nodes on each graph layer to M [1]."
    assert result.moved == 1 and result.used == [1] and not result.low_support


async def test_an_unsupported_sentence_loses_its_citation_and_is_flagged(embed) -> None:
    answer = (
        "Milvus stores every vector on the moon using quantum tape drives [1]. "
        "Billing is done per galaxy and invoices arrive by carrier pigeon [3]."
    )
    result = await attribute(answer, PASSAGES, embed)
    assert "[1]" not in result.text and "[3]" not in result.text
    assert result.removed == 2 and result.used == []
    assert result.low_support and result.supported_share == 0.0
    assert not any(s.is_supported for s in result.sentences)


async def test_a_supported_uncited_sentence_gains_a_citation(embed) -> None:
    answer = (
        "In-memory replicas let Milvus load the same segment on multiple query nodes, so an "
        "idle query node can serve new search requests."
    )
    result = await attribute(answer, PASSAGES, embed)
    assert result.text.endswith("search requests [3].")
    assert result.added == 1 and result.used == [3]


async def test_correct_citations_code_and_short_lines_are_kept(embed) -> None:
    answer = (
        "Sure!\n\n"
        "To enable memory mapping by default, edit the configs/milvus.yaml file and set the "
        "directory path for memory-mapped files [2].\n\n"
        "```python\ncollection.set_properties({'mmap.enabled': True})  # [1]\n```\n"
        "- HNSW uses `efConstruction` when building the index and `ef` when searching [1].\n"
    )
    result = await attribute(answer, PASSAGES, embed)
    assert result.text == answer
    assert result.moved == result.added == result.removed == 0
    assert result.used == [2, 1]
    assert [s.checked for s in result.sentences if s.text.strip()].count(True) == 2


def test_split_rebuilds_the_text_around_citations() -> None:
    text = (
        "The first sentence makes a claim [1]. Another sentence follows with more [2][3].\n"
        "- a list item about indexes [1]\n"
    )
    pieces = split_answer(text, 3)
    assert [p.cited for p in pieces if p.check] == [(1,), (2, 3), (1,)]
    # Out-of-range numbers are not citations of anything.
    assert [p.cited for p in split_answer("A claim about many things here [9].", 3)] == [()]
