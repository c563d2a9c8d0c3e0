"""A loopback fake Discord for end-to-end tests of the bot with the *unmodified* discord.py client.

``FakeDiscord`` is an aiohttp server on 127.0.0.1 (random port) that speaks Discord's REST API
and gateway. While it runs, ``discord.http.Route.BASE`` and
``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` point at it (restored on exit), so a real
``commands.Bot`` logs in, connects, syncs commands, receives interactions and reactions, and
answers them over real HTTP, exactly as it would against Discord. The fake enforces Discord's
rules with Discord's own error bodies, and records everything the client does.

Quick start::

    from tests.fake_discord import FakeDiscord

    async def test_ask():
        async with FakeDiscord() as fake:
            guild = fake.add_guild("Docs")                  # bot + owner + #general
            mods = guild.add_role("Moderators", discord.Permissions(manage_messages=True))
            alice = fake.add_member(guild, "alice", [mods])
            bot = MyBot(guild_ready_timeout=0.1)            # 0.1: on_ready without a 2 s wait
            async with fake.running(bot):                   # login + connect + on_ready; close
                await bot.tree.sync()                       # PUT /applications/{id}/commands
                inter = await fake.invoke("ask", {"question": "How?"}, user=alice)
                await inter.wait_done()
            assert inter.deferred and inter.ack_latency < 3
            assert "Milvus" in inter.content
            assert [v.at for v in inter.edits]              # every PATCH of @original, timed
            fake.assert_clean()                             # no unknown route, no error, no ping

Setting up the world (before the client connects: the client learns it from GUILD_CREATE):

- ``fake.add_guild(name, channels=("general",), everyone_permissions=..., bot_permissions=...)``
  -> ``FakeGuild``; the bot joins with a managed role, ``fake.owner`` owns it.
- ``guild.add_role(name, permissions, mentionable=False)``, ``guild.add_channel(name,
  overwrites={role_or_member: discord.PermissionOverwrite(...)})`` (e.g. a moderators-only
  channel), ``fake.add_member(guild, "alice", roles)``; lookups ``guild.channel("general")``,
  ``guild.role(name)``, ``guild.member(user)``; ``fake.bot_user``, ``fake.application_id``.
- Permissions are computed like Discord (roles, @everyone, channel overwrites, admin, owner).

Acting as Discord's users (the client must be connected):

- ``await fake.invoke("ask", {"question": "..."}, user=, guild=, channel=,
  member_permissions=None, locale="en-US")`` -> ``FakeInteraction`` (type 2; options typed from
  the schema the client synced: sync first, or ``FakeDiscord(strict_commands=False)``).
- ``await fake.click(message, custom_id, user=...)`` -> a component interaction (type 3); only
  a component the message shows can be clicked.
- ``await fake.submit_modal(opened, {"input_id": "typed text"}, user=...)`` submits the modal
  that ``opened`` answered with (type 5, carrying the clicked message); unnamed inputs keep
  their prefilled values; required and length rules as in Discord's client.
- ``await fake.add_reaction(channel, message, user, "👍")`` / ``remove_reaction(...)``;
  ``await fake.user_message(channel, user, "text")``; ``await fake.dispatch(event, data)``.
- ``await fake.reconnect(resume=True)``: op 7 then RESUME (missed events replayed); with
  ``resume=False`` the session is invalidated and the client identifies again.

Inspecting (times are seconds on ``fake.now()``'s clock):

- ``FakeInteraction``: ``acked``, ``acked_at``, ``ack_latency``, ``response_type`` (4 message,
  5 deferred, 6/7 component update, 9 modal), ``deferred``, ``ephemeral``, ``original``
  (``FakeMessage``), ``content``, ``embeds``, ``history``/``edits`` (``MessageVersion`` with
  ``at``, ``content``, ``embeds``, ``allowed_mentions``, ``mentions``), ``followups``,
  ``requests``, ``errors``, ``error_codes``. Wait with ``wait_acked()``, ``wait_done(quiet=0.3)``
  (acknowledged, then no request about it for ``quiet`` s) or ``wait_for(predicate)``.
- ``fake.requests`` (every REST call: ``method``, ``path``, ``route`` template, ``params``,
  ``json``, ``status``, ``response``, ``code``, ``at``), ``fake.requests_to("POST /channels/*")``,
  ``fake.unknown_routes``, ``fake.errors``, ``fake.messages``, ``fake.channel_messages(ch)``,
  ``fake.pings()``, ``fake.gateway_frames`` (tokens removed), ``fake.global_commands``,
  ``fake.guild_commands``. Waiting: ``fake.wait_for(pred)``, ``wait_for_request(pattern)``,
  ``wait_quiet()``, ``wait_ready()``.
- ``fake.assert_clean(allow=(10062,), allow_pings=False)`` fails listing unknown routes,
  errors (except the allowed codes/statuses and injected 429s) and messages that would ping.
- ``clickable_links(content)``: the masked links and URLs Discord's Markdown would make
  clickable in a message or embed text (code and escapes taken into account).

Rules enforced (Discord's status, code and message):

- Interaction callback after ``ack_deadline`` (3 s): 404 10062; a second one: 400 40060;
  edits/followups before the acknowledgement: 404 10015; after ``token_lifetime`` (15 min):
  401 50027; unknown message id: 404 10008. A followup after a "thinking" defer replaces the
  placeholder, as Discord does. The ephemeral flag is fixed at the first response.
- Messages: content <= 2000, <= 10 embeds, <= 6000 embed characters, title 256, description
  4096, 25 fields, field name 256 / value 1024, footer 2048, author 256 -> 400 50035 with the
  ``errors`` tree; empty message -> 400 50006.
- Channels: unknown -> 404 10003; bot can't see it -> 403 50001; can't send/react/read
  history -> 403 50013; editing someone else's message -> 403 50005.
- Rate limits: ``X-RateLimit-*`` headers on every known route, a fixed-window bucket per route
  and major id (``RateLimit(limit=50, per=1.0)`` by default, ``fake.set_rate_limit(pattern,
  limit, per)``), real 429s with ``Via`` past the limit; ``fake.inject_429(pattern, count,
  retry_after)`` for bursts discord.py must retry. Unknown routes: 404 and recorded.
- Mentions: each message version records ``allowed_mentions`` and who it would ping
  (@everyone/@here with MENTION_EVERYONE, ``<@id>``, ``<@&id>`` of mentionable roles) after
  ``allowed_mentions``; only creation (or the first fill of a deferred placeholder) notifies.
- Gateway: HELLO, heartbeat ACKs, IDENTIFY -> READY -> GUILD_CREATE per guild (with the GUILDS
  intent), MESSAGE_* and MESSAGE_REACTION_* only with their intents, RESUME, member chunks.
  Any ``Authorization: Bot <token>`` is accepted (``FakeDiscord(token=...)`` to pin one); tokens
  are never recorded.

discord.py behaviours worth knowing in tests:

- ``on_ready`` fires ``guild_ready_timeout`` (default 2 s) after the last GUILD_CREATE, and a
  re-IDENTIFY waits 5 s in ``Client.before_identify_hook`` (Discord's identify limit).
- Rate-limited requests are retried only because the fake's 429s carry a ``Via`` header.
- Two concurrent responses to one interaction both reach Discord (discord.py checks "already
  responded" before awaiting): that is how a bot meets 40060.

Threads and messages: ``fake.user_message(channel_or_thread, user, text, reply_to=msg)``
(a reply, type 19) or ``msg_type=7`` (a system message); the bot's ``create_thread`` on a
message starts a public thread with the message's id (THREAD_CREATE, needs Create Public
Threads; ``fake.threads_of(channel)``); posting in a thread needs Send Messages in Threads and
fails in a locked one. Without the Message Content intent MESSAGE_CREATE carries no text unless
the bot wrote or is mentioned in the message, as on Discord.

Forums: ``guild.add_forum("help", tags=("Solved",))`` (type 15; nobody can post a message in
it); ``await fake.forum_post(forum, user, "title", "text")`` -> ``(post, starter)``: the post is
a public thread owned by the member (THREAD_CREATE), its starter message has the post's id
(MESSAGE_CREATE). ``PATCH /channels/{post}`` sets ``applied_tags`` (the forum's own tags; Manage
Threads unless the bot owns the thread), dispatching THREAD_UPDATE; ``forum.tag("Solved")``;
``await fake.tag_post(post, poster, "Solved")`` is the poster tagging their own post.

Not simulated: DMs, private threads, attachments' content, autocomplete
interactions, sharding beyond one shard.
"""

from .interactions import FakeInteraction
from .models import (
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    GatewayFrame,
    Mentions,
    MessageVersion,
    RecordedRequest,
)
from .rules import clickable_links
from .server import FakeDiscord, RateLimit

__all__ = [
    "FakeChannel",
    "FakeDiscord",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "GatewayFrame",
    "Mentions",
    "MessageVersion",
    "RateLimit",
    "RecordedRequest",
    "clickable_links",
]
