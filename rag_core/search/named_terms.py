"""Dotted config keys a question asks about, and whether the docs mention them.

"What does `queryNode.grouping.enabled` do?" finds passages on queryNode settings that are
close in meaning, and cosine similarity cannot tell that none of them names the key: the model
would describe a setting the docs never mention. When every such key a question names is
missing from the docs, the answer is a refusal that says which key was not found.

A term is a dotted name (`proxy.maxVectorFieldNum`, `ivfflat.probes`, `client.search`); file
names, domains, versions and short ones (`e.g.`) are not. Plain snake_case and camelCase names
are left out on purpose: in a help channel they are as often the user's own collections and
fields (`my_docs`, `userVectors`), which the docs cannot mention. A question spanning several
lines (a pasted traceback or code) is not checked for the same reason. A term counts as
mentioned when a passage has it in any case, or its camelCase last part
(`DiskIndex.MaxDegree` where the docs list `MaxDegree` under a DiskIndex heading).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_TERM = re.compile(r"(?<![\w./-])([A-Za-z]\w*(?:\.\w+)+)(?![\w/-])")
_NOT_A_TERM = re.compile(
    r"\.(md|py|yaml|yml|json|toml|txt|sh|go|js|ts|db|com|io|org)$|^v?\d[\d.]*$", re.I
)
_CAMEL = re.compile(r"[a-z][A-Z]")
MIN_CHARS = 6  # shorter ones (`e.g`, `a.b`) are not keys
MIN_LEAF_CHARS = 8


def named_terms(question: str) -> list[str]:
    """The dotted keys in a one-line question, in order, each once."""
    if "\n" in question.strip() or "```" in question:
        return []
    found: list[str] = []
    for match in _TERM.finditer(question):
        term = match.group(1).rstrip(".")
        if len(term) >= MIN_CHARS and not _NOT_A_TERM.search(term) and term not in found:
            found.append(term)
    return found


def mentions(term: str, texts: Iterable[str]) -> bool:
    """Whether any of `texts` names `term` (any case), or its long camelCase last part."""
    wanted = [term.lower()]
    leaf = term.rsplit(".", 1)[-1]
    if leaf != term and len(leaf) >= MIN_LEAF_CHARS and _CAMEL.search(leaf):
        wanted.append(leaf.lower())
    return any(w in text.lower() for text in texts for w in wanted)
