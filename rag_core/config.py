"""Settings: one typed object, read once from the environment and `.env`.

Every field is documented in `.env.example` (a test checks they match).
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from .errors import ConfigError

# List settings take a JSON list (`["docs/", "https://x/sitemap.xml"]`) or, friendlier in a
# .env file, a plain comma-separated value (`docs/,https://x/sitemap.xml`). NoDecode hands the
# raw string to `_split_list` instead of failing on JSON.
StrList = Annotated[list[str], NoDecode]
IntList = Annotated[list[int], NoDecode]
# A number that may be left empty (NAME= in the environment or .env): None.
MaybeFloat = Annotated[float | None, BeforeValidator(lambda v: None if v == "" else v)]


class Settings(BaseSettings):
    """All configuration of rag_core and the bot; environment names are field names in capitals."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- storage ---
    data_dir: Path = Field(Path("data"), description="Folder for the Milvus Lite file and caches")
    milvus_uri: str = Field(
        "",
        description="Milvus server URI (http://host:19530); empty = Milvus Lite file in data_dir",
    )
    milvus_token: SecretStr = Field(
        SecretStr(""), description="Milvus server token (user:password)"
    )
    collection: str = Field("docs", description="Alias searchers use; versions live beside it")

    # --- sources ---
    docs_sources: StrList = Field(
        default_factory=list,
        description="Default sources for `index` and /reindex (JSON list or comma-separated)",
    )
    docs_base_url: str = Field(
        "", description="Public URL prefix for local files (front-matter id, else relative path)"
    )
    fetch_concurrency: int = Field(8, ge=1, description="Pages fetched at once")
    fetch_timeout_s: float = Field(20.0, gt=0, description="Per-request timeout, seconds")
    fetch_retries: int = Field(3, ge=0, description="Retries on 429/5xx/timeouts, with backoff")
    fetch_backoff_s: float = Field(
        0.5, ge=0, description="Delay before the first retry, doubled for each next one"
    )
    fetch_max_bytes: int = Field(5_000_000, gt=0, description="Pages larger than this are skipped")
    fetch_max_redirects: int = Field(5, ge=0, description="Redirects followed per request")
    # CRAWL_MAX_PAGES: the former name, when this cap applied to crawls only.
    source_max_pages: int = Field(
        5000,
        ge=1,
        validation_alias=AliasChoices("source_max_pages", "crawl_max_pages"),
        description="Pages loaded per sitemap or crawl source at most",
    )
    sitemap_max_fetches: int = Field(
        50, ge=1, description="Sitemap files fetched per source at most, indexes included"
    )
    fetch_page_deadline_s: float = Field(
        60.0, gt=0, description="Total time for one page over all its tries and redirects, seconds"
    )
    # Real 8.5 MB docs pages (rustdoc source, Node's all.html) take 6 to 7 s on a busy 2-core
    # host; 5 MB of nested tags built to be slow take longer and fail alone (docs/indexing.md).
    page_parse_cpu_s: float = Field(
        20.0,
        gt=0,
        description="CPU seconds one page or file may take to convert from HTML to text; a "
        "page over it is skipped and reported",
    )
    allow_private_urls: bool = Field(
        False, description="Allow URLs resolving to loopback/private/link-local addresses (SSRF)"
    )
    user_agent: str = Field("docs-discord-bot/0.1 (+self-hosted)", description="HTTP User-Agent")

    # --- chunking and embeddings ---
    embedding_model: str = Field(
        "BAAI/bge-base-en-v1.5", description="sentence-transformers model name or local path"
    )
    embedding_device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:1")
    embedding_backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch",
        description="torch; on CPU hosts onnx = ONNX Runtime, exported once into "
        "data_dir/models/onnx (same vectors, faster: docs/benchmarks.md); onnx-int8 = int8 "
        "weights, faster still, slightly different vectors (measured recall in docs/models.md)",
    )
    embedding_batch_size: int = Field(
        0, ge=0, description="Texts per encoder batch (0 = 128 on GPU, 8 on CPU)"
    )
    chunk_tokens: int = Field(256, ge=32, description="Chunk size in embedding-model tokens")
    chunk_overlap_tokens: int = Field(32, ge=0, description="Overlap between chunks, tokens")

    # --- search ---
    search_mode: Literal["hybrid", "dense"] = Field(
        "hybrid", description="hybrid = dense + BM25 fused with RRF; dense = vectors only"
    )
    # 8, not 5: on eval/questions.jsonl (docs/evaluation.md) hybrid search's larger candidate
    # pool (4 x top_k per side) lifts English recall@5 0.957 -> 0.978 and MRR 0.743 -> 0.751.
    top_k: int = Field(8, ge=1, le=50, description="Passages retrieved per question")
    # Fusion and diversity were chosen on tuning questions only (the tune half of
    # eval/community.jsonl and eval/questions.jsonl; docs/evaluation.md): the setting that is
    # best on both without losing on either. One passage per page first did most of it: English
    # recall@5 0.889 -> 0.904 on the community tune half, 0.978 kept on questions.jsonl.
    search_candidates: int = Field(
        32, ge=1, le=1000, description="Hybrid: candidates the dense and the BM25 side each propose"
    )
    fusion_rrf_k: int = Field(
        30, ge=1, description="Hybrid: RRF constant (smaller trusts each side's top ranks more)"
    )
    fusion_dense_weight: float = Field(
        1.0, ge=0, description="Hybrid: weight of the dense ranking in the fusion (BM25's is 1)"
    )
    passages_per_page: int = Field(
        1,
        ge=1,
        description="Passages from one page among the top ones before any page gets one more",
    )
    query_cleaning: bool = Field(
        True,
        description="Search with the question's sentences, error lines and code identifiers "
        "only: pasted stack frames, paths, timestamps, ids and repeated log lines are left out",
    )
    # Off by default: each question costs one prefill per passage (7.8 s for 8 passages with
    # SmolLM2-135M on 2 CPU cores), and with that model the tune-half gain did not hold on the
    # test half (docs/evaluation.md). The weight was chosen on the tune half.
    rerank: Literal["off", "llm"] = Field(
        "off",
        description="llm = reorder the retrieved passages by how likely the answer model finds "
        "the question after each one (query likelihood; loads the model for `eval` too)",
    )
    rerank_weight: float = Field(
        2.0,
        ge=0,
        description="RERANK=llm: weight of the model's score against the retrieval rank",
    )
    verified_min_similarity: float = Field(
        0.8,
        ge=0,
        le=1,
        description="A verified answer whose question is this close (cosine) to the asked one "
        "is ranked above every passage",
    )

    # --- reindex ---
    reindex_timeout_min: float = Field(
        120.0,
        ge=0,
        description="A reindex still running after this many minutes is stopped and the live "
        "index kept (0 = no limit)",
    )
    reindex_gate_max_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="A reindex is not published when the golden questions' recall@5 drops by "
        "more than this (or a verified answer is no longer found)",
    )
    reindex_gate_questions: str = Field(
        "",
        description="Question file (eval format) replayed by the reindex gate beside the "
        "verified answers (empty = verified answers only)",
    )

    # --- answering (LLM) ---
    llm_backend: Literal["local", "remote"] = Field(
        "local", description="local = in-process vLLM engine; remote = OpenAI-compatible server"
    )
    llm_model: str = Field("Qwen/Qwen2.5-7B-Instruct", description="HF model name or local path")
    llm_remote_url: str = Field(
        "",
        description="Base URL of an OpenAI-compatible server (vLLM, llama.cpp, Ollama, "
        "LM Studio, a hosted API), e.g. http://gpu1:8000/v1",
    )
    # docs/models.md: the settings for each kind of server.
    llm_remote_api: Literal["auto", "chat", "completions"] = Field(
        "auto",
        description="Endpoint of the remote server: chat = /v1/chat/completions (the server "
        "applies its chat template; any OpenAI-compatible server), completions = "
        "/v1/completions with the prompt rendered here (needs the model's tokenizer), auto = "
        "completions on a vLLM server whose model's tokenizer is here, else chat",
    )
    llm_api_key: SecretStr = Field(
        SecretStr(""), description="API key for the remote server (sent as a Bearer token)"
    )
    llm_dtype: str = Field(
        "auto",
        description="auto (float32 on CPUs without bf16 instructions), bfloat16, float16, float32",
    )
    llm_max_model_len: int = Field(
        8192,
        ge=256,
        description="Context window given to the engine (remote: the server's context, where "
        "the server does not report it; vLLM does)",
    )
    llm_gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="GPU memory share")
    llm_tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans")
    llm_kv_cache_bytes: int = Field(
        0, ge=0, description="KV cache size in bytes (0 = from gpu_memory_utilization)"
    )
    llm_enforce_eager: bool = Field(False, description="Disable CUDA graphs (faster start)")
    llm_max_tokens: int = Field(512, ge=1, description="Answer budget in tokens")
    llm_temperature: float = Field(0.2, ge=0, description="Sampling temperature")
    llm_top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling")
    # 1.05 as Qwen2.5-Instruct ships it: vLLM also penalizes the prompt's tokens, so a stronger
    # penalty steers answers away from the passages' own words; loops are stopped anyway.
    llm_repetition_penalty: float = Field(
        1.05,
        gt=0,
        le=2,
        description="Penalty on tokens already in the prompt or answer (1 = off; vLLM)",
    )
    llm_frequency_penalty: float = Field(
        0.0, ge=-2, le=2, description="Penalty growing with each repeat of a token (0 = off)"
    )
    llm_presence_penalty: float = Field(
        0.0, ge=-2, le=2, description="Penalty on any token already in the answer (0 = off)"
    )
    llm_stop_on_repetition: bool = Field(
        True,
        description="Stop an answer whose text loops (same lines or phrase repeated) and "
        "keep it up to the first repeat",
    )
    llm_timeout_s: float = Field(120.0, gt=0, description="Per-answer timeout, seconds")
    # Room for a pasted traceback or log with the question after it: query cleaning keeps what
    # names the problem for the search, and the prompt cuts passages to fit the rest.
    max_question_chars: int = Field(
        4000, ge=10, description="Longer questions are refused (4000: a pasted traceback fits)"
    )
    # Cosines depend on the model and the corpus: all-MiniLM-L6-v2 separates the fixture
    # questions at 0.28 and eval/questions.jsonl on the full Milvus docs at 0.44
    # (docs/evaluation.md); BGE v1.5 scores everything higher. Calibrate with `eval --calibrate`.
    relevance_threshold: float = Field(
        0.5,
        description="Best passage cosine below this = 'not in the docs' (MiniLM: 0.44 on the "
        "Milvus docs; BGE v1.5: 0.5, uncalibrated: run `eval --calibrate` on your questions)",
    )
    # A cheap lexical check the cosine cannot make: see rag_core/search/named_terms.py.
    refuse_unknown_terms: bool = Field(
        True,
        description="Refuse a question whose dotted config keys (queryNode.x.y) the docs never "
        "mention, naming them, instead of guessing",
    )
    # Off by default: SmolLM2-135M, the model measured here, says "no" to nearly every question
    # (docs/evaluation.md); a capable instruct model is what this is for.
    answerability_check: bool = Field(
        False,
        description="Before answering, ask the answer model whether the passages answer the "
        "question (a few tokens, greedy); 'no' gives the 'not in the docs' reply",
    )
    hf_token: SecretStr = Field(SecretStr(""), description="Hugging Face token for gated models")

    # --- Discord ---
    discord_token: SecretStr = Field(SecretStr(""), description="Bot token (never logged)")
    discord_dev_guild_id: int = Field(
        0,
        description="`python -m bot sync` publishes commands to this guild only (0 = global)",
    )
    discord_home_guild_ids: IntList = Field(
        default_factory=list,
        description="The servers the bot serves (JSON list or comma-separated ids; empty = "
        "DISCORD_DEV_GUILD_ID). In any other server it answers nothing and says it serves "
        "another community",
    )
    discord_leave_other_guilds: bool = Field(
        False, description="Leave any server that is not a home server, on start and on invite"
    )
    discord_admin_role_ids: IntList = Field(
        default_factory=list,
        description="Roles allowed to run admin commands besides Manage Server (JSON list)",
    )
    moderators_channel_id: int = Field(
        0, description="Channel id for review cards of flagged answers (0 = no cards)"
    )
    flag_emojis: StrList = Field(
        default_factory=lambda: ["👎", "🚩"], description="Reactions that flag an answer"
    )
    good_emojis: StrList = Field(
        default_factory=lambda: ["👍"], description="Reactions that mark an answer as good"
    )
    ask_cooldown_s: float = Field(
        10.0, ge=0, description="Seconds between two /ask of one user (0 = no cooldown)"
    )
    max_concurrent_answers: int = Field(4, ge=1, description="Answers generated at once")
    max_queued_answers: int = Field(
        100, ge=0, description="Questions waiting for a slot before /ask says 'busy'"
    )
    edit_interval_s: float = Field(
        1.0, ge=0.2, description="Seconds between two edits of a streaming message"
    )
    interaction_edit_limit_s: float = Field(
        14 * 60.0,
        gt=0,
        description="After this long, post to the channel instead (tokens expire at 15 min)",
    )
    # --- Conversations ---
    ask_threads: bool = Field(
        True, description="A public /ask answer in a server gets a thread for follow-ups"
    )
    discord_message_content: bool = Field(
        False,
        description="Request the privileged Message Content intent (enable it in the developer "
        "portal first): follow-ups in threads and replies to answers need it",
    )
    conversation_rewrite: Literal["llm", "rules", "off"] = Field(
        "llm",
        description="How a follow-up becomes a standalone question for retrieval: the answer "
        "model (rules when it fails), rules only, or off (searched as typed)",
    )
    conversation_history_tokens: int = Field(
        400, ge=0, description="Prompt tokens for earlier turns of a conversation (oldest dropped)"
    )
    conversation_max_turns: int = Field(
        10, ge=1, description="Answers per thread before the bot asks for a new question"
    )
    forum_channel_ids: IntList = Field(
        default_factory=list,
        description="Forum channels where each new post gets one answer, as its first reply, "
        "when the docs cover it (JSON list or comma-separated; needs DISCORD_MESSAGE_CONTENT)",
    )
    forum_uncovered: Literal["silent", "closest"] = Field(
        "silent",
        description="A forum post the docs do not cover: no reply, so people answer it "
        "(silent), or the 'not in the docs, closest pages' reply (closest)",
    )
    forum_relevance_threshold: MaybeFloat = Field(
        None,
        description="RELEVANCE_THRESHOLD for new forum posts (empty = the same): a higher bar "
        "leaves more posts to people, where an answer the docs do not back talks over them "
        "(MiniLM on the Milvus docs: 0.5 keeps 87% of covered posts, leaves 60% of uncovered)",
    )
    forum_solved_tag: str = Field(
        "Solved",
        description="Forum tag applied when the poster reacts to the bot's answer with a "
        "solved emoji (matched by name, case ignored; empty = off; needs Manage Threads)",
    )
    solved_emojis: StrList = Field(
        default_factory=lambda: ["✅"],
        description="Reactions by which a forum post's author marks the bot's answer as the "
        "solution",
    )
    forum_max_queued: int = Field(
        200,
        ge=1,
        description="New forum posts waiting for an answer slot or the poster's cooldown, kept "
        "in the feedback database across restarts; past it a post is left to people at once",
    )
    forum_max_wait_s: float = Field(
        600.0,
        gt=0,
        description="A forum post that waited this long without an answer slot is left to "
        "people (counted in /gaps)",
    )
    forum_grace_s: float = Field(
        0,
        ge=0,
        description="Seconds a new forum post waits before the bot answers it, so helpers "
        "have the first word (a post a person replied to meanwhile is left to them)",
    )
    helper_role_id: int = Field(
        0,
        ge=0,
        description="The helpers' role: 'Ask a helper' under answers pings it (the only ping "
        "the bot makes); 0 = no button",
    )
    forum_remind_after_s: float = Field(
        0,
        ge=0,
        description="A watched forum post the bot left to people (not in the docs, or no "
        "answer slot) that still has no reply after this many seconds pings HELPER_ROLE_ID "
        "in it, once (0 = off)",
    )
    handoff_forum_id: int = Field(
        0,
        ge=0,
        description="A help forum for hand-offs: 'Ask a helper' opens a post there with the "
        "question, the bot's answer and its sources, pinging HELPER_ROLE_ID in it (0 = the "
        "ping is a reply beside the answer)",
    )
    handoff_window_s: float = Field(
        3600, gt=0, description="The window HANDOFF_PER_USER and HANDOFF_PER_THREAD count in"
    )
    handoff_per_user: int = Field(
        3, ge=1, description="'Ask a helper' presses one member may make per HANDOFF_WINDOW_S"
    )
    handoff_per_thread: int = Field(
        1,
        ge=1,
        description="Helper pings per thread, forum post or channel per HANDOFF_WINDOW_S",
    )
    step_back_for: Literal["anyone", "helpers", "off"] = Field(
        "anyone",
        description="Whose replies make the bot step back in forum posts and its threads: "
        "anyone but the asker, members with HELPER_ROLE_ID, or nobody (off)",
    )
    step_back_s: float = Field(
        900,
        ge=0,
        description="After such a reply, seconds the bot leaves messages not addressed to it "
        "(no mention, no reply to it) in that thread to people",
    )
    learn_from_helpers: bool = Field(
        True,
        description="Propose people's answers to MODERATORS_CHANNEL_ID as verified answers: "
        "the reply a forum poster marks with a solved emoji (or the last helper reply when "
        "the post gets FORUM_SOLVED_TAG), and messages a helper reacts to with a save emoji",
    )
    save_emojis: StrList = Field(
        default_factory=lambda: ["🧩"],
        description="Reactions by which a helper (HELPER_ROLE_ID or an admin) proposes a "
        "person's message as a verified answer",
    )
    verified_shared: bool = Field(
        False,
        description="Verified answers answer in every home server (default: only in the "
        "server where moderators gave them)",
    )
    reindex_allowed_hosts: StrList = Field(
        default_factory=list,
        description="Hosts whose URLs server admins may index with /reindex source: besides the "
        "hosts of DOCS_SOURCES (JSON list or comma-separated); other URLs need the bot's owner",
    )
    reindex_interval_min: float = Field(
        0, ge=0, description="Reindex docs_sources every N minutes (0 = only on /reindex)"
    )
    stale_window_days: float = Field(
        30,
        ge=0,
        description="After a reindex, answers of the last N days whose cited passages changed "
        "get a footer saying so (0 = off)",
    )
    # Cosines depend on the model: with all-MiniLM-L6-v2 paraphrases of one question score
    # 0.74-0.81 and related but different questions 0.45-0.56 (0.65 separates them); BGE v1.5
    # scores everything higher, so its default is higher (uncalibrated).
    gaps_similarity: float = Field(
        0.8,
        gt=0,
        le=1,
        description="/gaps: a question joins the group whose centre is at least this close "
        "(cosine; MiniLM: 0.65, BGE v1.5: 0.8, uncalibrated)",
    )
    feedback_db: str = Field("", description="Feedback SQLite file (empty = data_dir/feedback.db)")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0 = off)"
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the metrics endpoint listens on (0.0.0.0 in containers)",
    )

    @field_validator(
        "docs_sources",
        "discord_admin_role_ids",
        "discord_home_guild_ids",
        "reindex_allowed_hosts",
        "flag_emojis",
        "good_emojis",
        "forum_channel_ids",
        "solved_emojis",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("not a valid JSON list") from None
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("data_dir")
    @classmethod
    def _data_dir_is_a_folder(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError("this is a file; DATA_DIR must be a folder (it is created if missing)")
        return value

    @cached_property
    def milvus_target(self) -> str:
        """What MilvusClient connects to: a server URI, else the Lite file in data_dir."""
        return self.milvus_uri or str(self.data_dir / "kb.db")

    @property
    def home_guild_ids(self) -> frozenset[int]:
        """The servers the bot serves: DISCORD_HOME_GUILD_IDS, else the dev guild, else none."""
        if self.discord_home_guild_ids:
            return frozenset(self.discord_home_guild_ids)
        return frozenset({self.discord_dev_guild_id} - {0})

    @property
    def is_milvus_lite(self) -> bool:
        return not self.milvus_uri.startswith(("http://", "https://", "tcp://", "unix:"))


def load_settings(**overrides: object) -> Settings:
    """Read settings once (environment, then `.env`); keyword overrides win (tests, CLI flags).

    Raises ConfigError with one line per bad setting (see `describe_invalid_settings`).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except (ValidationError, SettingsError) as exc:
        raise ConfigError("\n".join(describe_invalid_settings(exc)), detail=str(exc)) from None


_SECRET_FIELDS = frozenset(
    name for name, f in Settings.model_fields.items() if f.annotation is SecretStr
)


def describe_invalid_settings(exc: ValidationError | SettingsError) -> list[str]:
    """One line per bad setting: the variable, the value (never a secret's) and what is allowed."""
    if isinstance(exc, SettingsError):
        match = re.search(r'field "(\w+)"', str(exc))
        name = match.group(1).upper() if match else "a setting"
        return [f"{name}: cannot be read ({exc.__cause__ or exc})"]
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "settings"
        value = "" if field in _SECRET_FIELDS else f"={_shown(error.get('input'))}"
        allowed = error["msg"].removeprefix("Value error, ")
        allowed = allowed[:1].lower() + allowed[1:]
        lines.append(f"{field.upper()}{value}: {allowed}")
    return lines


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:80] + ("…" if len(text) > 80 else ""))
