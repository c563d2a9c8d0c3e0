"""The loopback fake Discord, driven by a real discord.py ``commands.Bot`` (HTTP + websocket)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fake_discord import FakeDiscord, FakeGuild, FakeMember
from tests.fake_discord.rules import ApiError, validate_message

# --------------------------------------------------------------------------- a toy bot


class RecordingTree(app_commands.CommandTree):
    """Puts every command error on the bot's queue (instead of logging it)."""

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        self.client.errors.put_nowait(getattr(error, "original", error))  # type: ignore[attr-defined]


class VoteView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Vote", custom_id="toy:vote")
    async def vote(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content=f"voted by {interaction.user.name}")


class ToyBot(commands.Bot):
    """A minimal real bot: a few slash commands that follow (or break) Discord's rules."""

    def __init__(self, intents: discord.Intents | None = None) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents or discord.Intents.default(),
            tree_cls=RecordingTree,
            guild_ready_timeout=0.05,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.ready_count = 0
        self.errors: asyncio.Queue[BaseException] = asyncio.Queue()
        self.reactions: asyncio.Queue[discord.RawReactionActionEvent] = asyncio.Queue()
        toys: list[app_commands.Command[Any, ..., Any]] = [
            stream,
            slow,
            twice,
            long,
            early,
            later,
            answer,
            vote,
            admin,
        ]
        for command in toys:
            self.tree.add_command(command)

    async def on_ready(self) -> None:
        self.ready_count += 1

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before re-identifying (Discord's identify limit); not here."""

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if self.user and payload.user_id != self.user.id:
            self.reactions.put_nowait(payload)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        if self.user and payload.user_id != self.user.id:
            self.reactions.put_nowait(payload)


@app_commands.command(description="Defer, edit twice, then a followup")
async def stream(interaction: discord.Interaction, question: str, private: bool = True) -> None:
    await interaction.response.defer(ephemeral=private, thinking=True)
    await interaction.edit_original_response(content="Thinking about it")
    await asyncio.sleep(0.05)
    await interaction.edit_original_response(
        content=f"Answer to {question}", embed=discord.Embed(title="Sources")
    )
    await interaction.followup.send("Was this helpful?", ephemeral=private)


@app_commands.command(description="Responds after 3.5 s")
async def slow(interaction: discord.Interaction) -> None:
    await asyncio.sleep(3.5)
    await interaction.response.send_message("too late")


@app_commands.command(description="Acknowledges twice (two concurrent responses)")
async def twice(interaction: discord.Interaction) -> None:
    await asyncio.gather(interaction.response.defer(), interaction.response.send_message("second"))


@app_commands.command(description="Sends a 2500-character message")
async def long(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("x" * 2500)


@app_commands.command(description="Edits the response before acknowledging")
async def early(interaction: discord.Interaction) -> None:
    await interaction.edit_original_response(content="too early")


@app_commands.command(description="Defers, waits, then edits")
async def later(interaction: discord.Interaction, seconds: float) -> None:
    await interaction.response.defer()
    await asyncio.sleep(seconds)
    await interaction.edit_original_response(content="finally")


@app_commands.command(description="Answers and adds feedback reactions")
async def answer(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("Milvus supports HNSW.")
    message = await interaction.original_response()
    await message.add_reaction("👍")
    await message.add_reaction("👎")


@app_commands.command(description="A message with a button")
async def vote(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("Vote here", view=VoteView())


@app_commands.command(description="Admin only")
@app_commands.default_permissions(manage_guild=True)
async def admin(interaction: discord.Interaction) -> None:
    allowed = interaction.permissions.manage_guild
    await interaction.response.send_message("done" if allowed else "denied", ephemeral=True)


# --------------------------------------------------------------------------- fixtures


def populate(fake: FakeDiscord) -> tuple[FakeGuild, FakeMember]:
    guild = fake.add_guild("Docs")
    mods = guild.add_role("Moderators", discord.Permissions(manage_messages=True))
    guild.add_channel(
        "moderators",
        overwrites={
            guild.everyone: discord.PermissionOverwrite(view_channel=False),
            mods: discord.PermissionOverwrite(view_channel=True),
        },
    )
    guild.add_channel(
        "announcements",
        overwrites={guild.everyone: discord.PermissionOverwrite(send_messages=False)},
    )
    alice = fake.add_member(guild, "alice")
    return guild, alice


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        populate(fake)
        yield fake


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[ToyBot]:
    bot = ToyBot()
    async with fake.running(bot):
        await bot.tree.sync()
        yield bot


def only_guild(fake: FakeDiscord) -> FakeGuild:
    return next(iter(fake.guilds.values()))


def member_named(guild: FakeGuild, name: str) -> FakeMember:
    return next(m for m in guild.members.values() if m.user.username == name)


async def next_error(bot: ToyBot) -> Any:
    return await asyncio.wait_for(bot.errors.get(), timeout=6)


# --------------------------------------------------------------------------- connecting, syncing


async def test_client_connects_and_syncs_commands(fake: FakeDiscord) -> None:
    bot = ToyBot()
    async with fake.running(bot, token="abc.def.ghi"):
        assert bot.ready_count == 1
        assert bot.user is not None and bot.user.id == fake.bot_user.id
        assert bot.application_id == fake.application_id
        guild = bot.get_guild(only_guild(fake).id)
        assert guild is not None
        assert {c.name for c in guild.text_channels} == {"general", "moderators", "announcements"}
        assert not guild.me.guild_permissions.administrator
        mods_channel = discord.utils.get(guild.text_channels, name="moderators")
        assert mods_channel is not None and not mods_channel.permissions_for(guild.me).view_channel

        synced = await bot.tree.sync()
        assert {c.name for c in synced} == {c["name"] for c in fake.global_commands}
        assert all(c.id for c in synced)
        fetched = await bot.tree.fetch_commands()
        assert [c.id for c in fetched] == [c.id for c in synced]
        admin_schema = next(c for c in fake.global_commands if c["name"] == "admin")
        assert admin_schema["default_member_permissions"] == "32"

        guild_synced = await bot.tree.sync(guild=discord.Object(id=guild.id))
        assert guild_synced == [] and fake.guild_commands[guild.id] == []

    routes = [(r.method, r.route) for r in fake.requests]
    assert routes[:2] == [("GET", "/users/@me"), ("GET", "/oauth2/applications/@me")]
    assert ("PUT", "/applications/{application_id}/commands") in routes
    identify = next(f for f in fake.gateway_frames if f.op == 2)
    assert identify.data["intents"] == discord.Intents.default().value
    assert "abc.def.ghi" not in repr(fake.requests) + repr(fake.gateway_frames)
    fake.assert_clean()


async def test_reconnect_resumes_and_reidentifies(fake: FakeDiscord, bot: ToyBot) -> None:
    await fake.reconnect(resume=True)
    assert fake.resume_count == 1 and bot.ready_count == 1
    inter = await fake.invoke("admin")
    await inter.wait_done(quiet=0.05)
    assert inter.content == "denied"

    await fake.reconnect(resume=False)
    await asyncio.wait_for(bot.wait_until_ready(), 5)
    await fake.wait_for(lambda: bot.ready_count == 2, timeout=5)
    assert fake.identify_count == 2
    fake.assert_clean()


# --------------------------------------------------------------------------- interactions


async def test_deferred_edits_and_followup_are_recorded(fake: FakeDiscord, bot: ToyBot) -> None:
    guild = only_guild(fake)
    alice = member_named(guild, "alice")
    inter = await fake.invoke("stream", {"question": "HNSW?"}, user=alice)
    await inter.wait_done()

    assert inter.acked and inter.deferred and inter.ephemeral
    assert inter.ack_latency is not None and inter.ack_latency < 3.0
    payload = inter.payload
    assert payload["data"]["options"] == [{"name": "question", "type": 3, "value": "HNSW?"}]
    assert payload["member"]["user"]["id"] == str(alice.id)
    assert isinstance(payload["member"]["permissions"], str)

    assert [v.source for v in inter.history] == ["loading", "edit", "edit"]
    assert [v.content for v in inter.edits] == ["Thinking about it", "Answer to HNSW?"]
    assert inter.edits[0].at < inter.edits[1].at
    assert [e["title"] for e in inter.embeds] == ["Sources"]
    assert inter.edits[1].allowed_mentions == {"parse": []}
    assert [m.content for m in inter.followups] == ["Was this helpful?"]
    assert inter.followups[0].ephemeral
    assert [r.route for r in inter.requests] == [
        "/interactions/{interaction_id}/{token}/callback",
        "/webhooks/{application_id}/{token}/messages/{message_id}",
        "/webhooks/{application_id}/{token}/messages/{message_id}",
        "/webhooks/{application_id}/{token}",
    ]
    fake.assert_clean()


async def test_response_after_three_seconds_is_unknown_interaction(
    fake: FakeDiscord, bot: ToyBot
) -> None:
    inter = await fake.invoke("slow")
    error = await next_error(bot)
    assert isinstance(error, discord.NotFound) and error.code == 10062
    assert not inter.acked and inter.error_codes == [10062]
    with pytest.raises(AssertionError, match="10062"):
        fake.assert_clean()
    fake.assert_clean(allow=[10062])


async def test_second_acknowledgement_is_refused(fake: FakeDiscord, bot: ToyBot) -> None:
    inter = await fake.invoke("twice")
    error = await next_error(bot)
    assert isinstance(error, discord.HTTPException) and error.code == 40060
    assert error.status == 400
    assert inter.acked and inter.error_codes == [40060]


async def test_too_long_message_is_invalid_form_body(fake: FakeDiscord, bot: ToyBot) -> None:
    inter = await fake.invoke("long")
    error = await next_error(bot)
    assert isinstance(error, discord.HTTPException) and error.code == 50035
    assert "Must be 2000 or fewer in length." in error.text
    [refused] = inter.errors
    assert refused.response["errors"]["data"]["content"]["_errors"][0]["code"] == (
        "BASE_TYPE_MAX_LENGTH"
    )
    assert not inter.acked  # an invalid body does not use up the acknowledgement


async def test_edit_before_ack_and_after_token_expiry() -> None:
    async with FakeDiscord(token_lifetime=0.4) as fake:
        populate(fake)
        bot = ToyBot()
        async with fake.running(bot):
            await bot.tree.sync()
            early = await fake.invoke("early")
            error = await next_error(bot)
            assert isinstance(error, discord.NotFound) and error.code == 10015
            assert early.error_codes == [10015]

            later = await fake.invoke("later", {"seconds": 0.5})
            error = await next_error(bot)
            assert isinstance(error, discord.HTTPException) and error.code == 50027
            assert error.status == 401
            assert later.deferred and later.error_codes == [50027]
            assert later.payload["data"]["options"][0] == {
                "name": "seconds",
                "type": 10,
                "value": 0.5,
            }


async def test_member_permissions_reach_the_command(fake: FakeDiscord, bot: ToyBot) -> None:
    denied = await fake.invoke("admin")
    allowed = await fake.invoke("admin", member_permissions=discord.Permissions(manage_guild=True))
    await denied.wait_done(quiet=0.05)
    await allowed.wait_done(quiet=0.05)
    assert (denied.content, allowed.content) == ("denied", "done")
    assert denied.response_type == 4 and denied.ephemeral


async def test_button_click_updates_the_message(fake: FakeDiscord, bot: ToyBot) -> None:
    inter = await fake.invoke("vote")
    await inter.wait_done(quiet=0.05)
    assert inter.original is not None and inter.original.components
    click = await fake.click(inter.original, "toy:vote")
    await click.wait_done(quiet=0.05)
    assert click.response_type == 7
    assert inter.original.content == "voted by alice"
    # Only a component the message shows can be pressed.
    with pytest.raises(LookupError):
        await fake.click(inter.original, "toy:missing")
    fake.assert_clean()


async def test_unsynced_command_cannot_be_invoked(fake: FakeDiscord) -> None:
    bot = ToyBot()
    async with fake.running(bot):
        with pytest.raises(LookupError, match="never synced"):
            await fake.invoke("stream", {"question": "?"})
    with pytest.raises(RuntimeError, match="no client is connected"):
        await fake.invoke("stream")


# --------------------------------------------------------------------------- channels, reactions


async def test_reactions_reach_the_raw_listener(fake: FakeDiscord, bot: ToyBot) -> None:
    guild = only_guild(fake)
    alice = member_named(guild, "alice")
    inter = await fake.invoke("answer")
    await inter.wait_done()
    message = inter.original
    assert message is not None
    assert message.reactions == {"👍": [fake.bot_user.id], "👎": [fake.bot_user.id]}

    await fake.add_reaction(inter.channel, message, alice, "👍")
    added = await asyncio.wait_for(bot.reactions.get(), 5)
    assert added.event_type == "REACTION_ADD" and str(added.emoji) == "👍"
    assert added.message_id == message.id and added.user_id == alice.id
    assert added.message_author_id == fake.bot_user.id
    assert added.member is not None and added.member.name == "alice"

    await fake.remove_reaction(inter.channel, message, alice, "👍")
    removed = await asyncio.wait_for(bot.reactions.get(), 5)
    assert removed.event_type == "REACTION_REMOVE" and removed.user_id == alice.id
    fake.assert_clean()


async def test_channel_permissions_and_unknown_channel(fake: FakeDiscord, bot: ToyBot) -> None:
    guild = only_guild(fake)
    general = bot.get_channel(guild.channel("general").id)
    hidden = bot.get_channel(guild.channel("moderators").id)
    readonly = bot.get_channel(guild.channel("announcements").id)
    assert isinstance(general, discord.TextChannel)
    assert isinstance(hidden, discord.TextChannel) and isinstance(readonly, discord.TextChannel)

    sent = await general.send("hello")
    edited = await sent.edit(content="hello again")
    assert edited.content == "hello again"
    assert [v.content for v in fake.messages[sent.id].history] == ["hello", "hello again"]

    with pytest.raises(discord.Forbidden) as cannot_see:
        await hidden.send("psst")
    with pytest.raises(discord.Forbidden) as cannot_send:
        await readonly.send("news")
    with pytest.raises(discord.NotFound) as unknown:
        await bot.get_partial_messageable(1234).send("anyone?")
    assert (cannot_see.value.code, cannot_send.value.code, unknown.value.code) == (
        50001,
        50013,
        10003,
    )
    fake.assert_clean(allow=[50001, 50013, 10003])


async def test_forum_posts_tags_and_what_a_forum_refuses() -> None:
    async with FakeDiscord() as fake:
        guild, alice = populate(fake)
        forum = guild.add_forum("help", tags=("Solved", "Bug"))
        bot = ToyBot(intents=discord.Intents.default() | discord.Intents(message_content=True))
        async with fake.running(bot):
            seen: list[discord.Message] = []

            async def on_message(message: discord.Message) -> None:
                seen.append(message)

            bot.add_listener(on_message)
            post, starter = await fake.forum_post(forum, alice, "Crash on start", "Logs below")
            await fake.wait_for(lambda: bool(seen))
            [message] = seen
            thread = message.channel
            assert isinstance(thread, discord.Thread) and isinstance(
                thread.parent, discord.ForumChannel
            )
            assert message.id == thread.id == post.id == starter.id
            assert (thread.name, message.content, thread.owner_id) == (
                "Crash on start",
                "Logs below",
                alice.id,
            )
            assert [t.name for t in thread.parent.available_tags] == ["Solved", "Bug"]
            with pytest.raises(discord.HTTPException) as no_messages:
                await bot.http.send_message(forum.id, params=_text("hi"))
            with pytest.raises(discord.Forbidden) as not_allowed:  # Manage Threads needed
                await thread.add_tags(thread.parent.available_tags[0])
            overwrite = discord.PermissionOverwrite(manage_threads=True)
            guild.set_overwrite(forum, fake.bot_member(guild), overwrite)
            await thread.add_tags(thread.parent.available_tags[0])
            assert post.applied_tags == [forum.tag("Solved")]
            await fake.wait_for(lambda: [t.name for t in thread.applied_tags] == ["Solved"])
            with pytest.raises(discord.HTTPException) as unknown_tag:
                await bot.http.edit_channel(thread.id, applied_tags=["42"])
            await thread.send("in the post")  # a post is a thread: messages go there
        codes = (no_messages.value.code, not_allowed.value.code, unknown_tag.value.code)
        assert codes == (50024, 50013, 50035)
        fake.assert_clean(allow=[50024, 50013, 50035])


def _text(content: str) -> Any:
    return discord.http.handle_message_parameters(content=content)


async def test_allowed_mentions_decide_who_is_pinged(fake: FakeDiscord, bot: ToyBot) -> None:
    guild = only_guild(fake)
    alice = member_named(guild, "alice")
    channel = bot.get_channel(guild.channel("general").id)
    assert isinstance(channel, discord.TextChannel)

    quiet = await channel.send(f"@everyone see {alice.user.mention}")
    assert fake.messages[quiet.id].allowed_mentions == {"parse": []}
    assert not fake.pings()
    fake.assert_clean()

    loud = await channel.send(
        f"{alice.user.mention} answered", allowed_mentions=discord.AllowedMentions(users=True)
    )
    [(message, version)] = fake.pings()
    assert message.id == loud.id and version.mentions.users == {alice.id}
    with pytest.raises(AssertionError, match="ping"):
        fake.assert_clean()


# --------------------------------------------------------------------------- rate limits, routes


async def test_429_bursts_are_retried(fake: FakeDiscord, bot: ToyBot) -> None:
    channel = bot.get_channel(only_guild(fake).channel("general").id)
    assert isinstance(channel, discord.TextChannel)
    fake.inject_429("POST /channels/*/messages", count=2, retry_after=0.05)
    message = await channel.send("after a burst")
    attempts = fake.requests_to("POST /channels/{channel_id}/messages")
    assert [r.status for r in attempts] == [429, 429, 200]
    assert attempts[-1].at - attempts[0].at >= 0.1
    assert fake.messages[message.id].content == "after a burst"

    fake.inject_429("PATCH /webhooks/*/messages/@original", count=1, retry_after=0.05)
    inter = await fake.invoke("stream", {"question": "rate limits?", "private": False})
    await inter.wait_done()
    assert inter.content == "Answer to rate limits?" and not inter.ephemeral
    assert [r.status for r in inter.requests].count(429) == 1
    fake.assert_clean()


async def test_rate_limit_headers_are_obeyed(fake: FakeDiscord, bot: ToyBot) -> None:
    channel = bot.get_channel(only_guild(fake).channel("general").id)
    assert isinstance(channel, discord.TextChannel)
    fake.set_rate_limit("POST /channels/*/messages", limit=2, per=0.3)
    for i in range(4):
        await channel.send(f"message {i}")
    sent = fake.requests_to("POST /channels/*/messages")
    assert [r.status for r in sent] == [200] * 4  # discord.py waited instead of hitting a 429
    assert sent[2].at - sent[0].at >= 0.25
    fake.assert_clean()


async def test_unknown_routes_are_caught(fake: FakeDiscord, bot: ToyBot) -> None:
    guild = bot.get_guild(only_guild(fake).id)
    assert guild is not None
    with pytest.raises(discord.NotFound):
        await guild.fetch_roles()
    [unknown] = fake.unknown_routes
    assert (unknown.method, unknown.path) == ("GET", f"/guilds/{guild.id}/roles")
    with pytest.raises(AssertionError, match="unknown route"):
        fake.assert_clean()


# --------------------------------------------------------------------------- rules, no client


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"content": "x" * 2001}, ["content"]),
        ({"embeds": [{"title": "t"}] * 11}, ["embeds"]),
        ({"embeds": [{"title": "t" * 257}]}, ["embeds", "0", "title"]),
        ({"embeds": [{"description": "d" * 4097}]}, ["embeds", "0", "description"]),
        ({"embeds": [{"fields": [{"name": "n", "value": "v"}] * 26}]}, ["embeds", "0", "fields"]),
        ({"embeds": [{"fields": [{"name": "n" * 257, "value": "v"}]}]}, ["embeds", "0", "fields"]),
        ({"embeds": [{"fields": [{"name": "n", "value": "v" * 1025}]}]}, ["embeds", "0", "fields"]),
        ({"embeds": [{"footer": {"text": "f" * 2049}}]}, ["embeds", "0", "footer", "text"]),
        ({"embeds": [{"author": {"name": "a" * 257}}]}, ["embeds", "0", "author", "name"]),
        ({"embeds": [{"description": "d" * 4000}, {"description": "d" * 2001}]}, ["embeds"]),
    ],
)
def test_message_limits(body: dict[str, Any], path: list[str]) -> None:
    with pytest.raises(ApiError) as refused:
        validate_message(body)
    assert (refused.value.status, refused.value.code) == (400, 50035)
    node = refused.value.errors
    for key in path:
        assert node is not None
        node = node[key]
    validate_message({"content": "x" * 2000, "embeds": [{"title": "t" * 256}] * 10})
