"""Slash-command options typed as Discord sends them, from the schema the client synced."""

from __future__ import annotations

from typing import Any

from .models import FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser, user_id

# Discord's ApplicationCommandOptionType.
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER = 3, 4, 5, 6, 7, 8, 9, 10


class OptionBuilder:
    """Turns ``{"name": python value}`` into ``data.options`` plus ``data.resolved``.

    Like the Discord client, it refuses unknown or missing required options, values outside
    ``choices`` or the declared bounds, and a missing subcommand.
    """

    def __init__(self, guild: FakeGuild, users: dict[int, FakeUser], bot_user: FakeUser) -> None:
        self.guild = guild
        self.users = users
        self.bot_user = bot_user
        self.resolved: dict[str, dict[str, Any]] = {}

    def build(
        self,
        schema: list[dict[str, Any]] | None,
        path: list[str],
        values: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Options as Discord sends them, typed from the synced schema (or guessed)."""
        if schema is None:  # not synced and not strict: guess types from Python values
            if path:
                return [
                    {
                        "type": SUB_COMMAND if len(path) == 1 else SUB_COMMAND_GROUP,
                        "name": path[0],
                        "options": self.build(None, path[1:], values),
                    }
                ]
            return [
                {
                    "name": k,
                    "type": guess_type(v),
                    "value": self.value(guess_type(v), v),
                }
                for k, v in values.items()
            ]
        if path:
            sub = next((o for o in schema if o["name"] == path[0] and o["type"] in (1, 2)), None)
            if sub is None:
                raise ValueError(f"no subcommand {path[0]!r} in the synced schema")
            inner = self.build(sub.get("options", []), path[1:], values)
            return [{"type": sub["type"], "name": sub["name"], "options": inner}]
        if any(o["type"] in (1, 2) for o in schema):
            raise ValueError("this command needs a subcommand: invoke('command sub', ...)")
        by_name = {o["name"]: o for o in schema}
        if unknown := set(values) - set(by_name):
            raise ValueError(f"options not in the synced schema: {sorted(unknown)}")
        if missing := [o["name"] for o in schema if o.get("required") and o["name"] not in values]:
            raise ValueError(f"required options missing: {missing}")
        out = []
        for name, value in values.items():
            spec = by_name[name]
            choices = [c["value"] for c in spec.get("choices") or []]
            if choices and value not in choices:
                raise ValueError(f"{name}={value!r} is not one of the choices {choices}")
            check_bounds(spec, value)
            out.append(
                {
                    "name": name,
                    "type": spec["type"],
                    "value": self.value(spec["type"], value),
                }
            )
        return out

    def value(self, kind: int, value: Any) -> Any:
        """The option's JSON value; users, roles and channels also go into ``resolved``."""
        guild, resolved = self.guild, self.resolved
        if kind == STRING:
            return str(value)
        if kind == INTEGER:
            return int(value)
        if kind == NUMBER:
            return value if isinstance(value, int | float) else float(value)
        if kind == BOOLEAN:
            return bool(value)
        if kind in (USER, MENTIONABLE) and isinstance(value, FakeUser | FakeMember | int):
            if kind == MENTIONABLE and isinstance(value, int) and value in guild.roles:
                return self.value(ROLE, value)
            uid = user_id(value)
            user = self.users.get(uid) or (value.user if isinstance(value, FakeMember) else None)
            if user is None:
                raise ValueError(f"unknown user {uid}")
            resolved.setdefault("users", {})[str(uid)] = user.to_payload()
            if member := guild.member(uid):
                payload = member.to_payload(
                    with_user=False, permissions=guild.base_permissions(member)
                )
                resolved.setdefault("members", {})[str(uid)] = payload
            return str(uid)
        if kind in (ROLE, MENTIONABLE):
            role = value if isinstance(value, FakeRole) else guild.roles[int(value)]
            resolved.setdefault("roles", {})[str(role.id)] = role.to_payload()
            return str(role.id)
        if kind == CHANNEL:
            chan = value if isinstance(value, FakeChannel) else guild.channels[int(value)]
            entry = {
                "id": str(chan.id),
                "name": chan.name,
                "type": chan.type,
                "permissions": str(guild.permissions_in(chan, self.bot_user)),
                "parent_id": None,
                "guild_id": str(guild.id),
            }
            resolved.setdefault("channels", {})[str(chan.id)] = entry
            return str(chan.id)
        raise ValueError(f"option type {kind} is not supported by the fake")


def check_bounds(spec: dict[str, Any], value: Any) -> None:
    """Refuse what the Discord client would: lengths or numbers outside the declared bounds."""
    if isinstance(value, str):
        if len(value) < spec.get("min_length", 0) or len(value) > spec.get("max_length", 6000):
            raise ValueError(f"{spec['name']}: length outside the schema's bounds")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        low, high = spec.get("min_value"), spec.get("max_value")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{spec['name']}: {value} outside the schema's bounds")


def guess_type(value: Any) -> int:
    """The option type for a Python value (only for commands that were never synced)."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, FakeUser | FakeMember):
        return USER
    if isinstance(value, FakeChannel):
        return CHANNEL
    if isinstance(value, FakeRole):
        return ROLE
    return STRING
