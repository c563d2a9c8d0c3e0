"""Write .env.example and the settings table of docs/configuration.md from the Settings object.

.venv/bin/python scripts/gen_env_example.py             # rewrite both
.venv/bin/python scripts/gen_env_example.py --check     # exit 1 if either is out of date
.venv/bin/python scripts/gen_env_example.py --markdown  # print the table (Markdown) only

The table sits between the settings-table markers of docs/configuration.md.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from rag_core.config import Settings  # noqa: E402

HEADER = """\
# Copy to .env and edit. Every setting can also be given as an environment variable.
# Generated from rag_core/config.py by scripts/gen_env_example.py (a test keeps them in sync).
"""


def groups() -> dict[str, str]:
    """Field name -> the `# --- group ---` comment it sits under in config.py."""
    out: dict[str, str] = {}
    group = "general"
    for line in (ROOT / "rag_core" / "config.py").read_text().splitlines():
        if m := re.match(r"\s*# --- (.+?) ---", line):
            group = m.group(1)
        elif m := re.match(r"    (\w+): ", line):
            out[m.group(1)] = group
    return out


def default_text(name: str) -> str:
    default = Settings.model_fields[name].get_default(call_default_factory=True)
    if default is None:
        return ""
    if isinstance(default, SecretStr):
        return ""  # secrets are never written out
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list | dict):
        return json.dumps(default, ensure_ascii=False)
    return str(default)


def render() -> str:
    lines = [HEADER]
    current = None
    where = groups()
    for name, field in Settings.model_fields.items():
        group = where.get(name, "general")
        if group != current:
            lines.append(f"\n# === {group} ===")
            current = group
        lines.append(f"# {field.description}")
        lines.append(f"{name.upper()}={default_text(name)}")
    return "\n".join(lines) + "\n"


START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def render_table() -> str:
    rows = ["| setting | default | what |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = default_text(name).replace("|", "\\|")
        shown = f"`{default}`" if default else "(empty)"
        what = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {shown} | {what} |")
    return "\n".join(rows)


def with_table(doc: str) -> str:
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render_table()}\n{END}{tail}"


TABLE_DOC = ROOT / "docs" / "configuration.md"


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        print(render_table())
        sys.exit(0)
    targets = {ROOT / ".env.example": render()}
    targets[TABLE_DOC] = with_table(TABLE_DOC.read_text())
    stale = [p.name for p, text in targets.items() if not p.exists() or p.read_text() != text]
    if "--check" in sys.argv:
        if stale:
            print(
                f"{', '.join(stale)} out of date: run scripts/gen_env_example.py", file=sys.stderr
            )
            sys.exit(1)
    else:
        for path, text in targets.items():
            path.write_text(text)
