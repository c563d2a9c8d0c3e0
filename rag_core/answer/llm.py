"""Generator: streams an answer from an in-process vLLM engine or a remote vLLM server.

One Generator is shared by every request. `stream()` yields `GenerationChunk` deltas; stopping
early (break + `aclose()`, task cancellation, the per-request timeout) aborts the request in the
engine, so an abandoned Discord answer frees its slot at once. Iterate it inside
`contextlib.aclosing(...)` so an early `break` closes it (and aborts) immediately, not at GC.

Both backends tokenize and render chat templates locally with the model's own tokenizer, so
token budgets are identical whichever backend answers.

Local backend and processes: vLLM's AsyncLLM always runs its EngineCore in a child process, so the
model never runs on the bot's event loop. The product leaves VLLM_ENABLE_V1_MULTIPROCESSING at
vLLM's default (1: EngineCore plus a worker process, the layout vLLM serves and tests with);
setting it to 0 keeps the model inside the EngineCore process, which starts faster and uses less
memory on small CPU hosts (the tests do that). vLLM starts its engine with the `spawn` method, so
a script that creates a LocalGenerator needs the `if __name__ == "__main__":` guard. The EngineCore
never outlives this process: it kills itself when this process is gone, even after a SIGKILL or
the OOM killer, so an orphan cannot keep the GPU memory a restarted bot needs (see
`_exit_with_parent`).

Engine death policy (local): if the EngineCore dies (OOM kill, crash), requests in flight get
`EngineDeadError` (user-safe message); the next request rebuilds the engine, once, shared by all
requests waiting for it, and then proceeds. The rebuild runs in a thread and is shielded, so the
event loop (Discord heartbeats) keeps running and a waiter's timeout does not cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, EngineDeadError, GenerationError, GenerationTimeout
from ..model_source import check_model_available
from .repetition import RepetitionGuard

if TYPE_CHECKING:
    import aiohttp
    from vllm.v1.engine.async_llm import AsyncLLM

    from ..config import Settings

log = logging.getLogger(__name__)

_TOO_LONG = (
    "The question and its context are too long for the model. Please ask a shorter question."
)
_UNREACHABLE = "The answer engine is unreachable right now. Please try again later."
_BUSY = "The answer engine is busy right now. Please try again in a moment."


@dataclass(slots=True)
class GenerationChunk:
    """One streamed delta; the last chunk of a request has `finished=True`.

    A stream stopped because the text looped ends with finish_reason "repetition" and
    `retract` > 0 when earlier chunks already carried repeats: drop that many characters from
    the end of the text received before this chunk, then append this chunk's `text`.
    """

    text: str  # the text since the previous chunk (may hold several tokens, or none)
    finished: bool
    finish_reason: str | None  # "stop" (EOS/stop string), "length", "abort", "repetition", ...
    prompt_tokens: int
    completion_tokens: int  # generated so far
    retract: int = 0  # characters of earlier chunks that are repeats (only on "repetition")


def _load_tokenizer(settings: Settings) -> Any:
    # Both backends load the model's tokenizer first: a model that is neither a folder nor
    # cached, with no hub in reach, is reported here in seconds with the ways out.
    check_model_available(settings.llm_model, setting="LLM_MODEL", what="answer model")
    from transformers import AutoTokenizer

    token = settings.hf_token.get_secret_value() or None
    try:
        return AutoTokenizer.from_pretrained(settings.llm_model, token=token)
    except Exception as exc:  # missing files, offline hub, gated model without a token
        raise ConfigError(
            "The answer model cannot be loaded: check LLM_MODEL.",
            detail=f"cannot load tokenizer for {settings.llm_model!r}: {exc}",
        ) from exc


class Generator(ABC):
    """Streams completions for rendered prompts; budgets, timeout and checks live here once."""

    model_name: str
    max_model_len: int

    def __init__(self, settings: Settings, tokenizer: Any, *, max_model_len: int) -> None:
        self.settings = settings  # read per request: llm_timeout_s, llm_max_tokens, sampling
        self._tokenizer = tokenizer
        self.model_name = settings.llm_model
        self.max_model_len = max_model_len
        self._closed = False

    def _encode(self, text: str) -> list[int]:
        # Rendered prompts already hold BOS and role markers: add nothing.
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in the LLM's own tokenizer (no special tokens added)."""
        return len(self._encode(text))

    def render(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to `messages`, ending with the assistant's turn."""
        try:
            prompt = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # no chat template (a base model), or a template error
            raise ConfigError(
                "The answer model has no usable chat template: use an instruct model.",
                detail=f"chat template of {self.model_name!r} failed: {exc}",
            ) from exc
        return str(prompt)

    async def stream(
        self,
        prompt: str,
        *,
        max_tokens: int | None = None,
        request_id: str | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[GenerationChunk]:
        """Stream the completion of a rendered `prompt`, chunk by chunk, until `finished`.

        `temperature` replaces LLM_TEMPERATURE for this request (0 = greedy: a yes/no check).

        When the text starts looping (settings.llm_stop_on_repetition), the request is aborted and
        the stream ends with a "repetition" chunk that keeps one copy of the looping part (see
        GenerationChunk.retract).
        Raises GenerationTimeout after settings.llm_timeout_s (the request is aborted),
        EngineDeadError if the engine died, GenerationError for everything else.
        """
        if self._closed:
            raise GenerationError(detail="generator is closed")
        prompt_ids = self._encode(prompt)
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise GenerationError(
                _TOO_LONG,
                detail=f"prompt has {len(prompt_ids)} tokens, context is {self.max_model_len}",
            )
        # The engine rejects prompt + max_tokens > context: shorten the answer instead.
        max_tokens = min(max_tokens or self.settings.llm_max_tokens, room)
        request_id = request_id or uuid.uuid4().hex
        timeout_s = self.settings.llm_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout_s
        # Passed only when set: backends that take no override keep working for answers.
        override = {} if temperature is None else {"temperature": temperature}
        chunks = self._generate(prompt, prompt_ids, max_tokens, request_id, **override)
        guard = RepetitionGuard() if self.settings.llm_stop_on_repetition else None
        sent = 0  # characters yielded so far
        try:
            while True:
                # The deadline covers only the waits on the backend, never a suspended `yield`:
                # a timeout scope across a yield would cancel the consumer's unrelated awaits.
                scope = asyncio.timeout_at(deadline)
                try:
                    async with scope:
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    if not scope.expired():
                        raise
                    # The cancellation that the timeout threw into the backend aborted it.
                    log.warning("request %s timed out after %.1f s", request_id, timeout_s)
                    raise GenerationTimeout(
                        detail=f"request {request_id} exceeded {timeout_s} s"
                    ) from exc
                if guard is not None and guard.feed(chunk.text):
                    # Returning closes the backend below, which aborts the request.
                    yield _loop_end(chunk, guard, sent, request_id)
                    return
                sent += len(chunk.text)
                yield chunk
                if chunk.finished:
                    return
        finally:
            # Closing the backend generator aborts a request still running (break, GC, errors).
            await chunks.aclose()

    async def continuation_logprob(self, prefix: str, continuation: str) -> float:
        """Mean log-probability per token of `continuation` right after `prefix`.

        One prefill, nothing generated: how likely the model finds a text in a context (the
        reranker asks how likely a question is after each passage). The prefix is cut from
        the left when both do not fit the context. Raises GenerationTimeout after
        settings.llm_timeout_s, GenerationError otherwise.
        """
        if self._closed:
            raise GenerationError(detail="generator is closed")
        tail = self._encode(continuation)
        if not tail:
            raise GenerationError(detail="nothing to score")
        head = self._encode(prefix)[-max(1, self.max_model_len - len(tail) - 1) :]
        ids = head + tail
        if len(ids) >= self.max_model_len:
            raise GenerationError(_TOO_LONG, detail=f"{len(ids)} tokens to score")
        request_id = f"score-{uuid.uuid4().hex[:12]}"
        try:
            async with asyncio.timeout(self.settings.llm_timeout_s):
                logprobs = await self._prompt_logprobs(ids, request_id)
        except TimeoutError as exc:
            raise GenerationTimeout(detail=f"request {request_id} timed out") from exc
        scored = logprobs[len(head) :]
        if len(scored) != len(tail):
            raise GenerationError(detail=f"{request_id}: {len(logprobs)} logprobs for {len(ids)}")
        return sum(scored) / len(scored)

    def sampling(self, temperature: float | None = None) -> dict[str, Any]:
        """Sampling settings sent with every request (both backends)."""
        s = self.settings
        return {
            "temperature": s.llm_temperature if temperature is None else temperature,
            "top_p": s.llm_top_p,
            "repetition_penalty": s.llm_repetition_penalty,
            "frequency_penalty": s.llm_frequency_penalty,
            "presence_penalty": s.llm_presence_penalty,
        }

    @abstractmethod
    def _generate(
        self,
        prompt: str,
        prompt_ids: list[int],
        max_tokens: int,
        request_id: str,
        *,
        temperature: float | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Backend stream; must abort the request when closed or cancelled before the end."""

    async def _prompt_logprobs(self, ids: list[int], request_id: str) -> list[float]:
        """Log-probability of each token of `ids` given the ones before (0.0 for the first)."""
        raise GenerationError(detail=f"{type(self).__name__} cannot score text")

    @abstractmethod
    async def aclose(self) -> None:
        """Release the engine or the HTTP session; idempotent."""


def _token_logprob(entry: Any, token_id: int) -> float:
    """The prompt token's own log-probability in one position of a vLLM prompt_logprobs list."""
    if entry is None:  # the first token: nothing before it to predict it from
        return 0.0
    found = entry.get(token_id)
    if found is None:  # an OpenAI-style JSON body keys token ids as strings
        found = entry.get(str(token_id))
    if found is None:
        raise GenerationError(detail=f"token {token_id} missing from prompt logprobs")
    value = found["logprob"] if isinstance(found, dict) else found.logprob
    return float(value)


def _loop_end(
    chunk: GenerationChunk, guard: RepetitionGuard, sent: int, request_id: str
) -> GenerationChunk:
    """The last chunk of a looping stream: this chunk's text up to the cut, and how much of the
    text already sent lies past it."""
    cut = guard.cut if guard.cut is not None else sent + len(chunk.text)
    log.info(
        "request %s stopped: its text repeats %r (%d tokens generated)",
        request_id,
        (guard.unit or "")[:80],
        chunk.completion_tokens,
    )
    return GenerationChunk(
        text=chunk.text[: max(0, cut - sent)],
        finished=True,
        finish_reason="repetition",
        prompt_tokens=chunk.prompt_tokens,
        completion_tokens=chunk.completion_tokens,
        retract=max(0, sent - cut),
    )


# --- local: vLLM AsyncLLM in this process (EngineCore in a child process) ---------------------


def engine_dtype(dtype: str, *, on_cpu: bool, cpu_flags: str) -> str:
    """`auto` on a CPU without bf16 instructions means float32.

    vLLM on such CPUs (AVX2 only) falls back from oneDNN to plain torch matmuls for bf16: a
    0.5B-shaped model prefilled 1,800 tokens 5.7x slower in bf16 than in fp32 (docs/benchmarks.md).
    """
    if dtype != "auto" or not on_cpu:
        return dtype
    flags = set(cpu_flags.split())
    return "auto" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


def read_cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("flags")), "")


def local_dtype(dtype: str) -> str:
    """The dtype this machine's vLLM build should run `dtype` (a setting) in."""
    from vllm.platforms import current_platform

    return engine_dtype(dtype, on_cpu=current_platform.is_cpu(), cpu_flags=read_cpu_flags())


# EngineCore processes end with this one. vLLM starts them with multiprocessing (spawn or fork)
# and has no parent-death handling of its own (its workers watch EngineCore through a pipe, but
# EngineCore watches nobody), so after a SIGKILL of this process EngineCore runs on as an orphan.
# Its target, EngineCoreProc.run_engine_core, is wrapped by a module-level function: spawn pickles
# it by name, fork inherits it. In the child a thread waits on multiprocessing's parent sentinel, a
# pipe whose write end this process holds: it reads EOF once the whole process is gone, whichever
# thread started the engine. (PR_SET_PDEATHSIG fires when the creating thread exits, and engines
# are built in worker threads.) vLLM's own death pipe then stops EngineCore's worker processes.
_original_run_engine_core: Callable[..., None] | None = None


def _exit_with_parent() -> None:
    """In an EngineCore process: SIGKILL itself as soon as the process that started it is gone.

    SIGKILL, not a graceful stop: nobody is left to receive results, a graceful vLLM shutdown
    waits on a busy or hung model, and the kernel frees the memory (GPU memory too) at exit.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the parent's end of the sentinel pipe closes
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_engine_core(*args: Any, **kwargs: Any) -> None:
    """EngineCoreProc.run_engine_core, bound to the life of the process that started it."""
    _exit_with_parent()
    run = _original_run_engine_core
    if run is None:  # spawned: this process imported vLLM afresh, unwrapped
        from vllm.v1.engine.core import EngineCoreProc

        run = EngineCoreProc.run_engine_core
    run(*args, **kwargs)


def _bind_engine_core_to_this_process() -> None:
    global _original_run_engine_core
    from vllm.v1.engine.core import EngineCoreProc

    current = getattr(EngineCoreProc, "run_engine_core", None)
    if current is None:
        log.warning("vLLM has no EngineCoreProc.run_engine_core: a killed bot may leave its engine")
        return
    if current is _run_engine_core:
        return
    _original_run_engine_core = current
    setattr(EngineCoreProc, "run_engine_core", staticmethod(_run_engine_core))  # noqa: B010


@functools.cache
def _engine_class() -> type[AsyncLLM]:
    from vllm.v1.engine.async_llm import AsyncLLM

    class OwnedAsyncLLM(AsyncLLM):
        """AsyncLLM whose finalizer does nothing once the engine is shut down.

        AsyncLLM.__del__ shuts down again; for an engine still referenced at interpreter exit that
        runs after vLLM's module globals are cleared and prints a TypeError traceback.
        """

        _shut_down = False
        _finalizing = staticmethod(sys.is_finalizing)  # the module global may be gone by then

        def shutdown(self, timeout: float | None = None) -> None:
            self._shut_down = True
            super().shutdown(timeout)

        def __del__(self) -> None:
            # At interpreter exit vLLM's atexit hooks and EngineCore's parent watch clean up.
            if not self._shut_down and not self._finalizing():
                super().__del__()

    return OwnedAsyncLLM


def _build_engine(settings: Settings) -> AsyncLLM:
    """Blocking (12-35 s on a small CPU host, minutes for a large model): run it in a thread."""
    from vllm import AsyncEngineArgs

    _bind_engine_core_to_this_process()
    dtype = local_dtype(settings.llm_dtype)
    args = AsyncEngineArgs(
        model=settings.llm_model,
        dtype=dtype,  # type: ignore[arg-type]
        max_model_len=settings.llm_max_model_len,
        gpu_memory_utilization=settings.llm_gpu_memory_utilization,
        tensor_parallel_size=settings.llm_tensor_parallel_size,
        enforce_eager=settings.llm_enforce_eager,
        # 0 = let vLLM size the cache from gpu_memory_utilization (or its CPU default).
        kv_cache_memory_bytes=settings.llm_kv_cache_bytes or None,
        hf_token=settings.hf_token.get_secret_value() or None,
    )
    started = time.perf_counter()
    try:
        engine = _engine_class().from_engine_args(args)
    except Exception as exc:  # bad model, out of memory, unsupported hardware
        raise GenerationError(
            "The answer engine could not start. Please try again later.",
            detail=f"vLLM engine for {settings.llm_model!r} failed to start: {exc}",
        ) from exc
    log.info(
        "vLLM engine for %s (dtype %s) ready in %.1f s",
        settings.llm_model,
        dtype,
        time.perf_counter() - started,
    )
    return engine


class LocalGenerator(Generator):
    """An in-process vLLM AsyncLLM, built once with `await LocalGenerator.create(settings)`."""

    def __init__(self, settings: Settings, tokenizer: Any, engine: AsyncLLM) -> None:
        super().__init__(settings, tokenizer, max_model_len=engine.model_config.max_model_len)
        self._engine: AsyncLLM | None = engine
        self._rebuild: asyncio.Task[AsyncLLM] | None = None
        self._requests: set[str] = set()  # in flight, aborted by aclose()
        self.restarts = 0  # engine rebuilds after a death, for metrics and tests

    @classmethod
    async def create(cls, settings: Settings) -> LocalGenerator:
        tokenizer = await asyncio.to_thread(_load_tokenizer, settings)
        engine = await asyncio.to_thread(_build_engine, settings)
        return cls(settings, tokenizer, engine)

    @property
    def engine(self) -> AsyncLLM | None:
        """The current engine (None while a rebuild is pending): for health checks and tests."""
        return self._engine

    def _sampling_params(self, max_tokens: int, temperature: float | None = None) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            **self.sampling(temperature),
            max_tokens=max_tokens,
            output_kind=RequestOutputKind.DELTA,  # only the new text in each output
        )

    async def _live_engine(self) -> AsyncLLM:
        engine = self._engine
        if engine is not None and not engine.errored:
            return engine
        if self._closed:
            raise GenerationError(detail="generator is closed")
        # One rebuild shared by every waiter; no await between the check and the assignment.
        if self._rebuild is None or self._rebuild.done():
            self._rebuild = asyncio.create_task(self._replace_engine())
        try:
            # shield: a waiter cancelled by its timeout must not cancel the rebuild.
            return await asyncio.shield(self._rebuild)
        except GenerationError as exc:
            raise EngineDeadError(detail=f"engine rebuild failed: {exc.detail}") from exc

    async def _replace_engine(self) -> AsyncLLM:
        old, self._engine = self._engine, None
        if old is not None:
            log.warning("vLLM engine is dead; shutting it down and starting a new one")
            await self._shutdown(old)  # frees its sockets and any surviving process
        engine = await asyncio.to_thread(_build_engine, self.settings)
        if self._closed:  # aclose() ran while we were building
            await self._shutdown(engine)
            raise GenerationError(detail="generator is closed")
        self._engine = engine
        self.restarts += 1
        return engine

    async def _generate(
        self,
        prompt: str,
        prompt_ids: list[int],
        max_tokens: int,
        request_id: str,
        *,
        temperature: float | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.inputs import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError
        from vllm.v1.engine.exceptions import EngineGenerateError

        engine = await self._live_engine()
        # Already-tokenized input: no second BOS, no deprecated raw-prompt path in vLLM.
        inputs = tokens_input(prompt_ids, prompt=prompt)
        done = 0
        self._requests.add(request_id)
        try:
            # Cancelling or closing this generator makes vLLM's generate() abort the request.
            async for out in engine.generate(
                inputs, self._sampling_params(max_tokens, temperature), request_id
            ):
                completion = out.outputs[0]
                done += len(completion.token_ids)
                yield GenerationChunk(
                    text=completion.text,
                    finished=out.finished,
                    finish_reason=completion.finish_reason,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=done,
                )
        except VllmEngineDeadError as exc:
            log.error("vLLM engine died during request %s", request_id)
            raise EngineDeadError(detail=f"vLLM engine died during request {request_id}") from exc
        except EngineGenerateError as exc:
            cause = exc.__cause__ or exc
            raise GenerationError(detail=f"request {request_id} failed: {cause!r}") from exc
        except GracefulHTTPError as exc:  # admission control: queue full
            raise GenerationError(_BUSY, detail=f"request {request_id}: {exc}") from exc
        except VLLMClientError as exc:  # request validation
            raise GenerationError(detail=f"request {request_id} rejected: {exc}") from exc
        finally:
            self._requests.discard(request_id)

    async def _prompt_logprobs(self, ids: list[int], request_id: str) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

        engine = await self._live_engine()
        # prompt_logprobs=0: each prompt token's own log-probability, no alternatives.
        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        self._requests.add(request_id)
        final = None
        try:
            async for out in engine.generate(tokens_input(ids), params, request_id):
                final = out
        except VllmEngineDeadError as exc:
            raise EngineDeadError(detail=f"vLLM engine died during request {request_id}") from exc
        except Exception as exc:
            raise GenerationError(detail=f"request {request_id} failed: {exc!r}") from exc
        finally:
            self._requests.discard(request_id)
        if final is None or final.prompt_logprobs is None:
            raise GenerationError(detail=f"request {request_id}: no prompt logprobs")
        return [_token_logprob(final.prompt_logprobs[i], t) for i, t in enumerate(ids)]

    async def _shutdown(self, engine: AsyncLLM) -> None:
        """Stop `engine` quietly: streams still running end with finish_reason 'abort'."""
        if self._requests and not engine.errored:
            with contextlib.suppress(Exception):  # best effort: the engine goes away anyway
                await engine.abort(list(self._requests))
        # Stop the output task first: if it saw EngineCore go away under it, it would log an
        # "output_handler failed" traceback for an ordinary shutdown.
        handler = engine.output_handler
        if handler is not None and handler.get_loop() is asyncio.get_running_loop():
            handler.cancel()
            await asyncio.wait({handler}, timeout=10)
        # Blocking (a few seconds while EngineCore exits): keep the event loop free.
        await asyncio.to_thread(engine.shutdown)

    async def aclose(self) -> None:
        """Shut the engine down (EngineCore process included); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._rebuild is not None and not self._rebuild.done():
            await asyncio.gather(self._rebuild, return_exceptions=True)
        engine, self._engine = self._engine, None
        if engine is not None:
            await self._shutdown(engine)
            log.info("vLLM engine shut down")


# --- remote: an OpenAI-compatible vLLM server -------------------------------------------------


class RemoteGenerator(Generator):
    """A vLLM OpenAI-compatible server: POST {llm_remote_url}/completions, streamed (SSE)."""

    def __init__(self, settings: Settings, tokenizer: Any, session: aiohttp.ClientSession) -> None:
        super().__init__(settings, tokenizer, max_model_len=settings.llm_max_model_len)
        self._base = settings.llm_remote_url.rstrip("/")
        self._session = session
        self._served_model = settings.llm_model

    @classmethod
    async def create(cls, settings: Settings) -> RemoteGenerator:
        import aiohttp

        if not settings.llm_remote_url.startswith(("http://", "https://")):
            raise ConfigError(
                "LLM_REMOTE_URL must be set (e.g. http://gpu1:8000/v1) when LLM_BACKEND=remote.",
                detail=f"bad llm_remote_url {settings.llm_remote_url!r}",
            )
        tokenizer = await asyncio.to_thread(_load_tokenizer, settings)
        key = settings.llm_api_key.get_secret_value()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # No total timeout: answers stream for a long time; stream() enforces llm_timeout_s.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        generator = cls(
            settings, tokenizer, aiohttp.ClientSession(headers=headers, timeout=timeout)
        )
        await generator._check_server()
        return generator

    async def _check_server(self) -> None:
        """Best effort: adopt the served model name and its context; a server down is fine."""
        import aiohttp

        try:
            async with self._session.get(
                f"{self._base}/models", timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                resp.raise_for_status()
                models = (await resp.json()).get("data") or []
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "LLM server %s not reachable yet (%s); will retry per request",
                self._base,
                type(exc).__name__,
            )
            return
        served = {m.get("id"): m for m in models if isinstance(m, dict)}
        if self._served_model not in served and len(served) == 1:
            # e.g. the server was started with a local path: same weights, another name.
            (name,) = served
            log.warning("LLM server serves %r, not %r: using it", name, self._served_model)
            self._served_model = str(name)
        server_len = (served.get(self._served_model) or {}).get("max_model_len")
        if isinstance(server_len, int) and server_len < self.max_model_len:
            log.warning(
                "LLM server context is %d tokens (< LLM_MAX_MODEL_LEN %d): using it",
                server_len,
                self.max_model_len,
            )
            self.max_model_len = server_len

    @contextlib.asynccontextmanager
    async def _completions(
        self, body: dict[str, Any], request_id: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST /completions: the response when it is a 200, else the mapped GenerationError."""
        import aiohttp

        try:
            async with self._session.post(
                f"{self._base}/completions", json=body, headers={"X-Request-Id": request_id}
            ) as resp:
                if resp.status != 200:
                    raise self._http_error(resp.status, await resp.text(), request_id)
                yield resp
        except aiohttp.ClientConnectorError as exc:
            raise GenerationError(
                _UNREACHABLE, detail=f"cannot reach LLM server {self._base}: {exc}"
            ) from exc

    def _http_error(self, status: int, body: str, request_id: str) -> GenerationError:
        detail = f"LLM server {self._base} answered HTTP {status} to {request_id}: {body[:500]}"
        if status in (429, 503):
            return GenerationError(_BUSY, detail=detail)
        if status == 400 and "context" in body.lower():
            return GenerationError(_TOO_LONG, detail=detail)
        return GenerationError(detail=detail)  # 401/403 (key), 404 (model name), 5xx

    def _sampling_body(self, temperature: float | None = None) -> dict[str, Any]:
        """Sampling fields of the request body. `repetition_penalty` is a vLLM extension of the
        OpenAI API: sent only when it does something, so plain OpenAI-style servers accept the
        default request."""
        body = self.sampling(temperature)
        if body["repetition_penalty"] == 1.0:
            del body["repetition_penalty"]
        return body

    async def _generate(
        self,
        prompt: str,
        prompt_ids: list[int],
        max_tokens: int,
        request_id: str,
        *,
        temperature: float | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        import aiohttp

        body = {
            "model": self._served_model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            **self._sampling_body(temperature),
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "add_special_tokens": False,  # the rendered prompt already starts with BOS
        }
        prompt_tokens, done, finished = len(prompt_ids), 0, False
        try:
            async with self._completions(body, request_id) as resp:
                try:
                    async for raw in resp.content:  # one server-sent-event line at a time
                        line = raw.strip()
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            break
                        event = json.loads(data)
                        if "error" in event:
                            raise GenerationError(detail=f"LLM server error: {event['error']}")
                        usage = event.get("usage") or {}
                        prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                        for choice in event.get("choices") or []:
                            text = choice.get("text") or ""
                            # Exact counts come with continuous_usage_stats; else count locally.
                            done = usage.get("completion_tokens", done + self.count_tokens(text))
                            reason = choice.get("finish_reason")
                            finished = reason is not None
                            yield GenerationChunk(text, finished, reason, prompt_tokens, done)
                finally:
                    if not finished:
                        # Dropping the connection is how the server learns to abort.
                        resp.close()
        except (aiohttp.ClientError, ValueError) as exc:  # dropped stream, bad JSON
            raise GenerationError(
                detail=f"LLM server {self._base} stream failed for {request_id}: {exc!r}"
            ) from exc
        if not finished:
            raise GenerationError(detail=f"LLM server {self._base} ended {request_id} early")

    async def _prompt_logprobs(self, ids: list[int], request_id: str) -> list[float]:
        import aiohttp

        body = {
            "model": self._served_model,
            "prompt": ids,  # token ids: scored exactly as tokenized here
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,  # a vLLM extension of the OpenAI API
        }
        try:
            async with self._completions(body, request_id) as resp:
                entries = (await resp.json())["choices"][0]["prompt_logprobs"]
        except (aiohttp.ClientError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise GenerationError(
                detail=f"LLM server {self._base} gave no prompt logprobs for {request_id}: {exc!r}"
            ) from exc
        if not isinstance(entries, list) or len(entries) != len(ids):
            raise GenerationError(detail=f"LLM server {self._base}: bad prompt logprobs")
        return [_token_logprob(entries[i], t) for i, t in enumerate(ids)]

    async def aclose(self) -> None:
        """Close the HTTP session; idempotent."""
        self._closed = True
        if not self._session.closed:
            await self._session.close()


async def create_generator(settings: Settings) -> Generator:
    """The backend settings.llm_backend names, ready to stream."""
    if settings.llm_backend == "remote":
        return await RemoteGenerator.create(settings)
    return await LocalGenerator.create(settings)
