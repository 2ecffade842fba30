"""`llmgate embeddings build`: the embedding model as int8 ONNX with integer matrix products, made once
from the weights already installed.

Why: with queries of a dozen tokens, the model's time goes into reading its weights, not into
arithmetic. Weights stored as int8 but widened to float32 before each product (the packaged
model.onnx) read 42 MB per query; products on int8 (`MatMulInteger`, weights quantised per output
channel, activations per query) read a quarter of that, and a query takes about 60% of the time.
Per-channel scales keep sentences' vectors within cosine ~0.99 of sentence-transformers' (a bare
"ok", three tokens, ~0.96), and the cache's hit and false-hit rates on bench/cache_eval_pairs.jsonl
are unchanged.

The build runs where the `embeddings` extra is installed (torch, transformers, onnx, onnxruntime),
from the local model folder with the hub switched off; it takes seconds and writes one file
(`built_onnx_file()`, inside the virtual environment) that the onnx backend then prefers. It
refuses to write a model whose vectors stray from torch's (cosine below `MIN_COSINE`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

from gateway.hookspecs import hookimpl

from .embedding_files import built_onnx_file

log = logging.getLogger("llmgate.embeddings")

MIN_COSINE = 0.95  # a broken export lands far below; sentences land near 0.99, a bare "ok" near 0.96
CHECK_SENTENCES = (
    "How do I reset my password?",
    "Why is the BGP session to 10.0.12.1 down after the upgrade?",
    "Please disable two-factor authentication on my account.",
    "What's the refund policy for annual subscriptions bought in the EU region?",
    "ok",
)


@contextlib.contextmanager
def _quiet():
    """The exporter's warnings and the quantiser's root-logger advice are for their authors, not our users."""
    root, level = logging.getLogger(), logging.getLogger().level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)


def build(model_path: str, output: Path) -> dict:
    """Export the model folder's transformer to ONNX, quantise it, check it against torch, then write
    it to `output` (atomically). Returns what was checked."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import numpy as np  # the embeddings extra: only where a build runs
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    from .embeddings import LoadedModel, OnnxModel  # the embeddings extra (numpy): only when a build runs

    class LastHiddenState(torch.nn.Module):
        """The transformer alone, with named inputs: pooling stays in OnnxModel.encode."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    transformer = AutoModel.from_pretrained(model_path, local_files_only=True).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones(1, 8, dtype=torch.int64) for _ in names)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as work:
        fp32, int8 = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
        with torch.no_grad(), _quiet():
            torch.onnx.export(
                LastHiddenState(transformer),
                example,
                str(fp32),
                input_names=names,
                output_names=["last_hidden_state"],
                opset_version=17,
                dynamo=False,
                dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
            )
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        reference = LoadedModel(model_path, threads=None).encode(list(CHECK_SENTENCES))
        vectors = OnnxModel(model_path, threads=1, onnx_file=str(int8)).encode(list(CHECK_SENTENCES))
        cosines = (reference * vectors).sum(axis=1)
        if float(cosines.min()) < MIN_COSINE:
            raise RuntimeError(
                f"the quantised model strays from torch's vectors (cosine {cosines.min():.4f} "
                f"< {MIN_COSINE}); not written"
            )
        os.replace(int8, output)
    return {
        "output": str(output),
        "bytes": output.stat().st_size,
        "min_cosine_vs_torch": round(float(cosines.min()), 4),
        "mean_cosine_vs_torch": round(float(np.mean(cosines)), 4),
    }


def cmd_build(args) -> int:
    from .embeddings import EmbeddingsUnavailable, default_model_path  # numpy: not for `llmgate --help`

    output = Path(args.output) if args.output else built_onnx_file()
    if output.is_file() and not args.force:
        print(f"{output} exists (--force to build it again)")
        return 0
    try:
        model_path = args.model or default_model_path()
        result = build(model_path, output)
    except (EmbeddingsUnavailable, ImportError) as exc:
        print(f"cannot build the embedding model: {exc} (pip install 'llmgate[embeddings]')", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(
        f"wrote {result['output']} ({result['bytes'] / 2**20:.1f} MiB); cosine to torch's vectors: "
        f"min {result['min_cosine_vs_torch']}, mean {result['mean_cosine_vs_torch']}"
    )
    return 0


@hookimpl
def register_commands(commands):
    embeddings = commands.add_parser("embeddings", help="the semantic cache's embedding model")
    actions = embeddings.add_subparsers(dest="embeddings_command", required=True)
    build_parser = actions.add_parser(
        "build",
        help="make the int8 ONNX model (integer matrix products) from the installed weights",
        description="Export the installed all-MiniLM-L6-v2 to ONNX, quantise its weights per channel, check its "
        "vectors against sentence-transformers', and write it where the onnx backend looks first.",
    )
    build_parser.add_argument("--model", help="the sentence-transformers model folder (default: the packaged one)")
    build_parser.add_argument("--output", help=f"where to write it (default: {built_onnx_file()})")
    build_parser.add_argument("--force", action="store_true", help="build again even if the file exists")
    build_parser.set_defaults(handler=cmd_build)
