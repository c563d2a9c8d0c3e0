"""Adapting the embedding model to the community's docs, from the docs alone.

Each section's label (`Page title > Section > Sub`) is a short question-like phrase that names
what the section's text is about; fine-tuning the encoder so that a label finds its own text
among the other sections' texts (in-batch negatives, sentence-transformers'
MultipleNegativesRankingLoss) teaches it the docs' vocabulary: that "mmap" is the memory-mapping
page, which config keys belong to which component. No question is needed, so nothing is fitted
to an evaluation set; measured on held-out questions in docs/evaluation.md.

The adapted model is a folder that EMBEDDING_MODEL names; it keeps the base model's family
(query instruction, window) because its folder is named after the base model.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EmbeddingError
from ..model_source import ADAPTED_SUFFIX, check_model_available
from ..search.embedding import model_family, resolve_device

# Chosen on the community tune half (docs/evaluation.md): one pass over the sections, batches of
# 32 (31 negatives each), the first 128 tokens of each text (half the CPU time of 256).
EPOCHS = 1
BATCH_SIZE = 32
LEARNING_RATE = 3e-5
TRAIN_TOKENS = 128
MIN_SECTIONS = 8  # fewer: too few negatives to learn anything


@dataclass(frozen=True)
class AdaptReport:
    folder: Path
    base_model: str
    sections: int
    steps: int
    first_loss: float
    last_loss: float
    seconds: float


def section_pairs(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Passage texts grouped by their section label (page title > heading path)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        label = " > ".join(p for p in (row.get("title", ""), row.get("heading_path", "")) if p)
        text = row.get("text", "")
        if label and text.strip():
            groups[label].append(text)
    return dict(groups)


def adapted_folder(data_dir: Path, base_model: str) -> Path:
    """DATA_DIR/models/<base name>-adapted: the name keeps the base model's family."""
    name = base_model.rstrip("/").rsplit("/", 1)[-1]
    return data_dir / "models" / f"{name}{ADAPTED_SUFFIX}"


def adapt_embedder(
    base_model: str,
    sections: Mapping[str, list[str]],
    dest: Path,
    *,
    device: str = "auto",
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = LEARNING_RATE,
    seed: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
) -> AdaptReport:
    """Fine-tune `base_model` on `sections` (label -> texts) and save it to `dest`.

    One (label, text) pair per section per epoch, the text drawn at random among the section's
    passages, so no batch holds the same label twice (it would be its own negative).
    Blocking: minutes on CPU for a few thousand sections, seconds on a GPU.
    """
    if len(sections) < MIN_SECTIONS:
        raise ConfigError(
            f"only {len(sections)} sections in the index: adapting the embedding model needs "
            f"at least {MIN_SECTIONS} (index the docs first)"
        )
    check_model_available(base_model, setting="EMBEDDING_MODEL", what="embedding model")
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import batch_to_device

    started = time.perf_counter()
    family = model_family(base_model)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    try:
        model = SentenceTransformer(base_model, device=resolve_device(device))
    except Exception as exc:
        raise EmbeddingError(detail=f"cannot load embedding model {base_model!r}: {exc}") from exc
    window = model.max_seq_length
    model.max_seq_length = min(window or TRAIN_TOKENS, TRAIN_TOKENS)
    loss_fn = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    batch_size = min(batch_size, len(sections))
    per_epoch = len(sections) // batch_size
    total = per_epoch * epochs
    warmup = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    labels = sorted(sections)
    losses: list[float] = []
    model.train()
    for _ in range(epochs):
        pairs = [(label, rng.choice(sections[label])) for label in labels]
        rng.shuffle(pairs)
        for start in range(0, per_epoch * batch_size, batch_size):
            batch = pairs[start : start + batch_size]
            features = [
                model.preprocess([family.query_prefix + label for label, _ in batch]),
                model.preprocess([family.passage_prefix + text for _, text in batch]),
            ]
            features = [batch_to_device(f, model.device) for f in features]
            loss = loss_fn(features, torch.zeros(len(batch)))
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(float(loss.item()))
            if on_step is not None:
                on_step(len(losses), total, losses[-1])
    model.eval()
    model.max_seq_length = window  # the index embeds whole passages, as the base model did
    dest.mkdir(parents=True, exist_ok=True)
    model.save(str(dest))
    return AdaptReport(
        folder=dest,
        base_model=base_model,
        sections=len(sections),
        steps=len(losses),
        first_loss=losses[0],
        last_loss=losses[-1],
        seconds=time.perf_counter() - started,
    )
