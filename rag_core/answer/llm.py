"""Generator: streams an answer from an in-process vLLM engine or an OpenAI-compatible server.

One Generator is shared by every request. `stream()` yields `GenerationChunk` deltas; stopping
early (break + `aclose()`, task cancellation, the per-request timeout) aborts the request in the
engine, so an abandoned Discord answer frees its slot at once. Iterate it inside
`contextlib.aclosing(...)` so an early `break` closes it (and aborts) immediately, not at GC.

The local backend, and the remote one on `/v1/completions`, render chat templates and count
tokens locally with the model's own tokenizer, so token budgets are identical whichever of them
answers. On `/v1/chat/completions` (llama.cpp's server, Ollama, LM Studio, hosted APIs) the server
applies its own template to the messages: prompts are counted with the local tokenizer when one
loads offline, else by the server's tokenize endpoint where it has one (vLLM, llama.cpp), else by
a conservative estimate; a prompt the server still refuses as too long raises ContextLengthError,
and the answer path retries once with fewer passages. See RemoteGenerator.

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
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import (
    ConfigError,
    ContextLengthError,
    EngineDeadError,
    GenerationError,
    GenerationTimeout,
)
from ..model_source import check_model_available, is_cached, looks_like_path
from .repetition import RepetitionGuard

if TYPE_CHECKING:
    import aiohttp
    from vllm.v1.engine.async_llm import AsyncLLM

    from ..config import Settings

log = logging.getLogger(__name__)

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


# Without the model's tokenizer, a token is taken to be this many characters: fewer than the ~4 of
# English prose in BPE vocabularies, so code, logs and other scripts rarely go over the budget.
CHARS_PER_TOKEN_ESTIMATE = 3.0
# Role markers and separators a chat template adds around each message, estimated.
MESSAGE_OVERHEAD_TOKENS = 8
# A prompt counted by the server teaches the estimate its characters a token from this size up.
_CALIBRATE_CHARS = 400


def estimate_tokens(text: str, chars_per_token: float = CHARS_PER_TOKEN_ESTIMATE) -> int:
    """A conservative token count of `text` for a model whose tokenizer is not here."""
    return math.ceil(len(text) / chars_per_token)


def context_limit(message: str) -> int | None:
    """The context size a server's "too long" error names, if it names one."""
    found = re.search(r"context (?:length|window|size)\D{0,20}(\d+)|\bn_ctx\D{0,5}(\d+)", message)
    return int(found.group(1) or found.group(2)) if found else None


class ChatPrompt(str):
    """A rendered prompt that keeps its messages: a chat API is sent the messages (the server
    applies its own template), a completions API the text. The text is the model's chat template
    applied locally, or, with no local tokenizer, the messages joined (for counting)."""

    messages: tuple[dict[str, str], ...]

    def __new__(cls, text: str, messages: list[dict[str, str]]) -> ChatPrompt:
        prompt = super().__new__(cls, text)
        prompt.messages = tuple(dict(m) for m in messages)
        return prompt


def _load_local_tokenizer(settings: Settings) -> Any | None:
    """The model's tokenizer when it is on this machine (a folder or the cache); never downloads.

    A chat API needs no tokenizer here: it only makes token counts exact."""
    name = settings.llm_model
    if not (looks_like_path(name) or is_cached(name)):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as exc:  # a folder without tokenizer files, a partial cache
        log.info("no local tokenizer for %r (%s): counting tokens another way", name, exc)
        return None


def _load_tokenizer(settings: Settings) -> Any:
    # The local backend and /v1/completions load the model's tokenizer first: a model that is
    # neither a folder nor cached, with no hub in reach, is reported here in seconds.
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

    def __init__(self, settings: Settings, tokenizer: Any | None, *, max_model_len: int) -> None:
        self.settings = settings  # read per request: llm_timeout_s, llm_max_tokens, sampling
        self._tokenizer = tokenizer  # None: a chat API whose model's tokenizer is not here
        self.model_name = settings.llm_model
        self.max_model_len = max_model_len
        # Without the tokenizer: characters a token, for estimates; lowered by exact counts.
        self.chars_per_token = CHARS_PER_TOKEN_ESTIMATE
        self._closed = False

    @property
    def can_score(self) -> bool:
        """Whether continuation_logprob works (RERANK=llm needs it)."""
        return self._tokenizer is not None

    def _encode(self, text: str) -> list[int]:
        # Rendered prompts already hold BOS and role markers: add nothing.
        if self._tokenizer is None:
            raise GenerationError(detail=f"no local tokenizer for {self.model_name!r}")
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in the LLM's own tokenizer (no special tokens added); without
        that tokenizer, a conservative estimate (see estimate_tokens)."""
        if self._tokenizer is None:
            messages = getattr(text, "messages", ())
            overhead = MESSAGE_OVERHEAD_TOKENS * (len(messages) + 1)
            return estimate_tokens(text, self.chars_per_token) + overhead
        return len(self._encode(text))

    async def _count_prompt(self, prompt: str) -> tuple[list[int], int]:
        """The prompt's token ids (empty when they are not known here) and its token count."""
        ids = self._encode(prompt)
        return ids, len(ids)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to `messages`, ending with the assistant's turn.

        The result is a ChatPrompt (a str that keeps `messages` for chat APIs); without a local
        tokenizer its text is the messages joined, for counting only."""
        if self._tokenizer is None:
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
            return ChatPrompt(text, messages)
        try:
            prompt = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # no chat template (a base model), or a template error
            raise ConfigError(
                "The answer model has no usable chat template: use an instruct model.",
                detail=f"chat template of {self.model_name!r} failed: {exc}",
            ) from exc
        return ChatPrompt(str(prompt), messages)

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
        prompt_ids, prompt_tokens = await self._count_prompt(prompt)
        room = self.max_model_len - prompt_tokens
        if room < 1:
            raise ContextLengthError(
                detail=f"prompt has {prompt_tokens} tokens, context is {self.max_model_len}",
            )
        # The engine rejects prompt + max_tokens > context: shorten the answer instead.
        max_tokens = min(max_tokens or self.settings.llm_max_tokens, room)
        request_id = request_id or uuid.uuid4().hex
        timeout_s = self.settings.llm_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout_s
        # Passed only when set: backends that take no override keep working for answers.
        override: dict[str, Any] = {} if temperature is None else {"temperature": temperature}
        if not prompt_ids:  # counted without token ids (a chat API): the backend takes the count
            override["prompt_tokens"] = prompt_tokens
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
        if not self.can_score:
            raise GenerationError(detail=f"{type(self).__name__} cannot score text here")
        tail = self._encode(continuation)
        if not tail:
            raise GenerationError(detail="nothing to score")
        head = self._encode(prefix)[-max(1, self.max_model_len - len(tail) - 1) :]
        ids = head + tail
        if len(ids) >= self.max_model_len:
            raise ContextLengthError(detail=f"{len(ids)} tokens to score")
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
        """Backend stream; must abort the request when closed or cancelled before the end.

        `prompt_ids` is empty when the prompt was counted without a local tokenizer; the count
        then comes as the keyword `prompt_tokens` (only backends without a tokenizer get it)."""

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


# --- remote: an OpenAI-compatible server (vLLM, llama.cpp, Ollama, LM Studio, hosted APIs) -----

RemoteApi = Literal["chat", "completions"]
# Tokenize endpoints, tried in this order: (kind, path under the server root, body for `text`).
_TOKENIZERS: tuple[tuple[str, str], ...] = (
    ("vllm", "/tokenize"),  # {"model", "prompt" | "messages"} -> {"count", "tokens", ...}
    ("llama.cpp", "/tokenize"),  # llama.cpp's own server: {"content"} -> {"tokens"}
    ("llama-cpp-python", "/extras/tokenize"),  # {"input"} -> {"tokens"}
)


@dataclass(slots=True)
class ServerInfo:
    """What an OpenAI-compatible server told about itself (GET /models, a tokenize probe)."""

    served: list[str]
    vllm: bool  # vLLM's server: prompt logprobs, repetition_penalty, token-id prompts
    max_model_len: int | None  # the context it reports, if it reports one
    tokenize: str | None = None  # the kind of tokenize endpoint it has (see _TOKENIZERS)


def read_models(body: Any) -> ServerInfo:
    """ServerInfo from the JSON of GET /models; ValueError when it is not an OpenAI model list."""
    try:
        models = [m for m in body["data"] if isinstance(m, dict)]
        served = [str(m["id"]) for m in models]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not an OpenAI model list: {exc!r}") from exc
    vllm = any(m.get("owned_by") == "vllm" or "max_model_len" in m for m in models)
    lengths = [m.get("max_model_len") for m in models]
    length = next((n for n in lengths if isinstance(n, int)), None)
    return ServerInfo(served, vllm, length)


def choose_api(setting: str, *, vllm: bool, tokenizer: bool) -> RemoteApi:
    """The endpoint LLM_REMOTE_API picks: `auto` takes /completions only from a vLLM server
    with the model's tokenizer here (exact budgets, prompt logprobs); chat everywhere else."""
    if setting in ("chat", "completions"):
        return "completions" if setting == "completions" else "chat"
    return "completions" if vllm and tokenizer else "chat"


async def find_tokenize(
    session: aiohttp.ClientSession, root: str, model: str, *, vllm: bool
) -> str | None:
    """The kind of tokenize endpoint the server at `root` (no /v1) has, or None."""
    import aiohttp

    for kind, path in _TOKENIZERS:
        if vllm != (kind == "vllm"):
            continue
        try:
            async with session.post(
                root + path,
                json=_tokenize_body(kind, model, "Hello world"),
                timeout=aiohttp.ClientTimeout(total=5),
            ) as resp:
                if resp.status != 200:
                    continue
                if _tokenize_count(kind, await resp.json()) > 0:
                    return kind
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            continue
    return None


def _tokenize_body(kind: str, model: str, text: str) -> dict[str, Any]:
    if kind == "vllm":
        return {"model": model, "prompt": text, "add_special_tokens": False}
    if kind == "llama.cpp":
        return {"content": text}
    return {"model": model, "input": text}


def _tokenize_count(kind: str, body: Any) -> int:
    return int(body["count"]) if kind == "vllm" else len(body["tokens"])


class RemoteGenerator(Generator):
    """An OpenAI-compatible server, streamed (SSE): POST {llm_remote_url}/chat/completions
    (messages; the server applies its template) or /completions (a prompt rendered here).

    LLM_REMOTE_API picks the endpoint (see choose_api). vLLM's extensions of the API
    (repetition_penalty, prompt_logprobs, token-id prompts) are sent only to a vLLM server, so
    RERANK=llm works only there. What the server offers is learnt when it first answers: at
    start, or at the first request when it was down then.
    """

    def __init__(
        self, settings: Settings, tokenizer: Any | None, session: aiohttp.ClientSession
    ) -> None:
        super().__init__(settings, tokenizer, max_model_len=settings.llm_max_model_len)
        self._base = settings.llm_remote_url.rstrip("/")
        self._root = self._base.removesuffix("/v1")
        self._session = session
        self._served_model = settings.llm_model
        self.server: ServerInfo | None = None  # None until the server has answered
        self.api: RemoteApi | None = None

    @property
    def can_score(self) -> bool:
        # Prompt logprobs are a vLLM extension; before the server answered, /completions was
        # asked for by name and is taken to be vLLM (the backend this generator began with).
        vllm = self.server.vllm if self.server else self.settings.llm_remote_api == "completions"
        return self._tokenizer is not None and vllm

    @classmethod
    async def create(cls, settings: Settings) -> RemoteGenerator:
        import aiohttp

        if not settings.llm_remote_url.startswith(("http://", "https://")):
            raise ConfigError(
                "LLM_REMOTE_URL must be set (e.g. http://gpu1:8000/v1) when LLM_BACKEND=remote.",
                detail=f"bad llm_remote_url {settings.llm_remote_url!r}",
            )
        if settings.llm_remote_api == "completions":  # renders prompts here: needs the tokenizer
            tokenizer = await asyncio.to_thread(_load_tokenizer, settings)
        else:
            tokenizer = await asyncio.to_thread(_optional_tokenizer, settings)
        key = settings.llm_api_key.get_secret_value()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # No total timeout: answers stream for a long time; stream() enforces llm_timeout_s.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        generator = cls(
            settings, tokenizer, aiohttp.ClientSession(headers=headers, timeout=timeout)
        )
        await generator._check_server()
        return generator

    async def _check_server(self) -> bool:
        """Learn the served model, its context, the endpoint to use; False while unreachable."""
        import aiohttp

        try:
            async with self._session.get(
                f"{self._base}/models", timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                resp.raise_for_status()
                info = read_models(await resp.json())
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            log.warning(
                "LLM server %s not reachable yet (%s); will retry per request",
                self._base,
                type(exc).__name__,
            )
            return False
        except (aiohttp.ClientError, ValueError) as exc:
            # It answers, but lists no models (a key refused, a server without /models):
            # requests go ahead and report their own errors.
            log.warning("LLM server %s lists no models (%s)", self._base, exc)
            info = ServerInfo([], self.settings.llm_remote_api == "completions", None)
        if self._served_model not in info.served and len(info.served) == 1:
            # e.g. the server was started with a local path: same weights, another name.
            (name,) = info.served
            log.warning("LLM server serves %r, not %r: using it", name, self._served_model)
            self._served_model = name
        if info.max_model_len is not None and info.max_model_len < self.max_model_len:
            log.warning(
                "LLM server context is %d tokens (< LLM_MAX_MODEL_LEN %d): using it",
                info.max_model_len,
                self.max_model_len,
            )
            self.max_model_len = info.max_model_len
        if self._tokenizer is None:
            info.tokenize = await find_tokenize(
                self._session, self._root, self._served_model, vllm=info.vllm
            )
        self.api = choose_api(
            self.settings.llm_remote_api, vllm=info.vllm, tokenizer=self._tokenizer is not None
        )
        self.server = info
        counting = (
            "the model's tokenizer"
            if self._tokenizer is not None
            else f"the server's {info.tokenize} tokenize endpoint"
            if info.tokenize
            else f"an estimate ({CHARS_PER_TOKEN_ESTIMATE:g} characters a token)"
        )
        log.info(
            "LLM server %s (%s): /v1/%s, context %d tokens, prompts counted with %s",
            self._base,
            "vLLM" if info.vllm else "OpenAI-compatible",
            "chat/completions" if self.api == "chat" else "completions",
            self.max_model_len,
            counting,
        )
        return True

    async def _ready(self) -> None:
        if self.server is None and not await self._check_server():
            raise GenerationError(_UNREACHABLE, detail=f"cannot reach LLM server {self._base}")

    async def _count_prompt(self, prompt: str) -> tuple[list[int], int]:
        if self._tokenizer is not None:
            return await super()._count_prompt(prompt)
        await self._ready()
        counted = await self._server_count(prompt)
        if counted is None:
            return [], self.count_tokens(prompt)
        tokens, overhead = counted
        if len(prompt) >= _CALIBRATE_CHARS and tokens > 0:
            # Estimates from now on assume no more characters a token than this text had.
            self.chars_per_token = min(self.chars_per_token, len(prompt) / tokens)
        return [], tokens + overhead

    async def _server_count(self, prompt: str) -> tuple[int, int] | None:
        """The prompt's tokens by the server's tokenize endpoint, and the tokens its chat
        template adds, estimated where the endpoint counts the text only; None without one or
        on error."""
        import aiohttp

        kind = self.server.tokenize if self.server else None
        if kind is None:
            return None
        messages = list(getattr(prompt, "messages", ()))
        body = _tokenize_body(kind, self._served_model, prompt)
        overhead = 0
        if kind == "vllm" and messages:  # vLLM applies the chat template it will answer with
            body = {"model": self._served_model, "messages": messages}
            body["add_generation_prompt"] = True
        elif messages:  # the text only: role markers estimated
            overhead = MESSAGE_OVERHEAD_TOKENS * (len(messages) + 1)
        path = dict(_TOKENIZERS)[kind]
        try:
            async with self._session.post(
                self._root + path, json=body, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                resp.raise_for_status()
                return _tokenize_count(kind, await resp.json()), overhead
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            log.info("LLM server could not count a prompt (%r): estimating", exc)
            return None

    @contextlib.asynccontextmanager
    async def _post(
        self, path: str, body: dict[str, Any], request_id: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST {base}/{path}: the response when it is a 200, else the mapped GenerationError."""
        import aiohttp

        # vLLM logs the request under this id; llama-cpp-python refuses one that is not a UUID
        # (HTTP 400, empty body), so other servers do without.
        vllm = self.server.vllm if self.server else self.settings.llm_remote_api == "completions"
        headers = {"X-Request-Id": request_id} if vllm else {}
        try:
            async with self._session.post(
                f"{self._base}/{path}", json=body, headers=headers
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
        if status in (400, 413) and "context" in body.lower():
            # vLLM: "maximum context length"; llama.cpp: "exceeds the available context size";
            # OpenAI and llama-cpp-python: "context_length_exceeded".
            limit = context_limit(body)
            if limit is not None and 0 < limit < self.max_model_len:
                log.warning(
                    "LLM server context is %d tokens (< LLM_MAX_MODEL_LEN %d): using it",
                    limit,
                    self.max_model_len,
                )
                self.max_model_len = limit
            return ContextLengthError(detail=detail)
        return GenerationError(detail=detail)  # 401/403 (key), 404 (model name), 5xx

    def _sampling_body(self, temperature: float | None = None) -> dict[str, Any]:
        """Sampling fields of the request body. `repetition_penalty` is a vLLM extension of the
        OpenAI API: sent only to vLLM and only when it does something (hosted APIs refuse
        unknown fields)."""
        body = self.sampling(temperature)
        if body["repetition_penalty"] == 1.0 or not (self.server and self.server.vllm):
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
        prompt_tokens: int | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        import aiohttp

        await self._ready()
        vllm = self.server is not None and self.server.vllm
        chat = self.api == "chat"
        body: dict[str, Any] = {
            "model": self._served_model,
            "max_tokens": max_tokens,
            **self._sampling_body(temperature),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if chat:
            messages = getattr(prompt, "messages", None)
            body["messages"] = list(messages or [{"role": "user", "content": str(prompt)}])
        else:
            body["prompt"] = str(prompt)
        if vllm:
            body["stream_options"]["continuous_usage_stats"] = True
            if not chat:
                body["add_special_tokens"] = False  # the rendered prompt already starts with BOS
        counted = len(prompt_ids) if prompt_tokens is None else prompt_tokens
        done, last = 0, None  # `last`: the finishing chunk, held until the usage that follows it
        exact, texts = False, []  # whether the server gave the completion's tokens; the text
        path = "chat/completions" if chat else "completions"
        try:
            async with self._post(path, body, request_id) as resp:
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
                        counted = usage.get("prompt_tokens") or counted
                        exact = exact or "completion_tokens" in usage
                        if last is not None:  # the usage after the end: exact final counts
                            last.prompt_tokens = counted
                            last.completion_tokens = usage.get("completion_tokens", done)
                            continue
                        for choice in event.get("choices") or []:
                            delta = (choice.get("delta") or {}) if chat else choice
                            text = delta.get("content" if chat else "text") or ""
                            reason = choice.get("finish_reason")
                            if not text and reason is None:
                                continue  # e.g. the chat stream's opening role delta
                            # Exact counts come with continuous_usage_stats; else count here.
                            done = usage.get("completion_tokens", done + self._tokens_in(text))
                            texts.append(text)
                            chunk = GenerationChunk(text, reason is not None, reason, counted, done)
                            if reason is not None:
                                last = chunk
                                break
                            yield chunk
                finally:
                    if last is None:
                        # Dropping the connection is how the server learns to abort.
                        resp.close()
        except (aiohttp.ClientError, ValueError) as exc:  # dropped stream, bad JSON
            raise GenerationError(
                detail=f"LLM server {self._base} stream failed for {request_id}: {exc!r}"
            ) from exc
        if last is None:
            raise GenerationError(detail=f"LLM server {self._base} ended {request_id} early")
        if not exact:  # a server that reports no usage while streaming (llama-cpp-python)
            if last.finish_reason == "length":
                last.completion_tokens = max_tokens
            elif (answered := await self._server_count("".join(texts))) is not None:
                last.completion_tokens = answered[0]
        yield last

    def _tokens_in(self, text: str) -> int:
        """Tokens of a streamed piece of text (exact with the tokenizer, else estimated)."""
        if not text:
            return 0
        if self._tokenizer is None:
            return estimate_tokens(text, self.chars_per_token)
        return len(self._encode(text))

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
            async with self._post("completions", body, request_id) as resp:
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


def _optional_tokenizer(settings: Settings) -> Any | None:
    """The model's tokenizer if it is here or downloadable; None for a model the hub does not
    have (a hosted API's or Ollama's model name): a chat API counts tokens another way."""
    tokenizer = _load_local_tokenizer(settings)
    if tokenizer is not None or looks_like_path(settings.llm_model):
        return tokenizer
    try:
        return _load_tokenizer(settings)
    except ConfigError as exc:
        log.info("no tokenizer for %r (%s): counting tokens another way", settings.llm_model, exc)
        return None


async def create_generator(settings: Settings) -> Generator:
    """The backend settings.llm_backend names, ready to stream."""
    if settings.llm_backend == "remote":
        return await RemoteGenerator.create(settings)
    return await LocalGenerator.create(settings)
