"""Home servers: a bot invited elsewhere serves only its own community, and within its home
servers what belongs to one server stays that server's (real bot, loopback fake Discord)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import discord
import pytest
from pydantic import SecretStr

from bot import doctor
from bot.home import NOT_HOME, OTHER_GUILD
from rag_core.search.verified import TITLE
from tests.bot_fixtures import Indexed, ShapedGenerator, World, running_bot
from tests.fake_discord import FakeGuild, FakeInteraction, FakeMember, FakeMessage
from tests.web_fixtures import LocalSite, Reply

QUESTION = "How many replicas can a single collection have loaded in memory?"
CORRECTION = "Each replica needs its own query node, so at most one replica per query node."
FOOTER = "-# Answered in"


def answered(inter: FakeInteraction) -> bool:
    messages = [inter.original, *inter.followups] if inter.original else []
    return any(FOOTER in m.content for m in messages)


def text_of(inter: FakeInteraction) -> str:
    return "\n".join(m.content for m in [inter.original, *inter.followups] if m is not None)


def buttons(message: FakeMessage) -> list[str]:
    return [c["custom_id"] for row in message.components for c in row.get("components", [])]


async def ask(w: World, user: FakeMember, guild: FakeGuild | None = None) -> FakeInteraction:
    inter = await w.fake.invoke("ask", {"question": QUESTION}, user=user, guild=guild)
    await inter.wait_for(answered, timeout=120)
    message = inter.original
    assert message is not None
    await w.fake.wait_for(lambda: len(message.reactions) == 2)
    return inter


async def second_home(w: World) -> tuple[FakeGuild, FakeMember, FakeMember]:
    """A second home server: the server, an admin (Manage Server) and a member."""
    guild = await w.fake.invite_bot("Second")
    admins = guild.add_role("Admins", discord.Permissions(manage_guild=True))
    w.bot.settings.discord_home_guild_ids = [w.guild.id, guild.id]
    await w.fake.wait_for(lambda: w.bot.get_guild(guild.id) is not None)
    return guild, w.fake.add_member(guild, "admin2", [admins]), w.fake.add_member(guild, "member2")


async def test_a_server_that_is_not_home_gets_nothing(
    indexed: Indexed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8))
    caplog.set_level(logging.WARNING, logger="bot")
    async with running_bot(rag, tmp_path, discord_message_content=True) as w:
        strangers = await w.fake.invite_bot("Strangers")
        admins = strangers.add_role("Admins", discord.Permissions(manage_guild=True))
        mallory = w.fake.add_member(strangers, "mallory", [admins])
        general = strangers.channel("general")
        # Commands: one short private notice each, and nothing runs.
        for command, options in (
            ("ask", {"question": QUESTION}),
            ("reindex", {"source": "https://strangers.example/docs"}),
            ("reindex", {"cancel": True}),
            ("flags", {}),
        ):
            inter = await w.fake.invoke(command, options, user=mallory, guild=strangers)
            await inter.wait_done()
            assert inter.ephemeral and inter.content == NOT_HOME, inter.summary()
        assert not w.bot.rag.indexer.running
        # Mentions get nothing; the log names the server once.
        me = w.fake.bot_user
        await w.fake.user_message(general, mallory, f"<@{me.id}> {QUESTION}")
        await w.fake.wait_quiet()
        said = [m for m in w.fake.channel_messages(general) if m.interaction_id is None]
        assert all(m.author is not me for m in said)
        assert not w.fake.threads_of(general)
        assert (await w.store.stats())["answers"] == 0
        told = [r for r in caplog.records if str(strangers.id) in r.getMessage()]
        assert len([r for r in told if "not a home server" in r.getMessage()]) == 2, told
        # The home server is served as before.
        inter = await ask(w, w.alice)
        assert "**Sources**" in text_of(inter)
    w.fake.assert_clean()


async def test_the_bot_leaves_servers_that_are_not_home_when_asked(
    indexed: Indexed, tmp_path: Path
) -> None:
    async with running_bot(indexed.rag, tmp_path, discord_leave_other_guilds=True) as w:
        strangers = await w.fake.invite_bot("Strangers")
        await w.fake.wait_for(lambda: strangers in w.fake.left_guilds)
        await w.fake.wait_for(lambda: w.bot.get_guild(strangers.id) is None)
        assert w.bot.get_guild(w.guild.id) is not None  # home stays
    w.fake.assert_clean()


async def test_doctor_names_the_servers_that_are_not_home(indexed: Indexed, tmp_path: Path) -> None:
    async with running_bot(indexed.rag, tmp_path) as w:
        w.fake.add_guild("Strangers")
        token = SecretStr("fake.bot.token")
        settings = w.bot.settings.model_copy(update={"discord_token": token})
        result = await doctor.check_home_guilds(settings)
        assert result.status is doctor.Status.WARN
        assert "'Strangers'" in result.message and str(w.guild.id) not in result.message
        unset = settings.model_copy(update={"discord_home_guild_ids": []})
        result = await doctor.check_home_guilds(unset)
        assert result.status is doctor.Status.FAIL and "'Docs'" in result.message
        assert "fake.bot.token" not in result.message + result.fix


async def test_home_servers_keep_their_reindex_to_themselves(
    indexed: Indexed, tmp_path: Path
) -> None:
    rag = indexed.with_settings(ShapedGenerator(indexed.rag.generator, max_tokens=8))
    chunks = await asyncio.to_thread(rag.store.count)
    async with LocalSite({"/slow": Reply.html("<h1>Late</h1><p>t</p>", delay_s=60)}) as site:
        site.routes["/robots.txt"] = Reply(status=404)
        async with running_bot(rag, tmp_path) as w:
            second, admin2, _ = await second_home(w)
            # A server admin may index only the configured sources' hosts (none is a URL here).
            refused = await w.fake.invoke("reindex", {"source": site.url("/slow")}, user=w.admin)
            await refused.wait_done()
            assert "only the bot's owner" in (refused.followups[-1].content or "")
            assert not w.bot.rag.indexer.running
            # The bot's owner may index any URL; another server's admin can neither watch
            # nor cancel that run.
            run = await w.fake.invoke("reindex", {"source": site.url("/slow")}, user=w.fake.owner)
            await run.wait_for(lambda i: "Reindexing" in (i.content or ""), timeout=10)
            watch = await w.fake.invoke("reindex", user=admin2, guild=second)
            await watch.wait_done()
            assert "started in another server" in (watch.followups[-1].content or "")
            assert site.url() not in text_of(watch)
            cancel = await w.fake.invoke("reindex", {"cancel": True}, user=admin2, guild=second)
            await cancel.wait_done()
            assert "started in another server" in (cancel.followups[-1].content or "")
            assert w.bot.rag.indexer.running
            # Its own server's admin can.
            stop = await w.fake.invoke("reindex", {"cancel": True}, user=w.admin)
            await stop.wait_done()
            assert "cancelled" in (stop.followups[-1].content or "")
            assert not w.bot.rag.indexer.running
            # With the host allowed, the same URL is an admin's to index (and cancel).
            w.bot.settings.reindex_allowed_hosts = ["127.0.0.1"]
            run = await w.fake.invoke(
                "reindex", {"source": site.url("/slow")}, user=admin2, guild=second
            )
            await run.wait_for(lambda i: "Reindexing" in (i.content or ""), timeout=10)
            stop = await w.fake.invoke("reindex", {"cancel": True}, user=admin2, guild=second)
            await stop.wait_done()
            assert "cancelled" in (stop.followups[-1].content or "")
        w.fake.assert_clean()
    assert await asyncio.to_thread(rag.store.count) == chunks


async def test_reviews_and_verified_answers_stay_in_their_server(
    indexed: Indexed, tmp_path: Path
) -> None:
    scripted = ShapedGenerator(indexed.rag.generator, max_tokens=8, prefix=f"{CORRECTION} [1]\n")
    rag = indexed.with_settings(scripted)
    async with running_bot(rag, tmp_path) as w:
        second, admin2, member2 = await second_home(w)
        lead = w.fake.add_member(w.guild, "lead", [w.mods_role, w.guild.role("Admins")])

        # A flag in the second server posts no card into the first server's moderators channel.
        theirs = await ask(w, member2, second)
        assert theirs.original is not None
        await w.fake.add_reaction(second.channel("general"), theirs.original, admin2, "👎")
        await w.fake.wait_quiet()
        assert w.fake.channel_messages(w.moderators) == []

        # A flag here does; its buttons, replayed from the other server, are refused.
        ours = await ask(w, w.alice)
        assert ours.original is not None
        await w.fake.add_reaction(w.general, ours.original, w.bob, "👎")
        await w.fake.wait_for(lambda: len(w.fake.channel_messages(w.moderators)) == 1)
        [card] = w.fake.channel_messages(w.moderators)
        answer_id = int(buttons(card)[0].rsplit(":", 1)[1])
        replayed = replay_card(w, card, second)
        for action in ("fine", "correct"):
            click = await w.fake.click(replayed, f"review:{action}:{answer_id}", user=admin2)
            await click.wait_done()
            assert click.content == OTHER_GUILD and click.modal is None, click.summary()
        assert await w.store.golden_answers() == []

        # The correction form: a forged submission by someone else is refused and leaves the
        # moderator's form open; the moderator's own submission then works.
        opened = await w.fake.click(card, f"review:correct:{answer_id}", user=lead)
        await opened.wait_done()
        assert opened.modal is not None
        answer_input = answer_input_of(opened.modal)
        forged = await w.fake.submit_modal(opened, {answer_input: "Forged."}, user=w.bob)
        await forged.wait_done()
        assert forged.ephemeral and "Only server admins" in (forged.content or "")
        submitted = await w.fake.submit_modal(opened, {answer_input: CORRECTION})
        await submitted.wait_done()
        await w.fake.wait_for(lambda: bool(card.embeds) and "Corrected" in str(card.embeds))
        [verified] = await w.store.verified()
        assert verified.answer == CORRECTION and verified.guild_id == w.guild.id

        # The verified answer answers here, not in the other server (unless shared).
        assert f"[1] [{TITLE}" in text_of(await ask(w, w.bob))
        assert TITLE not in text_of(await ask(w, admin2, second))
        w.bot.settings.verified_shared = True
        assert f"[1] [{TITLE}" in text_of(await ask(w, admin2, second))
        # The module's index is shared: take the verified answer back out.
        await w.bot.rag.verified.remove(verified.id)
    w.fake.assert_clean()


def replay_card(w: World, card: FakeMessage, guild: FakeGuild) -> FakeMessage:
    """The card's buttons shown in another server, as a card posted there by an earlier
    version of the bot would show them (a custom_id is all a click carries)."""
    body = {"content": "old card", "components": card.components}
    return w.fake._new_message(guild, guild.channel("general"), body, files=0, flags=0)


def answer_input_of(modal: dict[str, Any]) -> str:
    ids = []
    for row in modal["components"]:
        inner = [row["component"]] if row.get("type") == 18 else row.get("components", [])
        ids += [c["custom_id"] for c in inner]
    return ids[1]  # the question, then the answer
