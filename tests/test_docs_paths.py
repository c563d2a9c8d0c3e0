"""README and docs name only files that exist, and link only to files and headings that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A repository path in prose or code: `rag_core/search/store.py`, `docs/deploy.md`, `bench/`.
PATH = re.compile(r"(?<![\w./<>-])(?:rag_core|bot|docs|bench|scripts|tests|eval)/[\w./<>*-]*")
LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")


def named_paths(text: str) -> set[str]:
    """Paths named in `text`; a placeholder (`eval/results/<name>.json`) keeps its folder."""
    found = set()
    for match in PATH.finditer(text):
        path = match.group(0).rstrip(".,:;)")
        if "<" in path or "*" in path:
            path = path.split("<")[0].split("*")[0]
            path = path[: path.rfind("/") + 1]
        found.add(path)
    return found


def headings(md: Path) -> set[str]:
    """The anchors of a Markdown file's headings, as GitHub makes them."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_path_named_in_the_docs_exists() -> None:
    missing = [
        f"{md.relative_to(ROOT)}: {path}"
        for md in DOCS
        for path in sorted(named_paths(md.read_text(encoding="utf-8")))
        if not (ROOT / path).exists()
    ]
    assert missing == []


def test_every_relative_link_and_anchor_exists() -> None:
    broken = []
    for md in DOCS:
        for target, anchor in LINK.findall(md.read_text(encoding="utf-8")):
            if "://" in target or target.startswith(("mailto:", "<")):
                continue
            path = md.parent / target if target else md
            if not path.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in headings(path):
                broken.append(f"{md.relative_to(ROOT)}: {target}#{anchor}")
    assert broken == []


def test_a_missing_path_is_caught() -> None:
    assert named_paths("see `rag_core/nowhere.py` and eval/results/<name>.json.") == {
        "rag_core/nowhere.py",
        "eval/results/",
    }
    assert not (ROOT / "rag_core/nowhere.py").exists()
