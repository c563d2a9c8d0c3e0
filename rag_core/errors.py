"""Errors meant for users carry a `user_message`; the CLI and the bot show only that."""

from __future__ import annotations


class RagError(Exception):
    """Base class: `user_message` is safe to show to an end user (no secrets, no paths)."""

    user_message = "Something went wrong while answering. Please try again later."

    def __init__(self, user_message: str | None = None, *, detail: str | None = None) -> None:
        if user_message is not None:
            self.user_message = user_message
        # `detail` is for logs only (may name files, hosts); it never reaches users.
        self.detail = detail or self.user_message
        super().__init__(self.detail)


class ConfigError(RagError):
    """A setting is missing or wrong."""


class SourceError(RagError):
    """A source (folder, URL, sitemap) cannot be read at all."""


class StoreError(RagError):
    """The vector store failed or is unreachable."""

    user_message = "The knowledge base is unavailable right now. Please try again later."


class StoreLockedError(StoreError):
    """The Milvus Lite database is held by another process."""

    user_message = (
        "The knowledge base is in use by another process, e.g. the running bot: "
        "use /reindex or stop it."
    )


class StoreFullError(StoreError):
    """The disk under the knowledge base is full (ENOSPC)."""

    user_message = (
        "No space left on device for the knowledge base: free disk space where it is stored "
        "(DATA_DIR, or the Milvus server's disk), then run the reindex again. The live index "
        "is unchanged."
    )


class IndexMissingError(StoreError):
    """Nothing has been indexed yet."""

    user_message = "The knowledge base is empty: an admin needs to run /reindex (or `index`) first."


class EmbeddingError(RagError):
    """The embedding model cannot be loaded or run."""

    user_message = "The embedding model is unavailable right now. Please try again later."


class GenerationError(RagError):
    """The LLM failed while answering."""

    user_message = "The answer engine failed while answering. Please ask again."


class GenerationTimeout(GenerationError):
    user_message = "The answer took too long and was stopped. Please try a shorter question."


class ContextLengthError(GenerationError):
    """The prompt does not fit the model's context (counted here, or refused by the server)."""

    user_message = (
        "The question and its context are too long for the model. Please ask a shorter question."
    )


class EngineDeadError(GenerationError):
    user_message = (
        "The answer engine stopped unexpectedly; it is being restarted. Please ask again."
    )


class ReindexBusyError(RagError):
    user_message = "A reindex is already running."


class ReindexTimeoutError(RagError):
    """The run passed REINDEX_TIMEOUT_MIN; its unfinished version was dropped."""


class ModelUnavailableError(ConfigError):
    """A model cannot be loaded: not a local folder, not cached, and the hub cannot be reached."""


def error_lines(exc: RagError) -> list[str]:
    """The user message as `error: ...` lines (a ConfigError lists one bad setting a line)."""
    return [f"error: {line}" for line in exc.user_message.splitlines() if line.strip()]
