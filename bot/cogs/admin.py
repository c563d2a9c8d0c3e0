"""Admin commands: /reindex (background, one at a time, progress in place), /flags, /stats."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from rag_core.errors import RagError
from rag_core.golden import GoldenQuestion
from rag_core.ingest.indexer import IndexReport, Progress
from rag_core.questions import page_url

from .. import metrics
from ..checks import admin_only, owner_only
from ..feedback import AnswerRecord
from ..gaps import coverage_gaps, gap_messages
from ..stale import edit_footers, mark_stale_answers
from ..streaming import (
    MESSAGE_LIMIT,
    ThrottledEditor,
    escape_markdown,
    fit,
    plain_text,
    safe_truncate,
)
from ..utils import GENERIC_ERROR, NO_MENTIONS

if TYPE_CHECKING:
    from ..client import RagBot

log = logging.getLogger(__name__)

FLAGS_SHOWN = 10
GAPS_SHOWN = 10  # groups /gaps lists; `python -m bot gaps` lists them all


def _code(text: str) -> str:
    """`text` as inline code (which cannot hold a backtick), kept short."""
    return "`" + safe_truncate(text.replace("`", "'"), 150) + "`"


class ReindexJob:
    """One reindex run in the background; every /reindex caller watches its progress."""

    def __init__(
        self,
        specs: Sequence[str],
        *,
        prune: bool,
        trigger: str,
        force: bool = False,
        guild_id: int | None = None,
    ) -> None:
        self.specs = list(specs)
        self.guild_id = guild_id  # the server whose admin started it (None: the schedule)
        self.prune = prune
        self.force = force
        self.trigger = trigger
        self.counts: dict[str, int] = {}
        self.started = time.monotonic()
        self.report: IndexReport | None = None
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancelled = False
        self.watchers: list[ThrottledEditor] = []
        self.stale = 0  # recent answers whose cited passages this run changed

    @property
    def done(self) -> bool:
        return self.report is not None or self.error is not None

    def on_progress(self, progress: Progress) -> None:
        self.counts[progress.stage] = progress.done
        self.notify()

    def notify(self) -> None:
        text = self.render()
        for watcher in self.watchers:
            watcher.update(text)

    def render_held_back(self, what: str) -> str:
        r = self.report
        assert r is not None and r.gate is not None
        gate = r.gate
        lines = [
            f"⛔ Reindex of {what} was **not published**: the new index answers the golden "
            f"questions worse (recall@5 {gate.live_recall:.2f} → {gate.new_recall:.2f}, "
            f"{gate.questions} questions). The live index is unchanged.",
            f"added **{r.added}** · updated **{r.updated}** · removed **{r.removed}**",
        ]
        if gate.lost:
            lines.append("**Questions that lost their sources**")
        for q in gate.lost[:8]:
            kind = "verified answer" if q.verified else "question"
            question = fit(plain_text, q.question, 150)
            lines.append(f"- {kind} {_code(q.id)}: {question}")
        if len(gate.lost) > 8:
            lines.append(f"- … and {len(gate.lost) - 8} more")
        if gate.changed_pages:
            lines.append("**Pages that changed**")
        for page in gate.changed_pages[:8]:
            lines.append(f"- {_code(page)}")
        if len(gate.changed_pages) > 8:
            lines.append(f"- … and {len(gate.changed_pages) - 8} more")
        lines.append("Fix the docs, or publish anyway with `/reindex force:true`.")
        return "\n".join(lines)

    def render(self) -> str:
        what = ", ".join(_code(s) for s in self.specs[:3])
        if len(self.specs) > 3:
            what += f" and {len(self.specs) - 3} more"
        if self.error is not None:
            return safe_truncate(f"❌ Reindex of {what} failed: {self.error}", MESSAGE_LIMIT)
        if self.report is not None and self.report.held_back:
            return safe_truncate(self.render_held_back(what), MESSAGE_LIMIT)
        if self.report is not None:
            r = self.report
            lines = [
                f"✅ Reindex of {what} done in {r.seconds:.1f} s.",
                f"added **{r.added}** · updated **{r.updated}** · unchanged **{r.unchanged}** "
                f"· removed **{r.removed}** · failed **{len(r.failed)}**",
                f"-# {r.chunks_embedded} chunks embedded, {r.chunks_total} in the index"
                + ("" if r.published else " · nothing changed, the live index was kept"),
            ]
            if r.forced and r.gate is not None:
                lines.append(
                    f"⚠️ Published with force: {len(r.gate.lost)} golden questions lost their "
                    f"sources (recall@5 {r.gate.live_recall:.2f} → {r.gate.new_recall:.2f})."
                )
            if self.stale:
                lines.append(
                    f"-# {self.stale} recent answers cite passages that changed: "
                    "their footers now say so."
                )
            for failure in r.failed[:5]:
                reason = escape_markdown(safe_truncate(failure.reason, 150))
                lines.append(f"- {_code(failure.source)}: {reason}")
            if len(r.failed) > 5:
                lines.append(f"- … and {len(r.failed) - 5} more failures (see the logs)")
            return safe_truncate("\n".join(lines), MESSAGE_LIMIT)
        c = self.counts
        elapsed = time.monotonic() - self.started
        return (
            f"🔄 Reindexing {what} ({elapsed:.0f} s)…\n"
            f"fetched **{c.get('fetched', 0)}** documents · embedded **{c.get('embedded', 0)}** "
            f"chunks · written **{c.get('written', 0)}** chunks\n"
            "-# /ask keeps answering from the current index until the new one is complete."
        )


class Admin(commands.Cog):
    """Keeping the index fresh and reviewing feedback."""

    def __init__(self, bot: RagBot) -> None:
        self.bot = bot
        self.job: ReindexJob | None = None
        self.auto_task: asyncio.Task[None] | None = None
        self.start_check: asyncio.Task[None] | None = None
        self.footer_edits: set[asyncio.Task[None]] = set()

    async def cog_load(self) -> None:
        if not self.bot.serving:
            return
        minutes = self.bot.settings.reindex_interval_min
        if minutes > 0:
            self.auto_task = asyncio.create_task(self._auto_reindex(minutes * 60))
        # A reindex from the command line runs while the bot is stopped: catch up on start.
        self.start_check = asyncio.create_task(self._stale_on_start(), name="stale-on-start")

    async def _stale_on_start(self) -> None:
        await self.bot.wait_until_ready()
        await self.notice_stale_answers()

    async def cog_unload(self) -> None:
        jobs = (self.auto_task, self.start_check, self.job.task if self.job else None)
        running = (*jobs, *self.footer_edits)
        tasks = [t for t in running if t]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # -- /reindex -----------------------------------------------------------------------------

    @app_commands.command(name="reindex", description="Re-read the docs and update the index")
    @app_commands.describe(
        source="One configured source or an http(s) URL (default: all)",
        cancel="Stop the running reindex instead; the live index stays as it is",
        force="Publish even if the golden questions would be answered worse",
    )
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    @admin_only()
    async def reindex(
        self,
        interaction: discord.Interaction[RagBot],
        source: str | None = None,
        cancel: bool = False,
        force: bool = False,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        by, guild_id = interaction.user.id, interaction.guild_id
        owner = await self.bot.is_owner(interaction.user)
        if cancel:
            message = await self.cancel_reindex(by=by, guild_id=None if owner else guild_id)
            await interaction.followup.send(message, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        job = self.job
        if job is None or job.done:
            try:
                if source is not None and not owner:
                    self.check_source(source)
                job = self.start_reindex(
                    source, trigger=f"/reindex by {by}", force=force, guild_id=guild_id
                )
            except RagError as exc:
                await interaction.followup.send(
                    exc.user_message, ephemeral=True, allowed_mentions=NO_MENTIONS
                )
                return
            prefix = ""
        elif job.guild_id not in (None, guild_id) and not owner:
            # Another home server's run: its sources and progress are that server's business.
            await interaction.followup.send(
                "A reindex started in another server is running; try again when it is done.",
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        else:
            prefix = "A reindex is already running; here is its progress.\n"
        await self._watch(interaction, job, prefix)

    @reindex.autocomplete("source")
    async def _source_choices(
        self, interaction: discord.Interaction[RagBot], current: str
    ) -> list[app_commands.Choice[str]]:
        sources = self.bot.settings.docs_sources
        return [
            app_commands.Choice(name=safe_truncate(s, 100), value=s)
            for s in sources
            if current.lower() in s.lower() and len(s) <= 100
        ][:25]

    def check_source(self, source: str) -> None:
        """A server admin indexes the configured sources, or URLs on their hosts (or
        REINDEX_ALLOWED_HOSTS'); any other URL would put a stranger's page in every answer."""
        if source in self.bot.settings.docs_sources or self.bot.home.source_allowed(source):
            return
        if source.startswith(("https://", "http://")):
            raise RagError(
                "That URL is not on a host of the configured sources: only the bot's owner can "
                "index it (or add its host to REINDEX_ALLOWED_HOSTS)."
            )

    def start_reindex(
        self,
        source: str | None,
        *,
        trigger: str,
        force: bool = False,
        guild_id: int | None = None,
    ) -> ReindexJob:
        """Start a background run of `source` (or every configured source)."""
        if self.bot.rag.indexer.running:
            raise RagError("A reindex is already running (started from the command line?).")
        configured = self.bot.settings.docs_sources
        if source is None:
            if not configured:
                raise RagError("No sources are configured: set DOCS_SOURCES, or name one.")
            specs, prune = configured, True
        elif source in configured or source.startswith(("https://", "http://")):
            # Local paths only from the configuration: a server admin is not a host admin.
            specs, prune = [source], False
        else:
            raise RagError("Name one of the configured sources, or an http(s) URL.")
        job = ReindexJob(specs, prune=prune, trigger=trigger, force=force, guild_id=guild_id)
        job.task = asyncio.create_task(self._run(job), name="reindex")
        self.job = job
        return job

    async def cancel_reindex(self, *, by: int, guild_id: int | None = None) -> str:
        """Stop the running job; its unfinished version is dropped, the live index kept.

        `guild_id`: the admin's server, which may stop only a run started there or on the
        schedule (None: the bot's owner, who may stop any)."""
        job = self.job
        if job is None or job.done or job.task is None:
            return "No reindex is running."
        if guild_id is not None and job.guild_id not in (None, guild_id):
            log.warning("server %s tried to cancel a reindex of server %s", guild_id, job.guild_id)
            return "The running reindex was started in another server: only it can cancel it."
        log.info("reindex cancelled by %s", by)
        job.cancelled = True
        job.task.cancel()
        # The run's cleanup (dropping its version) finishes before the admin is told.
        await asyncio.wait([job.task])
        return "The reindex was cancelled; the live index is unchanged."

    async def _run(self, job: ReindexJob) -> None:
        log.info("reindex started (%s): %s", job.trigger, job.specs)
        try:
            job.report = await self.bot.rag.indexer.run(
                job.specs,
                prune=job.prune,
                on_progress=job.on_progress,
                force=job.force,
                golden=await self.golden_questions(),
            )
            if job.report.held_back:
                assert job.report.gate is not None
                log.warning("reindex held back: %s", job.report.gate.summary())
            if job.report.published:
                job.stale = await self.notice_stale_answers()
        except RagError as exc:
            log.warning("reindex failed: %s", exc.detail, exc_info=exc)
            job.error = exc.user_message
            metrics.observe_reindex(None, False, seconds=time.monotonic() - job.started)
        except Exception:
            log.exception("reindex failed")
            job.error = GENERIC_ERROR
            metrics.observe_reindex(None, False, seconds=time.monotonic() - job.started)
        else:
            metrics.observe_reindex(job.report, True)
            try:
                metrics.set_index_size(await asyncio.to_thread(self.bot.rag.store.count))
            except Exception:
                log.warning("could not count the chunks after the reindex", exc_info=True)
        finally:
            if not job.done:  # cancelled by /reindex cancel, or at shutdown
                job.error = (
                    "cancelled by an admin; the live index is unchanged."
                    if job.cancelled
                    else "the bot is shutting down."
                )
                metrics.observe_reindex(None, False, seconds=time.monotonic() - job.started)
            job.notify()

    async def notice_stale_answers(self) -> int:
        """Mark the recent answers a publish made stale; their footers are edited in the
        background (the reindex report does not wait for Discord). How many were marked."""
        try:
            stale = await mark_stale_answers(self.bot)
        except Exception:
            log.exception("could not look for answers made stale by the reindex")
            return 0
        if stale:

            async def edit() -> None:
                try:
                    edited = await edit_footers(self.bot, stale)
                    log.info("stale notices: %d of %d answers edited", edited, len(stale))
                except Exception:
                    log.exception("stale notices stopped")

            task = asyncio.create_task(edit(), name="stale-footers")
            self.footer_edits.add(task)
            task.add_done_callback(self.footer_edits.discard)
        return len(stale)

    async def golden_questions(self) -> list[GoldenQuestion]:
        """Answers the community marked good, with the pages they cited (beside the verified
        answers and REINDEX_GATE_QUESTIONS, which rag_core adds itself)."""
        records = await self.bot.feedback.golden_answers()
        return [
            GoldenQuestion(
                f"answer-{a.id}", a.question, tuple({page_url(s.url) for s in a.sources})
            )
            for a in records
            # Only the home servers' votes guard the index they share.
            if a.sources and self.bot.home.serves(a.guild_id)
        ]

    async def _watch(
        self, interaction: discord.Interaction[RagBot], job: ReindexJob, prefix: str
    ) -> None:
        """Edit this caller's ephemeral message with the job's progress until it is done."""

        async def edit(text: str) -> None:
            await interaction.edit_original_response(
                content=safe_truncate(prefix + text, MESSAGE_LIMIT), allowed_mentions=NO_MENTIONS
            )

        settings = self.bot.settings
        editor = ThrottledEditor(edit, interval=settings.edit_interval_s)
        job.watchers.append(editor)
        deadline = time.monotonic() + settings.interaction_edit_limit_s
        try:
            editor.update(job.render())
            assert job.task is not None
            remaining = deadline - time.monotonic()
            await asyncio.wait([job.task], timeout=max(remaining, 0))
            if job.done:
                await editor.finish(job.render())
            else:
                # The token expires soon; the run goes on and its report reaches the logs.
                await editor.finish(job.render() + "\n-# Progress updates stop here.")
        except discord.HTTPException:
            log.warning("could not update /reindex progress", exc_info=True)
        finally:
            await editor.aclose()
            job.watchers.remove(editor)

    async def _auto_reindex(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            if self.job is not None and not self.job.done:
                continue
            try:
                job = self.start_reindex(None, trigger="interval")
                assert job.task is not None
                await asyncio.wait([job.task])
            except RagError as exc:
                log.warning("scheduled reindex skipped: %s", exc.detail)

    # -- /flags -------------------------------------------------------------------------------

    @app_commands.command(name="flags", description="Recently flagged answers (admins)")
    @app_commands.describe(export="Also attach every flagged answer as a JSONL file")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    @admin_only()
    async def flags(self, interaction: discord.Interaction[RagBot], export: bool = False) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        store = self.bot.feedback
        flagged = await store.flagged(limit=FLAGS_SHOWN, guild_id=interaction.guild_id)
        stats = await store.stats(guild_id=interaction.guild_id)
        embed = discord.Embed(title="Flagged answers", colour=discord.Colour.orange())
        lines = []
        for f in flagged:
            a = f.answer
            # A question is a user's text: shown plain, its links not clickable.
            question = fit(plain_text, a.question, 90)
            when = discord.utils.format_dt(f.last_flagged_at, "R")
            lines.append(
                f"**#{a.id}** [{question}]({a.jump_url}) · 👎 {f.flags} · 👍 {f.good} · {when}"
            )
        embed.description = safe_truncate("\n".join(lines), 4000) if lines else "No flags yet."
        embed.set_footer(
            text=f"{stats['answers']} answers · {stats['flagged_answers']} flagged · "
            f"{stats['good']} 👍 · {stats['refused']} not in the docs"
        )
        files: list[discord.File] = []
        if export:
            buffer = io.StringIO()
            count = await store.export_jsonl(buffer, guild_id=interaction.guild_id)
            data = buffer.getvalue().encode("utf-8")
            guild = interaction.guild
            limit = guild.filesize_limit if guild else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
            if len(data) <= limit:
                files.append(discord.File(io.BytesIO(data), filename="flagged-answers.jsonl"))
                embed.add_field(name="Export", value=f"{count} flagged answers, attached")
            else:  # Discord would refuse the upload, and the listing with it
                embed.add_field(
                    name="Export",
                    value=f"{count} flagged answers: {len(data) / 2**20:.1f} MiB, over this "
                    f"server's {limit / 2**20:.0f} MiB upload limit. On the bot's host: "
                    "`python -m bot export-flags FILE`",
                )
        await interaction.followup.send(
            embed=embed, files=files, ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    # -- /gaps -------------------------------------------------------------------------------

    @app_commands.command(
        name="gaps", description="What the docs are missing: refused and flagged questions (admins)"
    )
    @app_commands.describe(days="How many days back to look (default 30)")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    @admin_only()
    async def gaps(
        self, interaction: discord.Interaction[RagBot], days: app_commands.Range[int, 1, 365] = 30
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await coverage_gaps(
            self.bot.feedback,
            self.bot.rag.embedder.aembed_passages,
            days=days,
            threshold=self.bot.settings.gaps_similarity,
            guild_id=interaction.guild_id,
        )
        for text in gap_messages(found, days, limit=GAPS_SHOWN):
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    # -- /stats ------------------------------------------------------------------------------

    @app_commands.command(name="stats", description="Questions, latency and feedback (admins)")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    @admin_only()
    async def stats(self, interaction: discord.Interaction[RagBot]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        feedback = await self.bot.feedback.stats(guild_id=interaction.guild_id)
        embed = stats_embed(metrics.snapshot(), feedback)
        await interaction.followup.send(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    # -- /sync (owner) ------------------------------------------------------------------------

    @app_commands.command(name="sync", description="Publish the bot's commands (bot owner)")
    @app_commands.describe(here="Only to this server (instant) instead of everywhere")
    @app_commands.default_permissions(administrator=True)
    @owner_only()
    async def sync(self, interaction: discord.Interaction[RagBot], here: bool = False) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        guild = interaction.guild if here else None
        synced = await self.bot.sync_app_commands(guild)
        where = "this server" if guild else "every server (may take a while to show)"
        await interaction.followup.send(
            f"Synced {len(synced)} commands to {where}.", ephemeral=True
        )


def _pages(answer: AnswerRecord) -> set[str]:
    return {page_url(s.url) for s in answer.sources}


def _pairs(values: Mapping[str, int], empty: str = "none") -> str:
    shown = [f"{k} **{v}**" for k, v in sorted(values.items()) if v]
    return " · ".join(shown) if shown else empty


def _ms(value: float | int | None) -> str:
    return "–" if value is None else f"{value:.0f}"


STAGE_NAMES = {
    "ack": "acknowledge",
    "rewrite": "follow-up rewrite",
    "embed": "embed",
    "search": "search",
    "first_token": "first token",
    "total": "total",
}


def stats_embed(snap: Mapping[str, Any], feedback: Mapping[str, int]) -> discord.Embed:
    """`/stats`: the process's metrics (every server, since start) and this server's feedback."""
    embed = discord.Embed(
        title="Bot statistics",
        description="Since the bot started, every server; feedback: this server, all time.",
        colour=discord.Colour.blurple(),
    )

    def field(name: str, value: str, *, inline: bool = True) -> None:
        embed.add_field(name=name, value=safe_truncate(value, 1024), inline=inline)

    questions, refusals = snap["questions"], snap["refusals"]
    field("Questions", f"**{questions}** · not in the docs **{refusals}**")
    field("Errors", _pairs(snap["errors"]))
    votes = snap["votes"]
    field(
        "Votes",
        f"👍 **{votes.get('good', 0)}** · 👎 **{votes.get('flag', 0)}**"
        f" · withdrawn **{votes.get('ungood', 0) + votes.get('unflag', 0)}**",
    )
    tokens = snap["tokens"]
    field(
        "Tokens",
        f"prompt **{tokens.get('prompt', 0)}** · completion **{tokens.get('completion', 0)}**"
        f" · follow-up rewrites **{tokens.get('rewrite_prompt', 0)}**"
        f" + **{tokens.get('rewrite_completion', 0)}**",
    )
    field("Queue", f"**{snap['queue_depth']}** waiting")
    field("Index", f"**{snap['index_chunks']}** chunks")
    reindex = snap["reindex"]
    last = reindex["last_success"]
    when = discord.utils.format_dt(datetime.fromtimestamp(last, UTC), "R") if last else "never"
    mean = f" · mean {reindex['mean_s']} s" if reindex["mean_s"] is not None else ""
    field("Reindex runs", f"{_pairs(reindex['runs'])}{mean}\nlast success: {when}", inline=False)
    lines = []
    for stage, name in STAGE_NAMES.items():
        lat = snap["latency"].get(stage) or {}
        lines.append(
            f"{name}: p50 **{_ms(lat.get('p50_ms'))}** · p95 **{_ms(lat.get('p95_ms'))}**"
            f" ({lat.get('count', 0)} observed)"
        )
    field("Latency (ms)", "\n".join(lines), inline=False)
    keys = ["answers", "refused", "good", "flags", "flagged_answers", "stale", "corrected"]
    keys += ["handoffs", "candidates", "candidates_added"]
    fb = {k: feedback.get(k, 0) for k in keys}
    field(
        "Feedback (this server)",
        f"answers **{fb['answers']}** · not in the docs **{fb['refused']}**"
        f" · 👍 **{fb['good']}** · 👎 **{fb['flags']}**"
        f" · flagged answers **{fb['flagged_answers']}**"
        f" · stale (docs changed since) **{fb['stale']}**"
        f" · reached by a correction **{fb['corrected']}**"
        f" · handed to helpers **{fb['handoffs']}**"
        f" · people's answers proposed **{fb['candidates']}**"
        f" (added **{fb['candidates_added']}**)",
        inline=False,
    )
    return embed


async def setup(bot: RagBot) -> None:
    await bot.add_cog(Admin(bot))
