"""Random-weight sentence-transformers encoders of real models' shapes, built fully offline.

No BGE or bge-m3 weights can be downloaded here. What the embedder does with a model family
(its query instruction, its input window, its vector size) and what a forward pass costs do not
depend on the weights, so tests and benchmarks build encoders with the right architecture and
tokenizer family and random weights:

- BERT (the BGE English v1.5 family): any WordPiece tokenizer folder (MiniLM's);
- XLM-RoBERTa (BAAI/bge-m3): a SentencePiece-style Unigram tokenizer with XLM-R's special
  tokens and ids (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3), trained here on the docs fixture.

    python tests/random_encoders.py OUT_DIR --arch xlm-roberta --hidden 1024 --layers 24 \
        --heads 16 --intermediate 4096 --max-seq-length 8192   # bge-m3's shape
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal

from tests.tiny_llama import _corpus

# XLM-R's special tokens, in its id order; <mask> comes last in its vocabulary.
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def build_xlmr_tokenizer(vocab: int = 2000, max_length: int = 8192) -> Any:
    """An XLM-R-style tokenizer (Unigram, `▁` word marks, `<s> … </s>`), trained on the fixture."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab - 1, special_tokens=XLMR_SPECIALS, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(_corpus(vocab), trainer=trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=max_length)


def build_random_encoder(
    out: str | Path,
    *,
    arch: Literal["bert", "xlm-roberta"],
    tokenizer: Any,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    max_seq_length: int,
    vocab: int = 0,
    init_std: float = 0.2,
    seed: int = 0,
) -> Path:
    """Save a sentence-transformers folder (transformer, CLS pooling, normalize) to `out`.

    `vocab` pads the embedding table to a real model's size (its cost, not its use). Weights
    are drawn 10x wider than a fresh model's (0.02): attention then mixes tokens enough that
    every part of a text moves its CLS vector, so tests can tell two inputs apart.
    """
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    out = Path(out)
    torch.manual_seed(seed)
    sizes = dict(
        vocab_size=max(vocab, len(tokenizer)),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        initializer_range=init_std,
    )
    model: Any
    if arch == "xlm-roberta":
        # XLM-R positions start after the padding id: 8194 positions read 8192 tokens.
        config = XLMRobertaConfig(
            **sizes, max_position_embeddings=max_seq_length + 2, pad_token_id=1
        )
        model = XLMRobertaModel(config, add_pooling_layer=False)
    else:
        model = BertModel(BertConfig(**sizes, max_position_embeddings=max_seq_length))
    raw = out / "raw"
    model.save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    word = models.Transformer(str(raw), max_seq_length=max_seq_length)
    pool = models.Pooling(hidden, pooling_mode="cls")
    SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu").save(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--arch", choices=["bert", "xlm-roberta"], default="xlm-roberta")
    ap.add_argument("--tokenizer", help="bert: a WordPiece tokenizer folder")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=64)
    ap.add_argument("--max-seq-length", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=0, help="pad the embedding table to this size")
    a = ap.parse_args(argv)
    if a.arch == "bert":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    else:
        tokenizer = build_xlmr_tokenizer(max_length=a.max_seq_length)
    out = build_random_encoder(
        a.out,
        arch=a.arch,
        tokenizer=tokenizer,
        hidden=a.hidden,
        layers=a.layers,
        heads=a.heads,
        intermediate=a.intermediate,
        max_seq_length=a.max_seq_length,
        vocab=a.vocab,
    )
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
