"""Dotted config keys the docs never mention: found and checked (refusal: test_answering)."""

from __future__ import annotations

from rag_core.search.named_terms import mentions, named_terms


def test_dotted_keys_are_found_in_one_line_questions() -> None:
    q = "what does queryNode.grouping.enabled do, vs ivfflat.probes and queryNode.grouping.enabled?"
    assert named_terms(q) == ["queryNode.grouping.enabled", "ivfflat.probes"]
    # Plain snake_case and camelCase names are as often the user's own: not checked.
    assert named_terms("how do I drop my_collection_v2 or userVectors?") == []
    # File names, versions, URLs and plain English are not terms.
    q = "milvus.yaml from v2.4.1 at https://milvus.io/docs/x.md says mq.type is kafka"
    assert named_terms(q) == ["mq.type"]
    assert named_terms("How do I enable mmap for a collection?") == []
    assert named_terms("is indexNode.enableDisk. on by default?") == ["indexNode.enableDisk"]


def test_pasted_code_and_tracebacks_are_not_checked() -> None:
    assert named_terms("why does this fail?\nconn.insert_rows(data)") == []
    assert named_terms("```python\nclient.search(collection_name='x')```") == []


def test_a_term_is_mentioned_in_any_case_or_by_a_dotted_keys_last_part() -> None:
    texts = ["| `MaxDegree` | Maximum degree of the Vamana graph |", "## `indexNode.enableDisk`"]
    assert mentions("indexnode.enabledisk", texts)
    assert mentions("DiskIndex.MaxDegree", texts)  # listed under a DiskIndex heading
    assert not mentions("queryNode.grouping.enabled", texts)
    # Only a long camelCase last part stands for the key: `enabled` alone says nothing.
    assert not mentions("proxy.cache.enabled", ["enabled: true"])
    assert not mentions("ivfflat.probes", [])
