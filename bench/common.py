"""Shared by the benchmarks: the question set, percentiles, and a description of the machine."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "corpus" / "milvus-docs"

# Questions a community would ask of the Milvus docs (plus one exact config key).
QUESTIONS = [
    "What do the parameters for HNSW mean?",
    "How do I enable TLS between Milvus components?",
    "What is the difference between strong and bounded consistency?",
    "How can I limit the memory used by a query node?",
    "Which index types can run on a GPU?",
    "How do I create a partition key?",
    "What is a sparse vector and how do I search it?",
    "How do I back up a collection?",
    "What does the nlist parameter of IVF_FLAT control?",
    "How do I upgrade a Milvus cluster installed with Helm?",
    "How do I configure role-based access control?",
    "What is mmap and when should I enable it?",
    "How do I insert data into a collection?",
    "What metric types does Milvus support?",
    "How do I use Milvus Lite from Python?",
    "What is the maximum dimension of a vector field?",
    "How do I delete entities by a filter expression?",
    "queryNode.segcore.chunkRows",
    "What are resource groups used for?",
    "How does Milvus handle time synchronization?",
]


def records(path: Path) -> list[dict]:
    """A JSONL file's records; blank lines and # comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(s) for s in lines if s.strip() and not s.lstrip().startswith("#")]


def pct(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (q in [0, 1])."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    # The load average says whether other work shared the machine during the run.
    load = "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores{gpu}, {mem:.0f} GiB RAM, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, {load}"
    )
