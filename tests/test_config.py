"""Settings: documented, read from the environment, secrets kept out of reprs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rag_core.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_env_example_and_readme_table_list_every_setting() -> None:
    """Adding a setting without regenerating .env.example and the README table fails here."""
    result = subprocess.run(
        [sys.executable, "scripts/gen_env_example.py", "--check"], cwd=ROOT, capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()
    text = (ROOT / ".env.example").read_text()
    for name, field in Settings.model_fields.items():
        assert f"\n{name.upper()}=" in text
        assert field.description, f"{name} has no description"


def test_settings_from_environment_and_secrets_hidden(monkeypatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "abc.def.ghi")
    monkeypatch.setenv("TOP_K", "7")
    monkeypatch.setenv("DOCS_SOURCES", '["docs/", "https://example.org/sitemap.xml"]')
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.top_k == 7 and s.docs_sources[1].endswith("sitemap.xml")
    assert s.discord_token.get_secret_value() == "abc.def.ghi"
    assert "abc.def.ghi" not in repr(s) and "abc.def.ghi" not in str(s.model_dump())
    assert s.milvus_target.endswith("kb.db") and s.is_milvus_lite
