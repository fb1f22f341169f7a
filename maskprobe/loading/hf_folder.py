"""Hugging Face model folders (``config.json`` + weights) through the optional ``transformers`` extra.

Offline only (``local_files_only=True``) and without the folder's own code (``trust_remote_code=False``);
see docs/checkpoints.md. ``transformers`` is imported only when a folder is actually opened, and its logging
(config warnings, the "Loading weights" bar) is silenced while it works: maskprobe's stderr is its own.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..errors import one_line as _one_line

# what save_pretrained() writes (one of them, or an index of shards), in transformers' order of preference
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

__all__ = ["HF_WEIGHT_FILES", "hf_builder", "hf_model_class", "hf_tokenizer", "load_hf_folder", "quiet_transformers"]


def _transformers(path: str | os.PathLike[str]) -> Any:
    try:
        import transformers
    except ImportError:
        raise CheckpointError(f"{path} is a Hugging Face folder; install the extra: pip install 'maskprobe[hf]'") from None
    return transformers


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' log level at ``error``, its progress bars off and its Python warnings ignored for the
    duration; all three restored afterwards."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def hf_model_class(path: str | os.PathLike[str]) -> tuple[type, Any]:
    """``(class, config)`` of a folder: ``config.architectures[0]`` if transformers has it, else ``AutoModel``.

    The one class lookup, for loading (:func:`load_hf_folder`) and for building on the meta device
    (:func:`hf_builder`) alike.

    Raises:
        CheckpointError: transformers missing, or a config.json it cannot read.
    """
    transformers = _transformers(path)
    try:
        with quiet_transformers():
            config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: transformers could not read its config.json ({_one_line(exc)})") from None
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    return cls or transformers.AutoModel, config


def _auto_dtype() -> dict[str, str]:
    """Keep the stored dtype (transformers 4 upcasts to float32 by default; 4.56 renamed the argument)."""
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": "auto"}


def load_hf_folder(path: str | os.PathLike[str]) -> tuple[Any, list[str], list[str]]:
    """The folder's model with its weights, in the dtype they are stored in, offline, no remote code.

    Returns:
        ``(model, missing, misshaped)``: the weights the class needs but the folder lacks (transformers initialised
        them at random) and those of another shape (``"name (3,) vs model (16,)"``); checkpoints.py refuses both.
        Tensors the class does not use are ignored, as transformers ignores them.

    Raises:
        CheckpointError: transformers missing, or the folder does not load.
    """
    cls, config = hf_model_class(path)
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(
                str(path), config=config, local_files_only=True, trust_remote_code=False, output_loading_info=True,
                ignore_mismatched_sizes=True, **_auto_dtype(),
            )  # fmt: skip
    except Exception as exc:
        raise CheckpointError(f"{path}: transformers could not load it ({_one_line(exc)})") from None
    missing = sorted(info.get("missing_keys") or ())
    misshaped = sorted(f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in info.get("mismatched_keys") or ())
    return model, missing, misshaped


def hf_builder(path: str | os.PathLike[str]) -> Callable[[], Any]:
    """A callable building the folder's architecture with fresh weights from its ``config.json`` (nothing read
    from the weight files): what ``load_checkpoint(meta=True)`` builds on the meta device.

    Raises:
        CheckpointError: transformers missing, or a config.json it cannot read (now, not when called).
    """
    cls, config = hf_model_class(path)

    def build() -> Any:
        with quiet_transformers():
            return cls._from_config(config) if hasattr(cls, "_from_config") else cls.from_config(config)

    return build


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
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: no tokenizer could be loaded ({_one_line(exc)})") from None
