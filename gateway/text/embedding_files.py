"""Where the embedding model built by `llmgate embeddings build` lives.

Its own module, light (no numpy): the loader (embeddings.py) looks for the file here and the
builder (embeddings_build.py) writes it and names it in its --help, so neither imports the other
to find it.
"""

from __future__ import annotations

import sys
from pathlib import Path


def built_onnx_file() -> Path:
    """Where `llmgate embeddings build` writes the model: beside the installed packages, so each
    environment has its own and no run-time path depends on the working directory."""
    return Path(sys.prefix) / "share" / "llmgate" / "all-minilm-l6-v2.int8.onnx"
