"""Generator: a real vLLM engine and a real vLLM server, both running a tiny random Llama on CPU.

The model's text is noise: tests assert mechanics (streaming, interleaving, aborts, timeouts,
engine death and rebuild, HTTP errors), never wording. The tiny model never emits EOS, so every
request runs to max_tokens and long streams are deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
from collections.abc import Callable

import psutil
import pytest
from aiohttp import web
from pydantic import SecretStr

pytest.register_assert_rewrite("tests.llm_fixtures")  # before its import below, as a plugin

from rag_core import errors  # noqa: E402
from rag_core.answer.llm import (  # noqa: E402
    GenerationChunk,
    Generator,
    RemoteGenerator,
    create_generator,
    engine_dtype,
    read_cpu_flags,
)
from tests.llm_fixtures import (  # noqa: E402
    SERVER_API_KEY,
    engine_processes,
    free_port,
    server_metric,
)

MESSAGES = [
    {"role": "system", "content": "Answer from the docs."},
    {"role": "user", "content": "What do the HNSW parameters mean?"},
]


async def collect(
    gen: Generator, prompt: str, **kw: object
) -> tuple[list[GenerationChunk], list[float]]:
    """All chunks of one request and the time each arrived (s after the call)."""
    start = time.perf_counter()
    chunks, times = [], []
    async for chunk in gen.stream(prompt, **kw):  # type: ignore[arg-type]
        chunks.append(chunk)
        times.append(time.perf_counter() - start)
    return chunks, times


async def eventually(check: Callable[[], bool], within_s: float = 5.0) -> bool:
    """Poll `check` until it holds or `within_s` passes; its last answer."""
    for _ in range(int(within_s / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def assert_no_unfinished(engine) -> None:
    """The engine's output processor tracks each request until it finishes or is aborted."""
    assert await eventually(lambda: engine.get_num_unfinished_requests() == 0)


@pytest.fixture(scope="module", autouse=True)
def _boot_server_early(request: pytest.FixtureRequest) -> None:
    """Start the vLLM server (~35-60 s to boot) now, so it boots while the local tests run."""
    wanted = [i for i in request.session.items if i.module is request.module]
    if any("remote_generator" in getattr(i, "fixturenames", ()) for i in wanted):
        request.getfixturevalue("vllm_server_process")


# --- tokenizer, template, budgets: no engine needed -------------------------------------------


@pytest.fixture(scope="module")
async def offline_remote(llm_settings):
    """A RemoteGenerator aimed at a closed port: tokenizer work and error paths, no server."""
    settings = llm_settings.model_copy(
        update={"llm_backend": "remote", "llm_remote_url": f"http://127.0.0.1:{free_port()}/v1"}
    )
    gen = await create_generator(settings)
    yield gen
    await gen.aclose()


async def test_render_and_count_tokens_use_the_models_tokenizer(offline_remote):
    prompt = offline_remote.render(MESSAGES)
    assert prompt.startswith("<s><|system|>\nAnswer from the docs.</s>\n<|user|>\n")
    assert prompt.endswith("<|assistant|>\n")
    # Special tokens in the rendered text count once each; nothing is added.
    assert offline_remote.count_tokens("<s></s>") == 2
    assert offline_remote.count_tokens(prompt) > offline_remote.count_tokens("HNSW") > 0
    assert offline_remote.max_model_len == 1024


async def test_prompt_longer_than_context_is_refused_before_any_request(offline_remote):
    prompt = offline_remote.render([{"role": "user", "content": "index " * 1100}])
    with pytest.raises(errors.GenerationError) as info:
        await anext(offline_remote.stream(prompt))
    assert "too long" in info.value.user_message


async def test_server_down_gives_a_clear_generation_error(offline_remote):
    with pytest.raises(errors.GenerationError) as info:
        await anext(offline_remote.stream(offline_remote.render(MESSAGES)))
    assert "unreachable" in info.value.user_message
    assert offline_remote.settings.llm_remote_url in info.value.detail  # hosts go to logs only


async def test_remote_url_must_be_set(llm_settings):
    settings = llm_settings.model_copy(update={"llm_backend": "remote", "llm_remote_url": ""})
    with pytest.raises(errors.ConfigError):
        await create_generator(settings)


async def test_a_closed_generator_refuses_requests(llm_settings):
    settings = llm_settings.model_copy(
        update={"llm_backend": "remote", "llm_remote_url": f"http://127.0.0.1:{free_port()}/v1"}
    )
    gen = await create_generator(settings)
    await gen.aclose()
    await gen.aclose()  # idempotent
    with pytest.raises(errors.GenerationError):
        await anext(gen.stream(gen.render(MESSAGES)))


@pytest.fixture
async def scripted_server():
    """An HTTP server whose /v1/completions answer a test scripts: status codes and broken
    streams that a real vLLM server cannot be made to produce on demand."""
    replies: list[web.StreamResponse | None] = []
    seen: list[dict] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        seen.append({"auth": request.headers.get("Authorization"), "body": await request.json()})
        reply = replies.pop(0)
        if reply is None:  # a stream cut before its end
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b'data: {"choices": [{"text": "par", "finish_reason": null}]}\n\n')
            return resp
        return reply

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/v1", replies, seen
    await runner.cleanup()


async def test_http_errors_are_mapped(llm_settings, scripted_server):
    url, replies, seen = scripted_server
    settings = llm_settings.model_copy(
        update={
            "llm_backend": "remote",
            "llm_remote_url": url,
            "llm_api_key": SecretStr("s3cret"),
            "llm_remote_api": "completions",
        }
    )
    gen = await create_generator(settings)
    try:
        prompt = gen.render(MESSAGES)
        replies += [
            web.Response(status=503, text="overloaded"),
            web.Response(status=500, text="boom"),
            None,
        ]
        with pytest.raises(errors.GenerationError) as busy:
            await collect(gen, prompt)
        assert "busy" in busy.value.user_message and "503" in busy.value.detail
        with pytest.raises(errors.GenerationError) as failed:
            await collect(gen, prompt)
        assert "500" in failed.value.detail and "boom" in failed.value.detail
        with pytest.raises(errors.GenerationError) as cut:
            await collect(gen, prompt)
        assert "early" in cut.value.detail
        # The key travels as a Bearer header and never appears in messages meant for logs.
        assert seen[0]["auth"] == "Bearer s3cret"
        assert all("s3cret" not in e.value.detail for e in (busy, failed, cut))
        assert seen[0]["body"]["prompt"] == prompt and seen[0]["body"]["stream"] is True
    finally:
        await gen.aclose()


# --- the local engine ---------------------------------------------------------------------------


def test_auto_dtype_is_float32_only_on_cpus_without_bf16() -> None:
    assert engine_dtype("auto", on_cpu=True, cpu_flags="fpu sse2 avx2 fma") == "float32"
    assert engine_dtype("auto", on_cpu=True, cpu_flags="avx2 avx512f avx512_bf16") == "auto"
    assert engine_dtype("auto", on_cpu=True, cpu_flags="avx2 amx_bf16 amx_tile") == "auto"
    assert engine_dtype("auto", on_cpu=False, cpu_flags="avx2") == "auto"  # a GPU build
    assert engine_dtype("bfloat16", on_cpu=True, cpu_flags="avx2") == "bfloat16"  # explicit wins


async def test_the_engine_runs_the_dtype_auto_chose_here(local_generator, llm_settings):
    import torch

    assert llm_settings.llm_dtype == "auto"
    chosen = engine_dtype("auto", on_cpu=True, cpu_flags=read_cpu_flags())
    running = local_generator.engine.vllm_config.model_config.dtype
    if chosen == "float32":
        assert running == torch.float32
    else:  # a CPU with bf16 instructions: vLLM's own choice for the bf16 checkpoint
        assert running in (torch.bfloat16, torch.float16, torch.float32)


@pytest.mark.slow
async def test_deltas_stream_before_the_end(local_generator, record_property):
    prompt = local_generator.render(MESSAGES)
    await collect(local_generator, prompt, max_tokens=4)  # warm-up: first request is slower
    chunks, times = await collect(local_generator, prompt, max_tokens=48)

    assert len(chunks) >= 6  # several deltas, not one final blob
    assert [c.finished for c in chunks].count(True) == 1 and chunks[-1].finished
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 48
    assert chunks[-1].prompt_tokens == local_generator.count_tokens(prompt)
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts)
    # The first delta arrives well before the last one (the tiny model answers in half a second
    # on a busy 2-core host, of which prefill and scheduling take a fair share: 1/2, not 1/4).
    assert times[0] < times[-1] / 2
    rate = 48 / times[-1]
    record_property("ttft_s", times[0])
    record_property("single_stream_tok_s", rate)
    print(f"\nsingle stream: ttft {times[0] * 1000:.0f} ms, {len(chunks)} chunks, {rate:.0f} tok/s")


@pytest.mark.slow
async def test_concurrent_streams_interleave(local_generator, record_property):
    prompt = local_generator.render(MESSAGES)
    arrivals: list[int] = []

    async def one(i: int) -> GenerationChunk:
        chunks = []
        async for chunk in local_generator.stream(prompt, max_tokens=48, request_id=f"conc-{i}"):
            arrivals.append(i)
            chunks.append(chunk)
        return chunks[-1]

    start = time.perf_counter()
    finals = await asyncio.gather(*(one(i) for i in range(8)))
    elapsed = time.perf_counter() - start

    assert all(c.finished and c.completion_tokens == 48 for c in finals)
    # Interleaved: every request's chunks are spread among the others', not run one by one.
    firsts = [arrivals.index(i) for i in range(8)]
    lasts = [len(arrivals) - 1 - arrivals[::-1].index(i) for i in range(8)]
    assert max(firsts) < min(lasts)
    switches = sum(a != b for a, b in itertools.pairwise(arrivals))
    assert switches >= 8 * 4
    assert local_generator.engine.get_num_unfinished_requests() == 0
    rate = 8 * 48 / elapsed
    record_property("concurrent8_tok_s", rate)
    print(f"\n8 concurrent streams: {rate:.0f} tok/s total, {switches} switches")


@pytest.mark.slow
async def test_cancelling_the_consumer_aborts_the_request(local_generator):
    engine = local_generator.engine
    prompt = local_generator.render(MESSAGES)
    started = asyncio.Event()

    async def consume() -> None:
        async for chunk in local_generator.stream(prompt, max_tokens=1000):
            if chunk.completion_tokens >= 3:
                started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    assert engine.get_num_unfinished_requests() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_no_unfinished(engine)

    # Leaving the loop early (break) inside aclosing() aborts as well.
    async with contextlib.aclosing(local_generator.stream(prompt, max_tokens=1000)) as stream:
        async for chunk in stream:
            if chunk.completion_tokens >= 3:
                assert engine.get_num_unfinished_requests() == 1
                break
    await assert_no_unfinished(engine)


@pytest.mark.slow
async def test_timeout_aborts_the_request(local_generator, llm_settings, monkeypatch):
    monkeypatch.setattr(llm_settings, "llm_timeout_s", 0.5)
    got: list[GenerationChunk] = []
    start = time.perf_counter()
    with pytest.raises(errors.GenerationTimeout) as info:
        async for chunk in local_generator.stream(
            local_generator.render(MESSAGES), max_tokens=1000
        ):
            got.append(chunk)
    assert 0.4 < time.perf_counter() - start < 5
    assert got and not got[-1].finished  # it was streaming when the deadline hit
    assert "too long" in info.value.user_message
    await assert_no_unfinished(local_generator.engine)


@pytest.mark.slow
async def test_engine_death_is_reported_then_the_engine_is_rebuilt(local_generator, monkeypatch):
    prompt = local_generator.render(MESSAGES)
    dead = local_generator.engine
    victims = engine_processes()
    assert victims, "no EngineCore child process found"
    restarts = local_generator.restarts
    victims_pids = [p.pid for p in victims]

    with pytest.raises(errors.EngineDeadError) as info:
        async for chunk in local_generator.stream(prompt, max_tokens=1000):
            if chunk.completion_tokens >= 3 and victims:
                for proc in victims:
                    proc.kill()  # SIGKILL mid-stream, as the OOM killer would
                victims = []
    assert "restarted" in info.value.user_message
    assert "Traceback" not in info.value.user_message and "/" not in info.value.user_message
    # SIGKILL is not instant on a busy host: the killed processes must be gone soon after.
    deadline = time.monotonic() + 15
    while any(psutil.pid_exists(pid) and _running(pid) for pid in victims_pids):
        assert time.monotonic() < deadline, "a killed engine process is still running"
        await asyncio.sleep(0.2)

    # The next requests work again; two at once share a single rebuild.
    results = await asyncio.gather(
        collect(local_generator, prompt, max_tokens=16),
        collect(local_generator, prompt, max_tokens=16),
    )
    assert all(chunks[-1].finish_reason == "length" for chunks, _ in results)
    assert local_generator.restarts == restarts + 1
    assert engine_processes()  # a new EngineCore
    assert local_generator.engine.get_num_unfinished_requests() == 0

    # The replaced engine was shut down, so its finalizer must do nothing: it also runs at
    # interpreter exit, when vLLM's module globals are already None.
    from vllm.v1.engine import async_llm

    monkeypatch.setattr(async_llm, "shutdown_prometheus", None)  # as at interpreter exit
    dead.__del__()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- the remote backend against a real vLLM server ----------------------------------------------


@pytest.fixture(scope="module")
async def remote_generator(vllm_server, llm_settings):
    settings = llm_settings.model_copy(
        update={
            "llm_backend": "remote",
            "llm_remote_url": vllm_server,
            "llm_api_key": SecretStr(SERVER_API_KEY),
        }
    )
    gen = await create_generator(settings)
    assert isinstance(gen, RemoteGenerator)
    yield gen
    await gen.aclose()


@pytest.mark.slow
async def test_remote_streams_several_chunks(remote_generator):
    prompt = remote_generator.render(MESSAGES)
    chunks, times = await collect(remote_generator, prompt, max_tokens=48)
    assert len(chunks) >= 8
    assert chunks[-1].finished and chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 48
    # The server counts the prompt as we do: same tokenizer, no second BOS.
    assert chunks[-1].prompt_tokens == remote_generator.count_tokens(prompt)
    assert times[0] < times[-1] / 2
    print(f"\nremote: ttft {times[0] * 1000:.0f} ms, {48 / times[-1]:.0f} tok/s")


@pytest.mark.slow
async def test_remote_timeout_aborts_on_the_server(remote_generator, monkeypatch, vllm_server):
    monkeypatch.setattr(remote_generator.settings, "llm_timeout_s", 0.5)
    with pytest.raises(errors.GenerationTimeout):
        await collect(remote_generator, remote_generator.render(MESSAGES), max_tokens=1000)
    # Closing the connection made the server abort the request.
    assert await eventually(lambda: server_metric(vllm_server, "vllm:num_requests_running") == 0)


@pytest.mark.slow
async def test_remote_wrong_api_key_is_a_generation_error(remote_generator, vllm_server):
    settings = remote_generator.settings.model_copy(update={"llm_api_key": SecretStr("wrong")})
    gen = await create_generator(settings)
    try:
        with pytest.raises(errors.GenerationError) as info:
            await collect(gen, gen.render(MESSAGES), max_tokens=4)
        assert "401" in info.value.detail and "wrong" not in info.value.detail
    finally:
        await gen.aclose()


@pytest.mark.slow
async def test_scoring_a_continuation_is_the_same_locally_and_on_a_server(
    local_generator, remote_generator
):
    """What the reranker reads: one prefill, each continuation token's log-probability."""
    prefix = "Milvus is a vector database. It stores embeddings and searches them."
    continuation = " What does Milvus store?"
    local = await local_generator.continuation_logprob(prefix, continuation)
    remote = await remote_generator.continuation_logprob(prefix, continuation)
    assert math.isfinite(local) and local < 0
    assert remote == pytest.approx(local, abs=1e-3)  # same weights, same token ids
    # Another continuation scores differently: the score reads the continuation's tokens.
    other = await local_generator.continuation_logprob(prefix, " zebra quantum 19530 ??")
    assert other != pytest.approx(local, abs=1e-3)
    # A prefix longer than the context is cut from the left, not refused.
    long_prefix = prefix * (local_generator.max_model_len // 8)
    assert local_generator.count_tokens(long_prefix) > local_generator.max_model_len
    assert math.isfinite(await local_generator.continuation_logprob(long_prefix, continuation))
    with pytest.raises(errors.GenerationError):
        await local_generator.continuation_logprob(prefix, "")


# --- any OpenAI-compatible server: /v1/chat/completions, no local tokenizer ---------------------


def remote_settings(llm_settings, url: str, **update: object):
    return llm_settings.model_copy(
        update={
            "llm_backend": "remote",
            "llm_remote_url": url,
            "llm_api_key": SecretStr(SERVER_API_KEY),
            **update,
        }
    )


@pytest.mark.slow
async def test_auto_picks_completions_on_vllm_and_chat_streams_the_same_prompt(
    remote_generator, llm_settings, vllm_server
):
    """On vLLM with the tokenizer here `auto` keeps /completions; /chat/completions sends the
    messages and the server's template counts them as the local one does."""
    assert remote_generator.api == "completions" and remote_generator.can_score
    gen = await create_generator(remote_settings(llm_settings, vllm_server, llm_remote_api="chat"))
    try:
        assert isinstance(gen, RemoteGenerator) and gen.api == "chat" and gen.server.vllm
        prompt = gen.render(MESSAGES)
        chunks, _ = await collect(gen, prompt, max_tokens=24)
        assert len(chunks) >= 4 and chunks[-1].finished and chunks[-1].finish_reason == "length"
        assert chunks[-1].completion_tokens == 24
        assert chunks[-1].prompt_tokens == gen.count_tokens(prompt)
    finally:
        await gen.aclose()


@pytest.mark.slow
async def test_without_a_local_tokenizer_the_server_counts_and_scoring_is_off(
    remote_generator, llm_settings, vllm_server, caplog
):
    """A model name with no tokenizer here (a hosted model's): chat API, the server's tokenize
    endpoint counts the prompt exactly, RERANK=llm says it cannot score; the context the server
    names in its "too long" error replaces a larger LLM_MAX_MODEL_LEN."""
    from rag_core.search.rerank import make_reranker

    settings = remote_settings(llm_settings, vllm_server, llm_model="hosted/not-here", rerank="llm")
    gen = await create_generator(settings)
    try:
        assert isinstance(gen, RemoteGenerator) and gen._tokenizer is None
        assert gen.api == "chat" and gen.server.tokenize == "vllm" and not gen.can_score
        prompt = gen.render(MESSAGES)
        chunks, _ = await collect(gen, prompt, max_tokens=8)
        exact = remote_generator.count_tokens(remote_generator.render(MESSAGES))
        assert chunks[-1].prompt_tokens == exact and chunks[-1].completion_tokens == 8
        assert gen.chars_per_token == 3.0  # a short prompt teaches the estimate nothing
        with pytest.raises(errors.GenerationError):
            await gen.continuation_logprob("Milvus stores vectors.", " What?")
        with caplog.at_level("WARNING"):
            assert make_reranker(settings, gen) is not None
        assert "RERANK=llm needs prompt log-probabilities" in caplog.text
        # A server that does not report its context: LLM_MAX_MODEL_LEN set too high.
        gen.max_model_len = 4096
        words = [{"role": "user", "content": "index " * 1100}]
        long = gen.render(words)
        with pytest.raises(errors.ContextLengthError) as info:
            await collect(gen, long, max_tokens=8)
        assert "too long" in info.value.user_message and gen.max_model_len == 1024
        # The long prompt, counted by the server, set the characters a token of estimates.
        long_exact = remote_generator.count_tokens(remote_generator.render(words))
        assert gen.chars_per_token == min(3.0, len(long) / long_exact)
    finally:
        await gen.aclose()


@pytest.fixture
async def openai_chat_server():
    """A server like Ollama's or a hosted API's: /v1/models and /v1/chat/completions only (no
    tokenize endpoint, usage in a last event after the finish), refusing long prompts with a
    context-length 400. vLLM always has a tokenize endpoint and reports its context, so it
    cannot show these; the replies follow the OpenAI API's shapes."""
    seen: list[dict] = []

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "chat-model", "owned_by": "library"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        size = sum(len(m["content"]) for m in body["messages"])
        if size > 3000:
            return web.json_response(
                {"error": {"message": "maximum context length is 1000 tokens", "code": 400}},
                status=400,
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events = [
            {"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]},
            {"choices": [{"delta": {"content": "HNSW builds"}, "finish_reason": None}]},
            {"choices": [{"delta": {"content": " a graph [1]."}, "finish_reason": None}]},
            {"choices": [{"delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": size // 4, "completion_tokens": 6}},
        ]
        for event in events:
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/v1", seen
    await runner.cleanup()


async def test_a_plain_openai_server_gets_standard_fields_and_an_estimated_budget(
    llm_settings, openai_chat_server
):
    url, seen = openai_chat_server
    settings = remote_settings(
        llm_settings,
        url,
        llm_model="chat-model",
        llm_repetition_penalty=1.1,
        llm_max_model_len=8192,
    )
    gen = await create_generator(settings)
    try:
        assert isinstance(gen, RemoteGenerator) and gen.api == "chat"
        assert gen.server is not None and gen.server.tokenize is None and not gen.server.vllm
        prompt = gen.render(MESSAGES)
        chunks, _ = await collect(gen, prompt)
        assert "".join(c.text for c in chunks) == "HNSW builds a graph [1]."
        # The finish waits for the usage event after it: the server's own counts.
        size = sum(len(m["content"]) for m in MESSAGES)
        assert (chunks[-1].finish_reason, chunks[-1].completion_tokens) == ("stop", 6)
        assert chunks[-1].prompt_tokens == size // 4
        assert seen[0]["messages"] == MESSAGES and seen[0]["model"] == "chat-model"
        # vLLM's extensions are not sent to other servers.
        assert "repetition_penalty" not in seen[0] and "prompt" not in seen[0]
        assert seen[0]["stream_options"] == {"include_usage": True}
        # Budgets: a conservative estimate (fewer characters a token than English prose).
        assert gen.count_tokens(prompt) >= len(prompt) / 3
        with pytest.raises(errors.ContextLengthError):
            await collect(gen, gen.render([{"role": "user", "content": "x " * 2000}]))
        assert gen.max_model_len == 1000  # learnt from the error (LLM_MAX_MODEL_LEN was 8192)
    finally:
        await gen.aclose()


async def test_the_answer_path_retries_a_prompt_the_server_finds_too_long(
    indexed_settings, embedder, llm_settings, openai_chat_server
):
    """The answer path end to end on a chat server: passages packed by the estimate overflow
    the server's real context; the answer is retried once with fewer passages."""
    from rag_core.runtime import open_rag

    url, seen = openai_chat_server
    remote = remote_settings(llm_settings, url, llm_model="chat-model", llm_max_model_len=8192)
    settings = on_indexed_kb(remote, indexed_settings)
    async with open_rag(settings, embedder=embedder, with_llm=True) as rag:
        assert rag.answerer is not None
        prepared = await rag.answerer.prepare("What do the HNSW parameters mean?")
        first = len(prepared.sources)
        stream = rag.answerer.stream(prepared)
        text = "".join([part async for part in stream])
    assert text == "HNSW builds a graph [1]." and stream.result is not None
    assert len(seen) == 2 and len(stream.result.sources) <= len(prepared.sources) < first
    assert sum(len(m["content"]) for m in seen[1]["messages"]) <= 3000


@pytest.mark.slow
async def test_doctor_names_the_endpoint_the_context_and_what_needs_vllm(
    llm_settings, vllm_server, openai_chat_server
):
    from bot.doctor import Status, check_remote_engine

    vllm = await check_remote_engine(remote_settings(llm_settings, vllm_server))
    assert vllm.status is Status.OK, vllm.message
    assert "(vLLM)" in vllm.message and "/v1/completions" in vllm.message
    assert "context 1024 tokens" in vllm.message and "the model's tokenizer" in vllm.message
    assert SERVER_API_KEY not in vllm.message
    hosted = remote_settings(llm_settings, vllm_server, llm_model="hosted/not-here")
    wrong_name = await check_remote_engine(hosted)
    assert (
        wrong_name.status is Status.FAIL and "not LLM_MODEL=hosted/not-here" in wrong_name.message
    )
    url, _ = openai_chat_server
    plain = remote_settings(llm_settings, url, llm_model="chat-model", rerank="llm")
    other = await check_remote_engine(plain)
    assert other.status is Status.WARN and "RERANK=llm needs prompt log-probabilities" in (
        other.message
    )
    assert "/v1/chat/completions" in other.message and "an estimate" in other.message
    assert f"LLM_MAX_MODEL_LEN={plain.llm_max_model_len} assumed" in other.message


@pytest.mark.slow
async def test_the_answer_path_on_vllms_chat_endpoint_without_a_tokenizer_here(
    indexed_settings, embedder, llm_settings, vllm_server
):
    """An answer from retrieval to sources through /v1/chat/completions, with a model name that
    has no tokenizer here: the server counts the prompt, the passages fit its context."""
    from rag_core.runtime import open_rag

    remote = remote_settings(
        llm_settings, vllm_server, llm_model="hosted/not-here", llm_max_tokens=16
    )
    settings = on_indexed_kb(remote, indexed_settings)
    async with open_rag(settings, embedder=embedder, with_llm=True) as rag:
        assert rag.answerer is not None and isinstance(rag.generator, RemoteGenerator)
        assert rag.generator.api == "chat"
        prepared = await rag.answerer.prepare("What do the HNSW parameters mean?")
        assert prepared.sources and prepared.prompt is not None
        stream = rag.answerer.stream(prepared)
        text = "".join([part async for part in stream])
    answer = stream.result
    assert answer is not None and text and answer.completion_tokens == 16
    assert answer.finish_reason == "length"
    assert answer.prompt_tokens <= 1024 - 16  # the server's own count, within its context


def on_indexed_kb(settings, indexed_settings):
    """`settings` answering over the session's indexed fixture docs, never refusing."""
    return settings.model_copy(
        update={
            "data_dir": indexed_settings.data_dir,
            "embedding_model": indexed_settings.embedding_model,
            "docs_base_url": indexed_settings.docs_base_url,
            "relevance_threshold": 0.0,
        }
    )
