"""Hugging Face model folders (``config.json`` + weights) through the optional ``transformers`` extra.

Offline only (``local_files_only=True``) and without the folder's own code (``trust_remote_code=False``);
see docs/checkpoints.md. ``transformers`` is imported only when a folder is actually loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .errors import one_line as _one_line

# what save_pretrained() writes (one of them, or an index of shards), in transformers' order of preference
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_hf_folder(path: Path) -> Any:
    """The folder's model class (``config.architectures[0]``, else ``AutoModel``), offline, no remote code."""
    try:
        import transformers
    except ImportError:
        raise CheckpointError(f"{path} is a Hugging Face folder; install the extra: pip install 'maskprobe[hf]'") from None
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar would interleave with ours on stderr
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        archs = getattr(config, "architectures", None) or []
        cls = getattr(transformers, archs[0], None) if archs else None
        cls = cls or transformers.AutoModel
        return cls.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: transformers could not load it ({_one_line(exc)})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")


def hf_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The tokenizer saved in a Hugging Face model folder (offline), for tasks that need one.

    A task gets the folder from its own ``--task-arg`` or, inside ``loss``/``evaluate``, from
    ``model.module.name_or_path``.

    Raises:
        CheckpointError: transformers missing, or no tokenizer in the folder.
    """
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise CheckpointError("a Hugging Face tokenizer needs the extra: pip install 'maskprobe[hf]'") from None
    # recent transformers build an empty tokenizer from config.json alone: ask for the files themselves
    if not Path(path).is_dir() or not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(f"{path}: no tokenizer could be loaded (none of {', '.join(TOKENIZER_FILES)} in the folder)")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: no tokenizer could be loaded ({_one_line(exc)})") from None
