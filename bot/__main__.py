"""`python -m bot` (or `docs-bot`): run the Discord bot; `sync` publishes its slash commands and
exits (it needs only Discord: no models, no knowledge base); `export-flags FILE` writes flags as
JSONL, `export-golden FILE` the golden set as eval questions; `gaps [--days N]` prints the
coverage-gaps report as Markdown; `doctor [--quick]` checks the settings and every part the bot
needs (see bot/doctor.py).

Every resource is opened and closed here, in one place:
feedback database -> rag_core (Milvus, embedder, LLM engine) -> the bot. SIGTERM and Ctrl-C
cancel the main task, so each `async with` closes what it opened, in reverse order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import discord
import numpy as np

from rag_core.config import Settings, load_settings
from rag_core.errors import ConfigError, RagError, error_lines

from . import metrics
from .feedback import FeedbackStore, default_path
from .logging_setup import configure_logging

log = logging.getLogger("bot")


def feedback_path(settings: Settings) -> Path:
    return Path(settings.feedback_db) if settings.feedback_db else default_path(settings.data_dir)


def _token(settings: Settings) -> str:
    token = settings.discord_token.get_secret_value()
    if not token:
        raise ConfigError("DISCORD_TOKEN is not set (environment or .env).")
    return token


async def sync_commands(settings: Settings) -> None:
    """Log in over HTTP (no gateway), publish the commands, log out: Discord is all it needs."""
    from .client import RagBot

    token = _token(settings)
    async with RagBot(settings, None, None, sync_commands=True) as bot:
        await bot.login(token)  # runs setup_hook, which loads the cogs and syncs


async def run_bot(settings: Settings) -> None:
    from rag_core.runtime import open_rag

    from .client import RagBot

    token = _token(settings)
    _cancel_on_signals()
    # Up before the models load, so the health check sees a live event loop while they do.
    server = _start_metrics(settings)
    beat = asyncio.create_task(metrics.heartbeat(), name="metrics-heartbeat")
    try:
        async with (
            FeedbackStore.open(feedback_path(settings)) as feedback,
            open_rag(settings, with_llm=True) as rag,
            RagBot(settings, rag, feedback) as bot,
        ):
            # bot.start, not bot.run: run would install discord.py's own log handler.
            await bot.start(token)
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        if server is not None:
            server.close()


def _start_metrics(settings: Settings) -> metrics.MetricsServer | None:
    """The /metrics endpoint on METRICS_HOST:METRICS_PORT, or None when METRICS_PORT=0."""
    if not settings.metrics_port:
        return None
    host, port = settings.metrics_host, settings.metrics_port
    try:
        server = metrics.start_metrics_server(port, host)
    except OSError as exc:
        raise RagError(
            f"Cannot serve metrics on {host}:{port} ({exc.strerror or exc}): "
            "set METRICS_PORT to a free port, or 0 to turn metrics off."
        ) from exc
    log.info("metrics on http://%s:%d/metrics", host, server.port)
    return server


def _cancel_on_signals() -> None:
    """SIGTERM (docker stop, systemd) and Ctrl-C cancel the main task: a clean, quick exit."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def stop(sig: signal.Signals) -> None:
        log.info("received %s: shutting down", sig.name)
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(sig, stop, sig)


async def export_flags(settings: Settings, out: Path, guild_id: int | None) -> int:
    async with FeedbackStore.open(feedback_path(settings)) as store:
        return await store.export_jsonl(out, guild_id=guild_id)


async def export_golden(settings: Settings, out: Path, guild_id: int | None) -> int:
    async with FeedbackStore.open(feedback_path(settings)) as store:
        return await store.export_golden(out, guild_id=guild_id)


async def gaps_report(settings: Settings, days: float, guild_id: int | None = None) -> str:
    """The coverage-gaps report as Markdown (the embedder loads only when there is something
    to group; the knowledge base is not opened, so this works beside a running bot)."""
    from rag_core.search.embedding import Embedder

    from .gaps import coverage_gaps, render_gaps

    embedder: Embedder | None = None

    async def embed(texts: Sequence[str]) -> np.ndarray:
        nonlocal embedder
        if embedder is None:
            embedder = await asyncio.to_thread(
                Embedder,
                settings.embedding_model,
                device=settings.embedding_device,
                batch_size=settings.embedding_batch_size,
            )
        return await embedder.aembed_passages(texts)

    try:
        async with FeedbackStore.open(feedback_path(settings)) as store:
            gaps = await coverage_gaps(
                store, embed, days=days, threshold=settings.gaps_similarity, guild_id=guild_id
            )
    finally:
        if embedder is not None:
            await asyncio.to_thread(embedder.close)
    return render_gaps(gaps, days)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="docs-bot", description="Discord bot that answers questions from your docs."
    )
    parser.add_argument(
        "--sync", action="store_true", help="same as the `sync` command (publish, then exit)"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser(
        "sync",
        help="publish the slash commands (to DISCORD_DEV_GUILD_ID if set) and exit",
    )
    export = sub.add_parser("export-flags", help="write every flagged answer as JSONL")
    export.add_argument("file", type=Path)
    export.add_argument("--guild", type=int, default=None, help="only this server's answers")
    golden = sub.add_parser(
        "export-golden",
        help="write the golden set (verified answers, answers marked good) as eval questions",
    )
    golden.add_argument("file", type=Path)
    golden.add_argument("--guild", type=int, default=None, help="only this server's")
    gaps = sub.add_parser(
        "gaps",
        help="print what the docs are missing: refused and flagged questions, grouped (Markdown)",
    )
    gaps.add_argument("--days", type=_days, default=30, help="how far back (default 30 days)")
    gaps.add_argument("--guild", type=int, default=None, help="only this server's questions")
    gaps.add_argument("-o", "--output", type=Path, default=None, help="write to this file")
    # Listed for --help only: main() hands `doctor ...` to bot.doctor.main before parsing.
    sub.add_parser(
        "doctor",
        help="check the settings and every part the bot needs; --quick: liveness only",
        add_help=False,
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["doctor"]:
        from . import doctor

        return doctor.main(argv[1:])
    args = parse_args(argv)
    if args.command == "doctor":  # after global options (`--log-level DEBUG doctor`)
        from . import doctor

        return doctor.main([])
    try:
        settings = load_settings()
        configure_logging(args.log_level, settings)
        if args.command == "export-flags":
            count = asyncio.run(export_flags(settings, args.file, args.guild))
            print(f"wrote {count} flagged answers to {args.file}")
            return 0
        if args.command == "export-golden":
            count = asyncio.run(export_golden(settings, args.file, args.guild))
            print(f"wrote {count} golden questions to {args.file}")
            return 0
        if args.command == "gaps":
            report = asyncio.run(gaps_report(settings, args.days, args.guild))
            if args.output is None:
                print(report)
            else:
                args.output.write_text(report + "\n", encoding="utf-8")
                print(f"wrote the coverage gaps to {args.output}")
            return 0
        if args.command == "sync" or args.sync:
            asyncio.run(sync_commands(settings))
            print("slash commands published")
            return 0
        asyncio.run(run_bot(settings))
    except RagError as exc:
        log.debug("fatal error", exc_info=exc)
        print("\n".join(error_lines(exc)), file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except discord.LoginFailure:
        print("error: Discord refused the token (DISCORD_TOKEN).", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, OSError, discord.GatewayNotFound) as exc:
        log.debug("cannot reach Discord", exc_info=exc)
        print(
            f"error: cannot reach Discord ({_network_reason(exc)}): check this machine's "
            "network, DNS and proxy settings, then start the bot again.",
            file=sys.stderr,
        )
        return 2
    except discord.HTTPException as exc:
        log.debug("Discord refused a request", exc_info=exc)
        print(f"error: Discord answered {exc.status}: {exc.text or exc}", file=sys.stderr)
        return 2
    log.info("stopped")
    return 0


def _days(value: str) -> float:
    try:
        days = float(value)
    except ValueError:
        days = 0.0
    if not 0 < days <= 3650:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of days, more than 0")
    return days


def _network_reason(exc: BaseException) -> str:
    """One line, no traceback: what went wrong on the way to Discord."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
