"""Where a model comes from: a local folder, the Hugging Face cache, or a download from the hub.

`check_model_available` runs before a model is loaded. When the model is neither a folder nor
cached and the hub cannot be reached, it fails in seconds with a message that names the model,
where it was looked for and the two ways out, instead of the libraries' long retries and a
generic error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import ModelUnavailableError

log = logging.getLogger(__name__)

# A reachable hub answers in well under this; an unreachable one should not hold start-up.
HUB_PROBE_TIMEOUT_S = 5.0

# Ends the folder name of a model `python -m rag_core models adapt` fine-tuned on the docs: its
# cosines are its own, not its base model's (calibrate the gate for it).
ADAPTED_SUFFIX = "-adapted"


def looks_like_path(name: str) -> bool:
    """A local folder rather than a hub name (`org/model`)."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or Path(name).exists()


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_offline() -> bool:
    return any(
        os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def is_cached(name: str) -> bool:
    """The model's files are in the Hugging Face cache (downloaded before)."""
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(name, filename), str)
        for filename in ("config.json", "modules.json")
    )


def check_model_available(name: str, *, setting: str, what: str) -> None:
    """Raise ModelUnavailableError when `name` can be neither found locally nor downloaded.

    `setting` is the variable that names the model (EMBEDDING_MODEL); `what` says what it is for.
    """
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelUnavailableError(
                f"The {what} folder {setting}={name} does not exist: point {setting} at a "
                "folder holding the model (config.json), or at a Hugging Face model name."
            )
        return
    if is_cached(name):
        return
    reason: str | None = "the hub is switched off (HF_HUB_OFFLINE)"
    if not hub_offline():
        reason = _probe_hub()
        if reason is None:
            return  # reachable: the library downloads it (once; cached after that)
    raise ModelUnavailableError(
        f"The {what} {name!r} is not on this machine and cannot be downloaded from "
        f"{hub_endpoint()}: {reason}. Either give this machine access to {hub_endpoint()} "
        f"once (the model is cached after the first download), or set {setting} to a local "
        "folder holding the model."
    )


def _probe_hub() -> str | None:
    """None when the hub answers; otherwise why it cannot be reached (one short line)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(hub_endpoint() + "/api/models?limit=1", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None  # it answered: the hub is up, the download says more if it fails
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        log.debug("hub probe failed", exc_info=True)
        return f"no connection ({reason})"
