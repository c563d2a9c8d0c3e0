"""The worker process of parse_pool.py: runs the conversion jobs it reads on stdin, one at a time.

Started as `python -m rag_core.ingest.parse_worker`. It imports only what a job's function needs
(for html_to_page: html_text.py and BeautifulSoup), never the embedding model or the bot.

Frames on stdin and stdout are an 8-byte length and a pickle. The first frame is the parent's
sys.path; each next one a job `(cpu_s, fn, args)`, answered by `(True, fn(*args))` or
`(False, exception)`. A job runs under a CPU-time timer (ITIMER_PROF): when it has used `cpu_s`
seconds, the kernel ends the process with SIGPROF, whatever the job is doing at that moment.
EOF on stdin ends the process.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import struct
import sys
import traceback
from contextlib import suppress
from typing import IO, Any

HEADER = struct.Struct("!Q")


def main() -> None:
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a job that prints must not corrupt the replies
    # Kill at the end of the budget, even if the parent ignored or blocked SIGPROF.
    signal.signal(signal.SIGPROF, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGPROF})
    # Ctrl-C in a terminal reaches the whole process group: the parent stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with suppress(OSError):
        os.nice(10)  # parsing is background work: questions asked meanwhile go first
    # A page's tree takes hundreds of bytes per element: if memory runs out, the kernel ends
    # this worker (its page fails) rather than the bot (Linux only).
    with suppress(OSError), open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("1000")
    paths = read_frame(requests)
    if paths is None:
        return
    sys.path.extend(path for path in paths if path not in sys.path)
    # A page's tree is one big reference cycle: collections while it grows would walk it again
    # and again (half the time of a large page). One collection after each job frees it.
    gc.disable()
    while (job := read_frame(requests)) is not None:
        cpu_s, fn, args = job  # unpickled before the timer starts: imports are not the job's
        signal.setitimer(signal.ITIMER_PROF, cpu_s)
        try:
            reply: tuple[bool, Any] = (True, fn(*args))
        except Exception as exc:
            reply = (False, exc)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        write_frame(replies, _picklable(reply))
        del job, args, reply  # the page and its text are not kept while the worker waits
        gc.collect()


def read_frame(stream: IO[bytes]) -> Any:
    """The next frame's object; None at the end of the stream."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)


def write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def _picklable(reply: tuple[bool, Any]) -> bytes:
    """The pickled reply; an error carries its traceback as text (its frames do not pickle)."""
    ok, value = reply
    if not ok:
        try:
            value.remote_traceback = "".join(traceback.format_exception(value))
        except Exception:  # an exception that takes no attributes keeps its message only
            pass
    try:
        return pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        what = f"{type(value).__name__}: {value}" if not ok else "the result"
        error = RuntimeError(f"{what} could not be sent back: {type(exc).__name__}: {exc}")
        return pickle.dumps((False, error), protocol=pickle.HIGHEST_PROTOCOL)


if __name__ == "__main__":
    main()
