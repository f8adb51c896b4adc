"""Text datasets, tokenisation into context windows, and live activation streams.

- `load_text_dataset(spec)`: local files, `save_to_disk` dirs, `builtin:python-docs`; hub datasets
  and `s3://` shards streamed; `iter_documents` reads any of them in order, `document_encoder`
  turns text (or a pre-tokenized column) into ids.
- `ActivationStream`: shuffled (or ordered) batches of aligned activations for training;
  `iter_windows()` gives whole windows for sequence dictionaries and the cache writer.
- `extract_python_docs(out)`: writes the builtin English dataset (the `saeops data python-docs` command).
"""

from __future__ import annotations

from saeops.runtime.data.loading import DatasetError, dataset_identity, iter_documents, load_text_dataset
from saeops.runtime.data.python_docs import ensure_python_docs, extract_python_docs, python_docs_path
from saeops.runtime.data.stream import ActivationStream, sample_activations
from saeops.runtime.data.tokens import document_encoder
from saeops.runtime.data.windows import Window, WindowBatch, pack_windows

__all__ = [
    "ActivationStream",
    "DatasetError",
    "Window",
    "WindowBatch",
    "dataset_identity",
    "document_encoder",
    "ensure_python_docs",
    "extract_python_docs",
    "iter_documents",
    "load_text_dataset",
    "pack_windows",
    "python_docs_path",
    "sample_activations",
]
