"""Converting pages to text in worker processes, each page under a CPU budget.

A thread cannot be stopped: a page that takes minutes to convert would keep a core (and the
bot's interpreter lock) busy after its reindex was cancelled or timed out. A worker process can:

- each job gets Settings.page_parse_cpu_s seconds of CPU; past them the kernel ends its worker
  (parse_worker.py) and the page fails alone with a reason that names the setting;
- a job whose caller is cancelled kills its worker, and closing the pool kills every worker, so
  a cancelled or timed-out reindex stops using CPU at once.

Workers start on the first page (a Python process and BeautifulSoup: a fraction of a second),
are reused for the next ones, and run at a lower priority than the bot. One pool serves one
load_sources call, which opens and closes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .formats import PageError
from .parse_worker import HEADER

log = logging.getLogger(__name__)

T = TypeVar("T")

# The folder holding the rag_core package: workers import it from there wherever they start.
_ROOT = str(Path(__file__).resolve().parents[2])


def default_workers(limit: int) -> int:
    """Worker processes for a pool: half the CPUs this process may use, 1 to `limit`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(limit, cpus // 2))


class ParsePool:
    """Worker processes running conversion jobs, `cpu_s` seconds of CPU each at most."""

    def __init__(self, cpu_s: float, workers: int = 1) -> None:
        self.cpu_s = cpu_s
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._workers: list[_Worker] = []  # every worker started, killed ones included
        self._closed = False

    async def __aenter__(self) -> ParsePool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker; `fn` is pickled by name (a module-level function).

        Raises what `fn` raised, or PageError when the job ran out of CPU time or its worker
        died. Cancelling the caller kills the worker at once.
        """
        async with self._slots:
            if self._closed:
                raise RuntimeError("the parse pool is closed")
            worker = self._idle.pop() if self._idle else await self._start()
            try:
                ok, value = await worker.call(fn, args, self.cpu_s)
            except BaseException:  # out of budget, dead, or the caller was cancelled mid-job
                self._kill(worker)
                raise
            self._idle.append(worker)
        if not ok:
            if remote := getattr(value, "remote_traceback", ""):
                value.__cause__ = _RemoteTraceback(remote)  # shown where the error is logged
            raise value
        return value  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Kill every worker, busy or idle, and wait for them to be gone."""
        self._closed = True
        for worker in self._workers:
            self._kill(worker)
        await asyncio.gather(*(worker.process.wait() for worker in self._workers))

    async def _start(self) -> _Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rag_core.ingest.parse_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = _Worker(process)
        self._workers.append(worker)
        try:
            # The parent's import path: a job's function is found where the parent found it.
            await worker.send(pickle.dumps(sys.path))
        except BaseException:
            self._kill(worker)
            raise
        log.debug("parse worker %d started", process.pid)
        return worker

    def _kill(self, worker: _Worker) -> None:
        """Stop a worker now; it is never reused (close() waits for it to be gone)."""
        if worker in self._idle:
            self._idle.remove(worker)
        if worker.process.returncode is None:
            try:
                worker.process.kill()
            except ProcessLookupError:  # already gone
                pass


class _RemoteTraceback(Exception):
    """The traceback of an error raised in a worker, as the cause of the error re-raised here."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}"


class _Worker:
    """One worker process and the frames exchanged with it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def call(self, fn: Callable[..., Any], args: tuple[Any, ...], cpu_s: float) -> Any:
        """The worker's reply to one job: (True, result) or (False, exception)."""
        job = pickle.dumps((cpu_s, fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            await self.send(job)
            assert self.process.stdout is not None
            (size,) = HEADER.unpack(await self.process.stdout.readexactly(HEADER.size))
            reply = await self.process.stdout.readexactly(size)
        except (ConnectionError, asyncio.IncompleteReadError):
            raise await self._died(cpu_s) from None
        try:
            return pickle.loads(reply)
        except Exception as exc:  # an exception type that cannot be rebuilt from its args
            return False, RuntimeError(f"a reply could not be read: {type(exc).__name__}: {exc}")

    async def send(self, payload: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(HEADER.pack(len(payload)) + payload)
        await self.process.stdin.drain()

    async def _died(self, cpu_s: float) -> PageError:
        code = await self.process.wait()
        if code == -signal.SIGPROF:
            return PageError(
                f"converting it to text took over {cpu_s:g} s of CPU (PAGE_PARSE_CPU_S)"
            )
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        log.warning("parse worker %d died (%s)", self.process.pid, how)
        return PageError(f"the converter process died ({how})")
