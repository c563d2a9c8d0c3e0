"""Home servers: the bot serves its own community and nobody else.

Anyone can invite a bot to their server, so the bot trusts none it was not told about
(DISCORD_HOME_GUILD_IDS, else DISCORD_DEV_GUILD_ID). Elsewhere it answers nothing: commands get
one short, private notice, messages and reactions are ignored, and with
DISCORD_LEAVE_OTHER_GUILDS it leaves. Within the home servers, what belongs to one server
(a reindex it started, its answers' review cards and buttons, its verified answers) is checked
against the server that acts on it.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from rag_core.config import Settings

from .feedback.records import guild_links

log = logging.getLogger(__name__)

NOT_HOME = "This bot serves another community and does not work in this server."
NOT_CONFIGURED = (
    "This bot is not set up for any server yet: its operator sets DISCORD_HOME_GUILD_IDS={id} "
    "to serve this one."
)
OTHER_GUILD = "That belongs to another server: only that server's moderators can act on it."


class Home:
    """Which servers the bot serves, and the rules that follow from it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._told: set[int] = set()  # servers already named in the log

    @property
    def guild_ids(self) -> frozenset[int]:
        return self.settings.home_guild_ids  # read at use: settings may change while running

    def serves(self, guild_id: int | None) -> bool:
        """Whether `guild_id` is one of the bot's home servers (a DM is none)."""
        return guild_id is not None and guild_id in self.guild_ids

    def ignored(self, guild_id: int, what: str) -> None:
        """Log, once per server, that the bot ignored `what` in a server that is not home."""
        if guild_id in self._told:
            return
        self._told.add(guild_id)
        log.warning(
            "ignoring %s in server %s: not a home server (DISCORD_HOME_GUILD_IDS)", what, guild_id
        )

    def notice(self, guild_id: int) -> str:
        """What a command in a server that is not home is told."""
        return NOT_CONFIGURED.format(id=guild_id) if not self.guild_ids else NOT_HOME

    def verified_scope(self, guild_id: int | None) -> tuple[str, ...]:
        """Link prefixes of the verified answers that may answer in `guild_id`: its own, or
        every home server's with VERIFIED_SHARED. A verified answer's link is its message's."""
        if self.settings.verified_shared:
            return tuple(guild_links(g) for g in sorted(self.guild_ids))
        return (guild_links(guild_id),) if self.serves(guild_id) else ()

    def source_allowed(self, url: str) -> bool:
        """Whether a server admin may index `url` (/reindex source:): under a host of the
        configured sources or of REINDEX_ALLOWED_HOSTS. Any other URL needs the bot's owner."""
        allowed = {_host(spec) for spec in self.settings.docs_sources}
        allowed |= {h.strip().lower().rstrip(".") for h in self.settings.reindex_allowed_hosts}
        host = _host(url)
        return bool(host) and host in allowed


def same_guild(record_guild: int | None, acting_guild: int | None) -> bool:
    """Whether a record (an answer, a verified answer) belongs to the server acting on it."""
    return record_guild is not None and record_guild == acting_guild


def _host(url: str) -> str:
    """The lower-case host of an http(s) URL; "" for anything else (a local path)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname if parts.scheme in ("http", "https") else None
    except ValueError:
        return ""
    return (host or "").rstrip(".")
