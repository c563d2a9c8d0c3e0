"""The search query made from a question that holds pasted tracebacks, logs or code.

Questions pasted into Discord often carry a stack trace, a page of log lines or a code block
around one sentence of question. Searched as typed, the noise decides the results: stack
frames and paths fill BM25 with words every page of SDK docs has (`handler`, `wrapper`,
`site-packages`), and an English encoder reads only its first 256 tokens, which a traceback
can fill before the question starts. The query keeps what names the problem:

- the question's own sentences, first;
- error lines (`SomeException: message`, `ERROR ... msg`), without their timestamps, hex ids,
  paths and URLs;
- from code blocks, the identifiers (calls, parameter names, quoted names such as `HNSW`),
  each once.

Stack frames, source lines under them, `Traceback ...` headers, goroutine dumps and repeated log
lines are dropped. A question without any of these, or of one short line, comes back unchanged
(spacing aside).
The answering prompt shows the question as asked; only retrieval uses this.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable

_FENCE = re.compile(r"^\s*(```|~~~)")
_TRACE_HEAD = re.compile(
    r"^(Traceback \(most recent call last\)|During handling of the above exception"
    r"|The above exception was the direct cause|goroutine \d+ \[|Stack trace:|Caused by: )"
)
# A frame of a Python, Java/JS, Go or Rust trace: the line says where, not what.
_FRAME = re.compile(
    r"""^(File\ ".*",\ line\ \d+(,\ in\ .*)?
        |at\ [\w$.<>/\\-]+[(\s].*
        |[\w./\\-]+\.\w+:\d+(\ .*)?
        |\S+\((0x[0-9a-f]+|\.\.\.)?(,\ ?0x[0-9a-f]+)*(,\ ?\.\.\.)?\)
        |\d+:\ 0x[0-9a-f]+.*
        |(\w+=\S+\s*){2,}
        |\^+~*
        |\.\.\.\ \d+\ more)$""",
    re.X,
)
# `docker compose` puts the service's name before each line it prints.
_COMPOSE_PREFIX = re.compile(r"^[\w.-]+\s+\|\s?")
_SOURCE_REF = re.compile(r"\b[\w./-]+\.(?:go|py|rs|java|js|ts|cc|cpp|c|h|s):\d+\b")
_BIG_NUMBER = re.compile(r"\b\d{7,}\b")
_QUIET_LEVEL = re.compile(r"\[(?:DEBUG|INFO)\]|\bINFO\b|\bDEBUG\b|\"level\":\"(?:info|debug)\"")
_TIMESTAMP = re.compile(
    r"\[?\d{4}[-/]\d\d[-/]\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:\s*(?:Z|[+-]\d\d:?\d\d))?\]?"
    r"|\[?\b\d\d:\d\d:\d\d(?:[.,]\d+)?\]?"
)
_URL = re.compile(r"\b(?:https?|grpc|tcp|unix)://\S+")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+-]+){2,}[\\/]?(?::\d+)?")
_HEX = re.compile(
    r"\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}"
    r"-[0-9a-fA-F]{12}\b|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{12,}\b"
)
_LOG_LEVEL = re.compile(r"\[(?:DEBUG|INFO|WARN|WARNING|ERROR|FATAL|PANIC)\]|\[[\w.]+\.go:\d+\]")
_LOG_FIELD = re.compile(r"\[(?:traceID|trace_id|nodeID|node_id|caller|ts|msgID)=[^\]]*\]")
# A line that reads as an error: what the problem is.
_ERROR = re.compile(
    r"(?:^|[\s.])[A-Z]\w*(?:Error|Exception|Exceeded|Fault|Failure)\b|\b(?:ERROR|FATAL|panic)\b"
    r"|\b(?:error|failed|fail|cannot|can't|unable|denied|refused|timeout|timed out|exceeds?)\b",
    re.I,
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_NOISE_WORDS = frozenset(
    {"self", "print", "res", "result", "results", "data", "i", "x", "r", "q", "it", "len", "range"}
)
# A pasted line this long is a log payload or a dump, not prose: it is cut here.
_LINE_CHARS = 240
# Lines that repeat (the same log line with other numbers) count once.
_DIGITS = re.compile(r"\d+")


def clean_query(text: str) -> str:
    """The search query for `text`: its question sentences, error lines and code identifiers."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) <= 1 and len(text) <= _LINE_CHARS:
        # One line a person typed, an error message quoted in it at most: nothing to drop.
        return " ".join(text.split())
    prose: list[str] = []
    errors: list[str] = []
    code: list[str] = []
    seen: set[str] = set()
    fence: list[str] | None = None
    after_frame = False
    changed = False
    for raw in text.splitlines():
        raw = _COMPOSE_PREFIX.sub("", raw)
        line = raw.strip()
        if _FENCE.match(line):
            changed = True
            if fence is None:
                fence = []
            else:
                _fenced(fence, errors, code, seen)
                fence = None
            continue
        if fence is not None:
            fence.append(raw)
            continue
        if not line:
            after_frame = False
            continue
        kind = _kind(raw, line, after_frame)
        after_frame = kind == "frame"
        if kind in ("frame", "source", "head"):
            changed = True
            continue
        if kind == "log":
            changed = True
            if not _QUIET_LEVEL.search(line) or _ERROR.search(line):
                _keep(_scrub(line), errors, seen)
        else:
            prose.append(line)
    if fence is not None:  # an unclosed fence: what followed it was pasted
        _fenced(fence, errors, code, seen)
    if not changed:
        return " ".join(text.split())
    terms = _unique(code)
    query = " ".join([*prose, *errors, " ".join(terms)]).strip()
    return " ".join(query.split()) or " ".join(text.split())


def _kind(raw: str, line: str, after_frame: bool) -> str:
    if _TRACE_HEAD.match(line):
        return "head"
    if _FRAME.match(line):
        return "frame"
    # The source line a Python frame quotes is indented under it.
    if after_frame and raw[:1].isspace():
        return "source"
    if _TIMESTAMP.search(line) or _LOG_LEVEL.search(line) or _LOG_FIELD.search(line):
        return "log"
    if len(line) > _LINE_CHARS or (_ERROR.search(line) and _looks_pasted(line)):
        return "log"
    return "prose"


def _looks_pasted(line: str) -> bool:
    """An error line a program wrote, not a sentence a person did: `Name: message` form,
    or dense with the punctuation of code."""
    if re.match(r"^[\w.]+(?:Error|Exception|Exceeded|Fault)\b", line):
        return True
    punct = sum(line.count(c) for c in "()[]{}<>=:_/\\\"'")
    return punct >= max(6, len(line) // 12)


def _fenced(lines: list[str], errors: list[str], code: list[str], seen: set[str]) -> None:
    """A fenced block: a trace or log keeps its error lines; code gives its identifiers."""
    after_frame = False
    trace = any(_TRACE_HEAD.match(x.strip()) or _FRAME.match(x.strip()) for x in lines)
    logs = sum(bool(_TIMESTAMP.search(x) or _LOG_LEVEL.search(x)) for x in lines)
    if trace or logs * 2 >= len([x for x in lines if x.strip()]) > 0:
        for raw in lines:
            raw = _COMPOSE_PREFIX.sub("", raw)
            line = raw.strip()
            if not line:
                continue
            kind = _kind(raw, line, after_frame)
            after_frame = kind == "frame"
            if kind in ("log", "prose") and (kind == "log" or _ERROR.search(line)):
                _keep(_scrub(line), errors, seen)
        return
    for raw in lines:
        for name in _IDENTIFIER.findall(_URL.sub(" ", raw)):
            for part in name.split("."):
                if len(part) > 1 and not keyword.iskeyword(part) and part not in _NOISE_WORDS:
                    code.append(part)


def _scrub(line: str) -> str:
    """An error or log line without what is unique to one run: times, ids, paths, URLs."""
    for pattern in (
        _LOG_FIELD,
        _LOG_LEVEL,
        _TIMESTAMP,
        _URL,
        _SOURCE_REF,
        _PATH,
        _HEX,
        _BIG_NUMBER,
    ):
        line = pattern.sub(" ", line)
    line = re.sub(r"[<>\[\]{}()\"'`|]+", " ", line)
    line = re.sub(r"\b\w+=(?=\s|,|$)", " ", line)  # a field whose value was an id or a time
    return " ".join(line.split())[:_LINE_CHARS]


def _keep(line: str, out: list[str], seen: set[str]) -> None:
    key = _DIGITS.sub("0", line.lower())
    if len(line) < 3 or key in seen:
        return
    seen.add(key)
    out.append(line)


def _unique(words: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for word in words:
        if word.lower() not in seen:
            seen.add(word.lower())
            out.append(word)
    return out
