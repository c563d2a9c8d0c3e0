"""Prefill and decode speed of one model in float32 vs bfloat16 on this machine's vLLM (CPU).

    .venv/bin/python bench/dtype_bench.py /tmp/answer-bench/models/qwen0.5b-shape

Why: on CPUs without bf16 instructions (no avx512_bf16 / amx_bf16), vLLM's bf16 matmuls fall back
to slow kernels, so `LLM_DTYPE=auto` runs float32 there. One 1,800-token prompt of random ids,
prefix caching off; prefill = a 1-token generation, decode = 32 more tokens. Each dtype runs in
its own process (one engine per process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def measure(model: str, dtype: str) -> None:
    import random

    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model,
        dtype=dtype,
        max_model_len=2048,
        enforce_eager=True,
        kv_cache_memory_bytes=512 * 2**20,
        enable_prefix_caching=False,
    )
    random.seed(0)
    prompt = {"prompt_token_ids": [random.randrange(1000, 30000) for _ in range(1800)]}
    one = SamplingParams(max_tokens=1)
    llm.generate([prompt], one, use_tqdm=False)  # warm-up
    t = time.perf_counter()
    llm.generate([prompt], one, use_tqdm=False)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    llm.generate([prompt], SamplingParams(max_tokens=33, ignore_eos=True), use_tqdm=False)
    decode = 32 / (time.perf_counter() - t - prefill)
    print(f"| {dtype} | {prefill:.1f} s ({1800 / prefill:.0f} tokens/s) | {decode:.1f} tokens/s |")


def main() -> None:
    if len(sys.argv) == 3:
        measure(sys.argv[1], sys.argv[2])
        return
    model = sys.argv[1]
    print("| dtype | prefill of 1,800 tokens | decode |\n|---|---|---|", flush=True)
    for dtype in ("float32", "bfloat16"):
        out = subprocess.run(
            [sys.executable, __file__, model, dtype], capture_output=True, text=True, check=True
        )
        print(next(line for line in out.stdout.splitlines() if line.startswith("| ")), flush=True)


if __name__ == "__main__":
    main()
