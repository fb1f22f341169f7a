"""What builds the module of a weights-only checkpoint: a builder, ``--model package.module:factory`` with
``--model-arg key=value``, or a task's ``build_model()`` (DESIGN §4). The one place that says a file "holds only
weights"."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BadInputError, CheckpointError, PluginError
from ..errors import one_line as _one_line

__all__ = ["architecture_builder", "load_factory", "parse_model_args"]


def parse_model_args(pairs: Sequence[str]) -> dict[str, str]:
    """``["hidden=256", ...]`` (``--model-arg``) -> ``{"hidden": "256"}``; a dash in a key becomes ``_``.

    Raises:
        BadInputError: an item that is not ``key=value``.
    """
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k.strip():
            raise BadInputError(f"--model-arg must be key=value, got {p!r}")
        out[k.strip().replace("-", "_")] = v
    return out


def load_factory(ref: str, kwargs: Mapping[str, Any] | None = None) -> Callable[[], Any]:
    """``package.module:factory`` (or ``file.py:factory``) -> a zero-argument callable building the model."""
    from ..tasks.plugins import load_object

    try:
        obj = load_object(ref)
    except Exception as exc:
        raise CheckpointError(f"--model {ref!r}: {exc}") from None
    if not callable(obj):
        raise CheckpointError(f"--model {ref!r} is not callable")
    return lambda: obj(**dict(kwargs or {}))


def _checked(make: Callable[[], Any], what: str) -> Callable[[], Any]:
    """``make`` whose failure or non-module result is one CheckpointError naming ``what``."""

    def build() -> Any:
        from torch import nn

        try:
            model = make()
        except (CheckpointError, PluginError):
            raise
        except Exception as exc:
            raise CheckpointError(f"building the model with {what} failed: {_one_line(exc)}") from None
        if not isinstance(model, nn.Module):
            raise CheckpointError(f"{what} returned {type(model).__name__}, not an nn.Module")
        return model

    return build


def architecture_builder(
    path: Path,
    architecture: Callable[[], Any] | None,
    tasks: Sequence[Any],
    model: str | None,
    model_args: Mapping[str, str] | None,
) -> Callable[[], Any]:
    """The builder of a weights-only file's module: ``architecture``, else ``model`` (``--model``) called with
    ``model_args``, else the first of ``tasks`` whose ``build_model()`` returns one; nothing is built or imported
    until it is called.

    The callable raises:
        CheckpointError: none of them gives a module ("holds only weights"), a factory that fails or returns
            something else.
        PluginError: a task's ``build_model()`` failed or returned something else.
    """
    if architecture is not None:
        return _checked(architecture, "the architecture")
    if model:
        return _checked(lambda: load_factory(model, model_args)(), f"--model {model}")
    found = [t[0] if isinstance(t, tuple) else t for t in tasks]  # Task objects, or resolve_tasks()' pairs

    def from_tasks() -> Any:
        from torch import nn

        from ..tasks.contract import describe_task

        for task in found:
            try:
                module = task.build_model()
            except Exception as exc:  # the plugin is broken (exit 3), not the checkpoint
                raise PluginError(f"{describe_task(task)}: build_model() failed: {_one_line(exc)}") from exc
            if module is not None and not isinstance(module, nn.Module):
                raise PluginError(f"{describe_task(task)}: build_model() returned {type(module).__name__}, not an nn.Module")
            if module is not None:
                return module
        raise CheckpointError(
            f"{path} holds only weights: give the architecture with --model package.module:factory "
            "(and --model-arg key=value), or a --task whose build_model() returns the module"
        )

    return from_tasks
