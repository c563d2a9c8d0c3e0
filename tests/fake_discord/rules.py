"""Discord's rules as the fake enforces them: error codes, message limits, mention parsing.

Error bodies and codes are the ones Discord documents (JSON error codes table); the limits are
from the message/embed reference. discord.py turns them into ``discord.HTTPException`` subclasses
with ``.status`` and ``.code``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .models import Mentions


class ApiError(Exception):
    """An error response: HTTP status plus Discord's JSON ``{"code", "message"[, "errors"]}``."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def unauthorized() -> ApiError:
    return ApiError(401, 0, "401: Unauthorized")


def not_found() -> ApiError:
    return ApiError(404, 0, "404: Not Found")


def unknown_channel() -> ApiError:
    return ApiError(404, 10003, "Unknown Channel")


def unknown_guild() -> ApiError:
    return ApiError(404, 10004, "Unknown Guild")


def unknown_member() -> ApiError:
    return ApiError(404, 10007, "Unknown Member")


def unknown_message() -> ApiError:
    return ApiError(404, 10008, "Unknown Message")


def unknown_user() -> ApiError:
    return ApiError(404, 10013, "Unknown User")


def unknown_emoji() -> ApiError:
    return ApiError(400, 10014, "Unknown Emoji")


def unknown_webhook() -> ApiError:
    return ApiError(404, 10015, "Unknown Webhook")


def unknown_interaction() -> ApiError:
    return ApiError(404, 10062, "Unknown interaction")


def unknown_command() -> ApiError:
    return ApiError(404, 10063, "Unknown application command")


def already_acknowledged() -> ApiError:
    return ApiError(400, 40060, "Interaction has already been acknowledged.")


def missing_access() -> ApiError:
    return ApiError(403, 50001, "Missing Access")


def cannot_edit_others() -> ApiError:
    return ApiError(403, 50005, "Cannot edit a message authored by another user")


def empty_message() -> ApiError:
    return ApiError(400, 50006, "Cannot send an empty message")


def missing_permissions() -> ApiError:
    return ApiError(403, 50013, "Missing Permissions")


def wrong_channel_type() -> ApiError:
    return ApiError(400, 50024, "Cannot execute action on this channel type")


def thread_already_created() -> ApiError:
    return ApiError(400, 160004, "A thread has already been created for this message")


def thread_locked() -> ApiError:
    return ApiError(403, 50083, "Thread is archived")


def invalid_webhook_token() -> ApiError:
    return ApiError(401, 50027, "Invalid Webhook Token")


def invalid_form_body(errors: dict[str, Any]) -> ApiError:
    return ApiError(400, 50035, "Invalid Form Body", errors)


# --------------------------------------------------------------------------- form validation

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
MAX_FIELDS = 25
EMBED_TEXT_LIMITS = {"title": 256, "description": 4096}


class FormErrors:
    """Collects errors in Discord's nested ``{"path": {"_errors": [...]}}`` shape."""

    def __init__(self) -> None:
        self.tree: dict[str, Any] = {}

    def add(self, path: list[str | int], code: str, message: str) -> None:
        node = self.tree
        for key in path:
            node = node.setdefault(str(key), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def too_long(self, path: list[str | int], limit: int) -> None:
        self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def raise_if_any(self) -> None:
        if self.tree:
            raise invalid_form_body(self.tree)


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def embed_text_length(embed: dict[str, Any]) -> int:
    """The characters Discord counts towards the 6000 per-message embed total."""
    total = _length(embed.get("title")) + _length(embed.get("description"))
    total += _length((embed.get("footer") or {}).get("text"))
    total += _length((embed.get("author") or {}).get("name"))
    for f in embed.get("fields") or []:
        total += _length(f.get("name")) + _length(f.get("value"))
    return total


def validate_message(body: dict[str, Any], *, prefix: list[str | int] | None = None) -> None:
    """Check a message create/edit body against Discord's limits; raise 50035 on violations."""
    errors = FormErrors()
    at = list(prefix or [])
    content = body.get("content")
    if content is not None and len(str(content)) > MAX_CONTENT:
        errors.too_long([*at, "content"], MAX_CONTENT)
    embeds = body.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        errors.too_long([*at, "embeds"], MAX_EMBEDS)
    for i, embed in enumerate(embeds):
        here = [*at, "embeds", i]
        for key, limit in EMBED_TEXT_LIMITS.items():
            if _length(embed.get(key)) > limit:
                errors.too_long([*here, key], limit)
        fields = embed.get("fields") or []
        if len(fields) > MAX_FIELDS:
            errors.too_long([*here, "fields"], MAX_FIELDS)
        for j, f in enumerate(fields):
            for key, limit in (("name", 256), ("value", 1024)):
                if not f.get(key):
                    errors.add(
                        [*here, "fields", j, key], "BASE_TYPE_REQUIRED", "This field is required"
                    )
                elif _length(f.get(key)) > limit:
                    errors.too_long([*here, "fields", j, key], limit)
        if _length((embed.get("footer") or {}).get("text")) > 2048:
            errors.too_long([*here, "footer", "text"], 2048)
        if _length((embed.get("author") or {}).get("name")) > 256:
            errors.too_long([*here, "author", "name"], 256)
    if sum(embed_text_length(e) for e in embeds) > MAX_EMBED_TOTAL:
        errors.add(
            [*at, "embeds"],
            "MAX_EMBED_SIZE_EXCEEDED",
            f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL}",
        )
    errors.raise_if_any()


def require_not_empty(content: str, embeds: list[Any], components: list[Any], files: int) -> None:
    """Discord refuses a message with nothing in it (50006)."""
    if not content and not embeds and not components and not files:
        raise empty_message()


def require_body_not_empty(body: dict[str, Any], files: int) -> None:
    """``require_not_empty`` for a request body by itself (what a new message would hold)."""
    require_not_empty(
        str(body.get("content") or ""),
        body.get("embeds") or [],
        body.get("components") or [],
        files,
    )


# --------------------------------------------------------------------------- mentions

_EVERYONE = re.compile(r"@(everyone|here)\b")
_USER = re.compile(r"<@!?(\d+)>")
_ROLE = re.compile(r"<@&(\d+)>")


def compute_mentions(
    content: str,
    allowed_mentions: dict[str, Any] | None,
    *,
    can_mention_everyone: bool,
    role_is_mentionable: Callable[[int], bool],
    replied_user: int | None = None,
) -> Mentions:
    """Who ``content`` would ping, following Discord's ``allowed_mentions`` rules.

    No ``allowed_mentions`` means "parse everything". With it, a kind is pinged only if it is in
    ``parse`` or its id is listed in ``users``/``roles``. @everyone/@here also needs the
    MENTION_EVERYONE permission; a role needs to be mentionable or that same permission.
    """
    am = allowed_mentions
    parse = {"users", "roles", "everyone"} if am is None else set(am.get("parse") or [])
    allowed_users = set() if am is None else {int(u) for u in am.get("users") or []}
    allowed_roles = set() if am is None else {int(r) for r in am.get("roles") or []}

    users = {int(u) for u in _USER.findall(content) if "users" in parse or int(u) in allowed_users}
    if replied_user is not None and (am is None or am.get("replied_user", False)):
        users.add(replied_user)
    roles = {
        int(r)
        for r in _ROLE.findall(content)
        if ("roles" in parse or int(r) in allowed_roles)
        and (can_mention_everyone or role_is_mentionable(int(r)))
    }
    everyone = bool(_EVERYONE.search(content)) and "everyone" in parse and can_mention_everyone
    return Mentions(everyone=everyone, users=frozenset(users), roles=frozenset(roles))


# --------------------------------------------------------------------------- links

# Discord's Markdown, tried at each position from left to right: an escape, a code block,
# inline code (a run of backticks up to the same run; code content is raw), else one character.
_MARKDOWN_TOKEN = re.compile(
    r"(?P<esc>\\[^0-9A-Za-z\s])|(?P<block>```[\s\S]*?[^\n][\s\S]*?```)"
    r"|(?P<inline>(`+)[\s\S]*?[^`]\4(?!`))|(?P<char>[\s\S])"
)
_LINK_START = re.compile(r"\]\(|<?[a-z][a-z0-9+.-]*:/+[^\s<>`]*", re.IGNORECASE)


def clickable_links(content: str) -> list[str]:
    """What Discord could make clickable in ``content``: masked links (their ``](``) and URLs
    (bare or in <...>) outside code. Conservative: any scheme, one slash is enough."""
    plain = "".join(m["char"] or " " for m in _MARKDOWN_TOKEN.finditer(content))
    return _LINK_START.findall(plain)
