"""The command lines as a new user meets them: bad settings, missing models, no network, output.

Each entry point runs as a real process (or, where Discord must be faked, in-process through the
loopback fake Discord): what is checked is what a person sees on the terminal and the exit code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import discord
import pytest

from bot import __main__ as bot_main
from rag_core.config import Settings, load_settings
from rag_core.errors import ConfigError
from tests.conftest import offline_model_path
from tests.fake_discord import FakeDiscord

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m ...` in an empty folder (no .env), offline, with these variables set."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path / "data"), **env}
    for name, value in env.items():
        if value == "":  # "" = unset it
            environ.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- settings -----------------------------------------------------------------------------------


def test_list_settings_take_json_or_a_plain_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCS_SOURCES", "docs/")
    assert load_settings(_env_file=None).docs_sources == ["docs/"]
    monkeypatch.setenv("DOCS_SOURCES", "docs/, https://example.org/sitemap.xml")
    assert load_settings(_env_file=None).docs_sources == [
        "docs/",
        "https://example.org/sitemap.xml",
    ]
    monkeypatch.setenv("DOCS_SOURCES", '["a,b", "c"]')
    assert load_settings(_env_file=None).docs_sources == ["a,b", "c"]
    monkeypatch.setenv("DISCORD_ADMIN_ROLE_IDS", "12, 34")
    assert load_settings(_env_file=None).discord_admin_role_ids == [12, 34]


def test_bad_settings_are_one_line_each(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a_file = tmp_path / "data"
    a_file.write_text("not a folder")
    monkeypatch.setenv("FETCH_CONCURRENCY", "0")
    monkeypatch.setenv("TOP_K", "0")
    monkeypatch.setenv("DATA_DIR", str(a_file))
    monkeypatch.setenv("DOCS_SOURCES", "[not json")
    with pytest.raises(ConfigError) as bad:
        load_settings(_env_file=None)
    lines = bad.value.user_message.splitlines()
    assert len(lines) == 4, lines
    assert any(
        line.startswith("FETCH_CONCURRENCY='0': ") and "greater than or equal to 1" in line
        for line in lines
    )
    assert any(line.startswith("TOP_K='0': ") for line in lines)
    assert any(line.startswith(f"DATA_DIR='{a_file}': ") and "folder" in line for line in lines)
    assert any(line.startswith("DOCS_SOURCES='[not json'") and "JSON" in line for line in lines)


def test_a_rejected_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "x" * 40)
    with pytest.raises(ConfigError) as bad:
        load_settings(_env_file=None, discord_token=12345)
    assert bad.value.user_message.startswith("DISCORD_TOKEN: ")
    assert "12345" not in bad.value.user_message


@pytest.mark.parametrize(
    "command",
    [
        ("rag_core", "index", "docs/"),
        ("rag_core", "search", "what is milvus"),
        ("bot",),
        ("bot", "sync"),
        ("bot", "export-flags", "out.jsonl"),
        ("bot", "gaps"),
        ("bot", "doctor"),
    ],
    ids=" ".join,
)
def test_every_entry_point_reports_bad_settings_in_one_line_each(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = run(
        tmp_path,
        *command,
        FETCH_CONCURRENCY="0",
        TOP_K="many",
        DISCORD_TOKEN="a.secret.value",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert "FETCH_CONCURRENCY='0'" in output and "TOP_K='many'" in output
    assert len(output.strip().splitlines()) <= 4, output
    assert "a.secret.value" not in output


# --- models and network ---------------------------------------------------------------------------


def test_a_model_that_cannot_be_had_says_which_and_how_to_fix_it(tmp_path: Path) -> None:
    """No network: fail in seconds, name the model, the hub and the two ways out; no empty db."""
    started = time.monotonic()
    result = run(
        tmp_path,
        "rag_core",
        "index",
        str(tmp_path),
        EMBEDDING_MODEL="BAAI/bge-base-en-v1.5",
        HF_HOME=str(tmp_path / "hf"),  # an empty cache
        HF_HUB_OFFLINE="",
        TRANSFORMERS_OFFLINE="",
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
    )
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 60
    error = result.stderr.strip()
    assert error.startswith("error: The embedding model 'BAAI/bge-base-en-v1.5'"), error
    assert "cannot be downloaded from http://127.0.0.1:" in error
    assert "EMBEDDING_MODEL to a local folder" in error and "Traceback" not in error
    assert not (tmp_path / "data" / "kb.db").exists()


def test_an_answer_model_that_cannot_be_had_says_which_and_how_to_fix_it(
    tmp_path: Path,
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "page.md").write_text("# Collections\n\nA collection holds entities and vectors.\n")
    assert run(tmp_path, "rag_core", "index", str(docs), "-q", **offline()).returncode == 0
    result = run(
        tmp_path,
        "rag_core",
        "ask",
        "what is a collection",
        LLM_MODEL="Qwen/Qwen2.5-7B-Instruct",
        HF_HOME=str(tmp_path / "hf"),  # an empty cache
        HF_HUB_OFFLINE="1",
        **offline(),
    )
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip()
    assert error.startswith("error: The answer model 'Qwen/Qwen2.5-7B-Instruct'"), error
    assert "LLM_MODEL to a local folder" in error and "Traceback" not in error


def test_sync_needs_only_discord(tmp_path: Path) -> None:
    """`python -m bot sync` publishes the commands without loading any model or the database."""

    async def sync() -> list[str]:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=tmp_path / "data",
            embedding_model=str(tmp_path / "no-such-model"),
            llm_model=str(tmp_path / "no-such-llm"),
            discord_token="fake.bot.token",  # type: ignore[arg-type]
        )
        async with FakeDiscord() as fake:
            fake.add_guild("Docs")
            await bot_main.sync_commands(settings)
            puts = fake.requests_to("PUT /applications/*/commands")
            assert len(puts) == 1 and puts[0].status == 200
            return [command["name"] for command in puts[0].json]

    import asyncio

    names = asyncio.run(sync())
    assert {"ask", "reindex", "flags", "stats"} <= set(names)
    assert not (tmp_path / "data").exists()


def test_unreachable_discord_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "fake.bot.token")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{closed_port()}/api/v10")
    code = bot_main.main(["--log-level", "CRITICAL", "sync"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: cannot reach Discord (cannot connect to 127.0.0.1:"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# --- output and exit codes of `index` -------------------------------------------------------------


def test_index_prints_plain_progress_when_not_on_a_terminal(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "page.md").write_text("# Collections\n\nA collection holds entities and vectors.\n")
    result = run(
        tmp_path, "rag_core", "index", str(docs), "--base-url", "https://x.example/", **offline()
    )
    assert result.returncode == 0, result.stderr
    # stdout: the report only; stderr: plain progress lines, no redrawn bars, no library chatter.
    assert result.stdout.splitlines()[-1].startswith("added 1, updated 0")
    assert "\r" not in result.stderr and "it/s" not in result.stderr, result.stderr
    assert "progress: fetched 1" in result.stderr
    assert all(line.startswith("progress: ") for line in result.stderr.splitlines()), result.stderr


def test_index_where_every_source_fails_exits_non_zero(tmp_path: Path) -> None:
    result = run(tmp_path, "rag_core", "index", "/no/such/folder", "-q", **offline())
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert output.count("no such file or folder") == 1, output
    assert "error: no document could be read from any source" in result.stderr


@pytest.mark.slow
def test_ask_prints_only_the_answer_on_stdout_and_exits_quietly(
    tmp_path: Path, smollm2_dir: Path, vllm_env: Path
) -> None:
    """stdout is a real model's answer, sources and timings; engine logs go to stderr; exit is
    clean."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hnsw.md").write_text("# HNSW\n\nHNSW builds a layered graph; M sets its degree.\n")
    assert run(tmp_path, "rag_core", "index", str(docs), "-q", **offline()).returncode == 0
    result = run(
        tmp_path,
        "rag_core",
        "ask",
        "What does M mean for HNSW?",
        LLM_MODEL=str(smollm2_dir),
        LLM_MAX_MODEL_LEN="2048",
        LLM_ENFORCE_EAGER="true",
        LLM_KV_CACHE_BYTES=str(128 * 2**20),
        LLM_MAX_TOKENS="24",
        LLM_TEMPERATURE="0",
        RELEVANCE_THRESHOLD="-1",
        **offline(),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    sources = lines.index("Sources:")
    words = set(" ".join(lines[:sources]).lower().split())
    assert len(words & {"the", "a", "is", "of", "to", "and", "in", "hnsw", "m", "graph"}) >= 2
    assert lines[sources + 1].startswith("[1] HNSW <file://")
    assert lines[-1].startswith("embed ") and "first token" in lines[-1]
    # Before: ~40 vLLM INFO/WARNING lines led stdout, a TypeError followed the answer.
    assert not any(" INFO " in line or " WARNING " in line for line in lines), result.stdout
    for noise in ("Traceback", "TypeError", "Exception ignored", "EngineDeadError"):
        assert noise not in result.stdout + result.stderr, result.stderr


def offline() -> dict[str, str]:
    return {"EMBEDDING_MODEL": offline_model_path(), "EMBEDDING_DEVICE": "cpu"}
