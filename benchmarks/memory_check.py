"""``--dry-run``'s estimate against the peak of the same run on a GPU (issue 23 asks within 15 %).

For each model: ``maskprobe train ... --dry-run --json`` (the one-process total, what the memory check compares with
the free memory), then the same command for a few steps in this process, and the peak CUDA memory it allocated
(``torch.cuda.max_memory_allocated``, reset before). Models are made here with random weights (the weights do not
change the memory): the paper's FNN 42-2000x4-20 (12.1M masked weights) and a GPT-2-shaped LM (``--gpt2``, 6
layers of width 768, ``text-lm`` on generated text; needs transformers).

Run (on a GPU; on the CPU the same comparison is ``python -m pytest -q tests/test_memory.py
-k measured_peak``, by peak resident memory)::

    python benchmarks/memory_check.py --device cuda
    python benchmarks/memory_check.py --device cuda --samples 1,4 --adam-state fp32,bf16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskprobe.cli import run  # noqa: E402


def fnn(folder: Path) -> list[str]:
    from sample_tasks.arithmetic import IN_FEATURES, OUT_FEATURES, build_fnn, parse_hidden

    hidden = "2000,2000,2000,2000"
    torch.manual_seed(0)
    torch.save(build_fnn(IN_FEATURES, parse_hidden(hidden), OUT_FEATURES).state_dict(), folder / "fnn.pt")
    return [str(folder / "fnn.pt"), "--task", "arith-add", "--task-arg", f"hidden={hidden}"]


def gpt2(folder: Path) -> list[str]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.builtin_helpers import VOCAB, animal_lines, tokenizer  # the test suite's offline word-level tokenizer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=VOCAB, n_positions=256, bos_token_id=5, eos_token_id=5)
    )
    model.save_pretrained(folder / "gpt2")
    tokenizer(bert=False).save_pretrained(folder / "gpt2")
    (folder / "text.txt").write_text("\n".join(" ".join(animal_lines(20, seed=i)) for i in range(300)) + "\n")
    return [str(folder / "gpt2"), "--task", "text-lm", "--task-arg", f"data={folder / 'text.txt'}"]


def measure(argv: list[str], device: str) -> tuple[int, int]:
    """(``--dry-run``'s one-process total, the measured peak) of ``train argv``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(["train", *argv, "--dry-run", "--json"]) == 0
    plan = json.loads(out.getvalue())
    total = next(m["total"] for m in plan["modes"] if m["mode"] == "one process")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run(["train", *argv, "--steps", "3", "--force", "--quiet"]) == 0
    return total, torch.cuda.max_memory_allocated(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--samples", default="1,4")
    ap.add_argument("--adam-state", default="fp32,bf16")
    ap.add_argument("--gpt2", action="store_true", help="also the GPT-2-shaped LM (transformers)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("memory_check.py measures CUDA memory: no CUDA device here (see the docstring for the CPU check)")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| model | --samples | --adam-state | --dry-run total | measured peak | estimate / peak |")
    print("|---|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = {"FNN 42-2000x4-20": fnn(folder)}
        if args.gpt2:
            models["GPT-2 6x768"] = gpt2(folder)
        for name, base in models.items():
            for k in args.samples.split(","):
                for state in args.adam_state.split(","):
                    argv = [*base, "--device", args.device, "--samples", k, "--adam-state", state,
                            "--batch-size", "32", "--out", str(folder / "m.safetensors")]  # fmt: skip
                    est, peak = measure(argv, args.device)
                    print(f"| {name} | {k} | {state} | {est / 2**20:,.0f} MiB | {peak / 2**20:,.0f} MiB | {est / peak:.2f} |")


if __name__ == "__main__":
    main()
