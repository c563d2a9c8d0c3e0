"""`python -m bot` (or `docs-bot`): run the Discord bot; `export-flags FILE` writes flags as JSONL.

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

import discord

from rag_core.config import Settings, load_settings
from rag_core.errors import RagError

from .feedback import FeedbackStore, default_path

log = logging.getLogger("bot")


def feedback_path(settings: Settings) -> Path:
    return Path(settings.feedback_db) if settings.feedback_db else default_path(settings.data_dir)


async def run_bot(settings: Settings, *, sync: bool) -> None:
    from rag_core.runtime import open_rag

    from .client import RagBot

    token = settings.discord_token.get_secret_value()
    if not token:
        raise RagError("DISCORD_TOKEN is not set (environment or .env).")
    _cancel_on_signals()
    async with (
        FeedbackStore.open(feedback_path(settings)) as feedback,
        open_rag(settings, with_llm=True) as rag,
        RagBot(settings, rag, feedback, sync_commands=sync) as bot,
    ):
        await bot.start(token)


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="docs-bot", description="Discord bot that answers questions from your docs."
    )
    parser.add_argument(
        "--sync",
        action="store_true",
        help="publish the slash commands at start-up (to DISCORD_DEV_GUILD_ID if set)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command")
    export = sub.add_parser("export-flags", help="write every flagged answer as JSONL")
    export.add_argument("file", type=Path)
    export.add_argument("--guild", type=int, default=None, help="only this server's answers")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    discord.utils.setup_logging(level=logging.getLevelName(args.log_level.upper()), root=True)
    try:
        settings = load_settings()
        if args.command == "export-flags":
            count = asyncio.run(export_flags(settings, args.file, args.guild))
            print(f"wrote {count} flagged answers to {args.file}")
            return 0
        asyncio.run(run_bot(settings, sync=args.sync))
    except RagError as exc:
        log.debug("fatal error", exc_info=exc)
        print(f"error: {exc.user_message}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except discord.LoginFailure:
        print("error: Discord refused the token (DISCORD_TOKEN).", file=sys.stderr)
        return 2
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
