"""LLM fixtures: a tiny random Llama built once per session, one shared vLLM engine, a vLLM server.

Registered once in tests/conftest.py: as a plugin there is one engine for the whole session,
whichever modules use it. Importing the fixtures into several modules would build one engine
per module.

Engine start costs 12-60 s on a small CPU host, so every test shares `local_generator` on the
session event loop (pyproject sets that loop scope by default). A test that kills the engine
leaves a rebuilt one behind (LocalGenerator's death policy).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from tests.tiny_llama import build_tiny_llama

ENGINE_PROCESS = "VLLM::EngineCor"  # /proc comm is cut to 15 characters


def engine_processes() -> list[psutil.Process]:
    """Live EngineCore processes of this process's own engines (direct children only: the
    vLLM server's EngineCore is a grandchild and must survive the engine-death test)."""
    found = []
    for proc in psutil.Process().children(recursive=False):
        try:
            if proc.name().startswith(ENGINE_PROCESS) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(scope="session")
def vllm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """TMPDIR and caches in a folder we own: vLLM leaves ZeroMQ sockets in $TMPDIR and caches
    in ~/.cache/vllm. VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps the model inside the EngineCore
    process: the fastest start and the least memory (the product keeps vLLM's default)."""
    root = tmp_path_factory.mktemp("vllm")
    (root / "tmp").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(root / "tmp"))
        mp.setenv("VLLM_RPC_BASE_PATH", str(root / "tmp"))  # vLLM's IPC socket folder
        mp.setenv("VLLM_CACHE_ROOT", str(root / "cache"))
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_NO_USAGE_STATS", "1")
        mp.setattr(tempfile, "tempdir", str(root / "tmp"))  # gettempdir() caches its answer
        yield root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama (hidden 64, head_dim 32, vocab 2000) that never emits EOS."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def llm_settings(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Settings for the tiny model on CPU; tests may change fields with monkeypatch.setattr."""
    from rag_core.config import Settings

    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path_factory.mktemp("llm-data"),
        llm_backend="local",
        llm_model=str(tiny_model_dir),
        llm_dtype="auto",  # the product default: float32 on CPUs without bf16 instructions
        llm_max_model_len=1024,
        llm_enforce_eager=True,
        llm_kv_cache_bytes=64 * 2**20,
        llm_temperature=0.8,
        llm_max_tokens=64,
        llm_timeout_s=60.0,
    )


@pytest.fixture(scope="session")
async def local_generator(vllm_env: Path, llm_settings) -> AsyncIterator:
    """One LocalGenerator (one vLLM engine) for the session; shut down and checked at the end."""
    from rag_core.answer.llm import LocalGenerator

    generator = await LocalGenerator.create(llm_settings)
    yield generator
    await generator.aclose()
    # aclose() must leave no engine process behind.
    assert generator.engine is None
    _, alive = psutil.wait_procs(engine_processes(), timeout=10)
    assert not alive, f"EngineCore still running after aclose(): {alive}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVER_API_KEY = "test-key-not-secret"


class VllmServer:
    """A vLLM OpenAI-compatible server process for the tiny model."""

    def __init__(self, model_dir: Path, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = workdir / f"server-{self.port}.log"
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "bfloat16", "--max-model-len", "1024", "--enforce-eager",
            "--kv-cache-memory-bytes", str(64 * 2**20), "--api-key", SERVER_API_KEY,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            # Own session: if SIGTERM is not enough, its group (EngineCore too) can be killed.
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout_s: float = 240) -> str:
        """Block until /health answers 200; the base URL (…/v1)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"vLLM server exited with {self.proc.returncode}:\n{tail}")
            try:
                health = f"http://127.0.0.1:{self.port}/health"
                with urllib.request.urlopen(health, timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy after {timeout_s} s")
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: the server exits in < 1 s and stops its EngineCore
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def vllm_server_process(vllm_env: Path, tiny_model_dir: Path) -> Iterator[VllmServer]:
    """The server process, started but maybe not ready: request it early to boot in parallel."""
    server = VllmServer(tiny_model_dir, vllm_env)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_server(vllm_server_process: VllmServer) -> str:
    """The base URL (…/v1) of a ready vLLM server for the tiny model (API key SERVER_API_KEY)."""
    return vllm_server_process.wait_ready()


def server_metric(base_url: str, name: str) -> float:
    """Sum of a Prometheus metric of the server (e.g. vllm:num_requests_running)."""
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )
