"""Build a tiny random-weight Llama and a locally trained BPE tokenizer, fully offline.

No small instruct LLM can be installed offline, so tests (and benchmarks) build one: the text it
generates is noise, but vLLM runs it exactly like a real model (tokenizer, chat template, EOS).

    python tests/tiny_llama.py OUT_DIR                     # the test model (~1 MB, a few seconds)
    python tests/tiny_llama.py OUT_DIR --hidden 896 --layers 24 --heads 14 --kv-heads 2 \
        --head-dim 64 --intermediate 4864 --vocab 151936   # Qwen2.5-0.5B-like, for benchmarks

vLLM's CPU attention needs head_dim in {32, 64, 80, 96, 112, 128, ...}: head_dim 16 kills the
engine on its first request.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
# The project's own docs fixture: deterministic, in the repo, enough text for a 2k BPE vocab.
FIXTURE_DOCS = Path(__file__).parent / "fixtures" / "milvus-docs"
# Extra training text for large vocabularies, from source files every install has.
EXTRA_TEXT_BYTES = 40_000_000


def _corpus(vocab: int) -> Iterator[str]:
    for path in sorted(FIXTURE_DOCS.rglob("*.md")):
        yield path.read_text(encoding="utf-8", errors="ignore")
    if vocab <= 4000:
        return
    import transformers

    total = 0
    for path in sorted(Path(transformers.__file__).parent.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        total += len(text)
        yield text
        if total > EXTRA_TEXT_BYTES:
            return


def build_tiny_llama(
    out: str | Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int | None = None,
    head_dim: int | None = 32,
    intermediate: int | None = None,
    vocab: int = 2000,
    max_pos: int = 2048,
    dtype: str = "bfloat16",
    seed: int = 0,
    never_eos: bool = True,
) -> Path:
    """Save a random Llama + tokenizer (chat template, bos/eos/pad set) to `out`; return it.

    The tokenizer is trained up to `vocab`; if the text runs out first, plain filler tokens pad
    it, so the embedding and LM-head sizes (and their cost) match the requested vocabulary.
    With `never_eos` every generation runs to max_tokens, so tests that need a long stream
    (cancel, timeout, engine death) are deterministic instead of ending early on a random EOS.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # Byte-level BPE: any text encodes, so prompts never hit <unk>.
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(vocab), trainer=trainer)
    missing = vocab - tok.get_vocab_size()
    if missing > 0:
        tok.add_tokens([f"<x{i}>" for i in range(missing)])

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIALS[4:],
        model_max_length=max_pos,
        padding_side="left",
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)

    torch_dtype = getattr(torch, dtype)
    cfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        head_dim=head_dim or hidden // heads,
        max_position_embeddings=max_pos,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        dtype=torch_dtype,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch_dtype)
    if never_eos:
        # RMSNorm keeps signs, so a residual dimension that is large and positive for every token
        # stays positive in the final hidden state; a very negative LM-head weight on it pins the
        # EOS logit around -40 (random weights of std 0.02 leave every other token near 0).
        with torch.no_grad():
            model.model.embed_tokens.weight[:, 0] = 1.0
            model.lm_head.weight[hf_tok.eos_token_id, 0] = -5.0
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, getattr(hf_tok, name))
    model.save_pretrained(out, safe_serialization=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    ap.add_argument("--head-dim", type=int, default=32, help="32, 64, 80, ... (vLLM CPU)")
    ap.add_argument("--intermediate", type=int, default=None, help="MLP size; default 4*hidden")
    ap.add_argument("--vocab", type=int, default=2000, help="vocabulary size (padded if needed)")
    ap.add_argument("--max-pos", type=int, default=2048)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--allow-eos", action="store_true", help="let the model stop on EOS")
    a = ap.parse_args(argv)

    out = build_tiny_llama(
        a.out,
        hidden=a.hidden,
        layers=a.layers,
        heads=a.heads,
        kv_heads=a.kv_heads,
        head_dim=a.head_dim,
        intermediate=a.intermediate,
        vocab=a.vocab,
        max_pos=a.max_pos,
        dtype=a.dtype,
        never_eos=not a.allow_eos,
    )
    # Smoke test with plain transformers: the saved folder loads and generates.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hello there"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    gen = model.generate(ids, max_new_tokens=8, do_sample=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved {out}: vocab={len(tok)} params={n_params:,}")
    print("prompt:", repr(prompt))
    print("generated:", repr(tok.decode(gen[0, ids.shape[1] :])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
