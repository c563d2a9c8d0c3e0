"""The local engine at process end: a closed engine exits quietly, a killed bot leaves no engine.

Both concern what happens when the process that owns a LocalGenerator ends, so each test runs a
separate Python process (the bot's stand-in) on the tiny model and watches it from outside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.llm_fixtures import ENGINE_PROCESS

ROOT = Path(__file__).resolve().parents[1]

# The bot's stand-in: start an engine, stream a short answer, write the pids of every process
# below it to a file, then either close everything and exit ("close") or wait to be killed.
CHILD = """
import asyncio, json, sys
import psutil
from rag_core.config import Settings
from rag_core.answer.llm import LocalGenerator

async def main(model, data_dir, pids_file, mode):
    settings = Settings(
        _env_file=None, data_dir=data_dir, llm_backend="local", llm_model=model,
        llm_max_model_len=1024, llm_enforce_eager=True, llm_kv_cache_bytes=64 * 2**20,
        llm_timeout_s=120.0,
    )
    gen = await LocalGenerator.create(settings)
    prompt = gen.render([{"role": "user", "content": "What do the HNSW parameters mean?"}])
    async for chunk in gen.stream(prompt, max_tokens=8):
        pass
    print("streamed", chunk.completion_tokens, flush=True)
    pids = [p.pid for p in psutil.Process().children(recursive=True)]
    with open(pids_file, "w") as f:
        json.dump(pids, f)
    if mode == "kill":
        await asyncio.sleep(600)
        return
    # Closing while an answer still streams ends that stream as aborted.
    started, reasons = asyncio.Event(), []
    async def answer():
        async for c in gen.stream(prompt, max_tokens=1000):
            started.set()
            if c.finished:
                reasons.append(c.finish_reason)
    task = asyncio.create_task(answer())
    await asyncio.wait_for(started.wait(), 60)
    await gen.aclose()
    await asyncio.wait_for(task, 30)
    print("closed", reasons, flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


def _start(tiny_model_dir: Path, workdir: Path, mode: str, **env: str) -> subprocess.Popen[bytes]:
    """The child, its stdout and stderr going to workdir/out.txt and err.txt (files, not pipes:
    vLLM logs enough to fill a pipe nobody reads while the test waits)."""
    with open(workdir / "out.txt", "wb") as out, open(workdir / "err.txt", "wb") as err:
        # os.environ holds vllm_env's TMPDIR, VLLM_CACHE_ROOT, ...; `env` overrides them.
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tiny_model_dir), str(workdir / "data"),
             str(workdir / "pids.json"), mode],
            cwd=ROOT, env=os.environ | env, stdout=out, stderr=err,
        )  # fmt: skip


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _alive(pids: list[int]) -> dict[int, str]:
    """The processes among `pids` still running, with their names."""
    alive = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive[pid] = proc.name()
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_gone(pids: list[int], within_s: float = 10.0) -> dict[int, str]:
    """Poll until none of `pids` runs or `within_s` passes; those still running."""
    deadline = time.monotonic() + within_s
    while (alive := _alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


@pytest.mark.slow
def test_a_closed_engine_exits_without_errors(vllm_env: Path, tiny_model_dir: Path, tmp_path):
    child = _start(tiny_model_dir, tmp_path, "close")
    try:
        child.wait(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    out, err = _read(tmp_path / "out.txt"), _read(tmp_path / "err.txt")
    assert child.returncode == 0, err[-4000:]
    assert "streamed 8" in out and "closed ['abort']" in out, out
    # Only logs (vLLM logs to stdout): no finalizer error at exit, no traceback from shutdown.
    for bad in ("Traceback", "TypeError", "Exception ignored"):
        assert bad not in err, err[-4000:]
        assert bad not in out, out[-4000:]
    pids = json.loads((tmp_path / "pids.json").read_text())
    # aclose() left no engine process behind (multiprocessing's resource tracker exits on its own).
    assert pids and not _wait_gone(pids)


@pytest.mark.slow
def test_killing_the_bot_process_ends_its_engine_processes(
    vllm_env: Path, tiny_model_dir: Path, tmp_path
):
    # vLLM's default process layout (EngineCore plus a worker process), as the product runs it.
    child = _start(tiny_model_dir, tmp_path, "kill", VLLM_ENABLE_V1_MULTIPROCESSING="1")
    pids_file = tmp_path / "pids.json"
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 600
        while not pids_file.exists() or not pids_file.read_text():
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the engine did not start:\n{_read(tmp_path / 'err.txt')[-4000:]}")
            time.sleep(0.5)
        time.sleep(0.2)  # written in one call: let the child finish it
        pids = json.loads(pids_file.read_text())
        names = list(_alive(pids).values())
        assert any(name.startswith(ENGINE_PROCESS) for name in names), names

        child.kill()  # SIGKILL, as the OOM killer would: no code of the bot runs any more
        child.wait(timeout=30)
        survivors = _wait_gone(pids)
        assert not survivors, f"still running 10 s after the bot was killed: {survivors}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        for pid in _alive(pids):  # never leave an orphan engine behind, even when failing
            psutil.Process(pid).kill()
