"""Config keys and parameter names a question asks about, and whether the docs mention them.

"What does `queryNode.grouping.enabled` do?" finds passages on queryNode settings that are
close in meaning, and cosine similarity cannot tell that none of them names the key: the model
would describe a setting the docs never mention. When every such name a question asks about is
missing from the docs, the answer is a refusal that says which name was not found.

A term is a dotted key (`proxy.maxVectorFieldNum`, `ivfflat.probes`), a snake_case name
(`num_candidates`) or a camelCase one (`efConstruction`); file names, versions and short
words are not. A question spanning several lines (a pasted traceback or code) is not checked:
its code names variables of the user's own. A term counts as mentioned when a passage has it
in any case, or, for a dotted key, its camelCase last part (`DiskIndex.MaxDegree` where the
docs list `MaxDegree` under a DiskIndex heading).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_TERM = re.compile(
    r"(?<![\w./-])([A-Za-z][A-Za-z0-9]*(?:[._][A-Za-z0-9]+)+|[a-z]+[A-Z][A-Za-z0-9]*)(?![\w/-])"
)
_NOT_A_TERM = re.compile(
    r"\.(md|py|yaml|yml|json|toml|txt|sh|go|js|ts|db|com|io|org)$|^v?\d[\d.]*$", re.I
)
_CAMEL = re.compile(r"[a-z][A-Z]")
MIN_CHARS = 6  # shorter ones (`max_k`, `a.b`) are too often not names at all
MIN_LEAF_CHARS = 8


def named_terms(question: str) -> list[str]:
    """The config keys and parameter names in a one-line question, in order, each once."""
    if "\n" in question.strip() or "```" in question:
        return []
    found: list[str] = []
    for match in _TERM.finditer(question):
        term = match.group(1).rstrip(".")
        if len(term) >= MIN_CHARS and not _NOT_A_TERM.search(term) and term not in found:
            found.append(term)
    return found


def mentions(term: str, texts: Iterable[str]) -> bool:
    """Whether any of `texts` names `term` (any case), or a dotted key's camelCase last part."""
    wanted = [term.lower()]
    leaf = term.rsplit(".", 1)[-1]
    if leaf != term and len(leaf) >= MIN_LEAF_CHARS and _CAMEL.search(leaf):
        wanted.append(leaf.lower())
    return any(w in text.lower() for text in texts for w in wanted)
