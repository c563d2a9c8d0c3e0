"""A full disk during a reindex: a clear message, the live index kept, no version left behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_core.config import Settings
from rag_core.errors import StoreFullError
from rag_core.runtime import open_rag
from rag_core.search.lite_engine import RESERVE_BYTES, RESERVE_SUFFIX
from tests.conftest import offline_model_path


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 32 MiB file system (tmpfs), so writes fail with ENOSPC as on a full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def write_pages(folder: Path, name: str, count: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        body = f"{name} page {i} explains collections, partitions and vector indexes. " * 30
        (folder / f"{name}-{i}.md").write_text(f"# {name.title()} {i}\n\n{body}\n")
    return folder


async def test_full_disk_fails_the_reindex_cleanly(
    small_disk: Path, tmp_path: Path, embedder
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=small_disk / "data",
        embedding_model=offline_model_path(),
        embedding_device="cpu",
    )
    first = write_pages(tmp_path / "first", "alpha", 3)
    second = write_pages(tmp_path / "second", "beta", 3)
    async with open_rag(settings, embedder=embedder) as rag:
        assert (await rag.indexer.run([str(first)])).published
        reserve = Path(settings.milvus_target + RESERVE_SUFFIX)
        assert reserve.stat().st_size == RESERVE_BYTES
        live = rag.store.live()
        count = rag.store.count()
        # Fill the disk, all but a few KiB, as another program would.
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        ballast = small_disk / "ballast"
        ballast.write_bytes(b"\0" * (free - 16 * 1024))

        with pytest.raises(StoreFullError) as failed:
            await rag.indexer.run([str(second)])
        message = failed.value.user_message
        assert "No space left on device" in message and "free disk space" in message
        assert "unavailable" not in message
        # The live index is untouched and the unfinished version is gone now, not next run.
        assert rag.store.live() == live and rag.store.count() == count
        assert rag.store.client.list_collections() == [live.name]

        ballast.unlink()  # the admin frees space: the next run works and takes its reserve back
        report = await rag.indexer.run([str(second)])
        assert report.published and report.added == 3
        assert reserve.stat().st_size == RESERVE_BYTES
