"""Write .env.example from the Settings object: every field, grouped, with its description.

.venv/bin/python scripts/gen_env_example.py          # rewrite .env.example
.venv/bin/python scripts/gen_env_example.py --check  # exit 1 if it is out of date
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


def render() -> str:
    lines = [HEADER]
    current = None
    where = groups()
    for name, field in Settings.model_fields.items():
        group = where.get(name, "general")
        if group != current:
            lines.append(f"\n# === {group} ===")
            current = group
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            value = ""  # secrets are never written here
        elif isinstance(default, bool):
            value = str(default).lower()
        elif isinstance(default, list | dict):
            value = json.dumps(default)
        else:
            value = str(default)
        lines.append(f"# {field.description}")
        lines.append(f"{name.upper()}={value}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    path = ROOT / ".env.example"
    text = render()
    if "--check" in sys.argv:
        if not path.exists() or path.read_text() != text:
            print(".env.example is out of date: run scripts/gen_env_example.py", file=sys.stderr)
            sys.exit(1)
    else:
        path.write_text(text)
