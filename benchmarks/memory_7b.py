"""Will a 7B model's masks fit one GPU? ``--dry-run``'s estimate for a Llama-2-7B-shaped model, with no 7B weights.

The 32-block model is built on the meta device in bfloat16 (shapes only: nothing is allocated or downloaded), and
maskprobe's default selection picks the masked tensors on it. What autograd saves per example (the estimate's
activation term) is measured for real on the CPU, on the same model with 1 and 2 blocks at full width (random bf16
weights, about 1.7 GB of memory): the second block's increment times the remaining blocks, added to the 1-block
figure. Then :func:`maskprobe.learning.memory.estimate` gives the GPU total for each ``--samples`` and
``--adam-state``, against the budget (default 141 GB, one H200).

Run::

    python benchmarks/memory_7b.py                      # Llama-2-7B shape, 4 x 256 tokens, text-lm's loss
    python benchmarks/memory_7b.py --seq 512 --batch 2 --budget 80e9

Needs ``transformers`` (the ``[dev]`` extra). An estimate, not a measurement: the GPU peak itself is what
``benchmarks/gpu.sh`` would measure on a lent GPU.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskprobe.learning.footprint import saved_bytes_per_example  # noqa: E402
from maskprobe.learning.masked import MaskedModel, frozen  # noqa: E402
from maskprobe.learning.memory import SAVED_FACTOR, estimate, human  # noqa: E402
from maskprobe.learning.selection import select_parameters  # noqa: E402


def config(layers: int):
    from transformers import LlamaConfig

    # Llama-2-7B's shape (transformers' LlamaConfig defaults are that model's)
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)  # fmt: skip


def saved_per_example(layers: int, seq: int) -> int:
    """Bytes autograd saves for one sequence of ``seq`` tokens through a ``layers``-block model (real, CPU, bf16)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(config(layers)).to(torch.bfloat16).eval()
    names = select_parameters(model)
    ids = torch.randint(0, 32000, (1, seq))

    def run_with(overrides: dict) -> torch.Tensor:
        return MaskedModel(model, overrides)(input_ids=ids, labels=ids).loss

    with frozen(model):
        return saved_bytes_per_example(model, names, run_with, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256, help="tokens per example")
    ap.add_argument("--batch", type=int, default=4, help="examples per step (--batch-size)")
    ap.add_argument("--budget", type=float, default=141e9, help="device bytes (default 141e9, one H200)")
    args = ap.parse_args()
    from transformers import LlamaForCausalLM

    torch.set_num_threads(max(1, torch.get_num_threads()))
    one, two = saved_per_example(1, args.seq), saved_per_example(2, args.seq)
    per_example = one + (two - one) * (args.layers - 1)
    with torch.device("meta"):
        model = LlamaForCausalLM(config(args.layers)).to(torch.bfloat16)
    names = select_parameters(model)
    n = sum(dict(model.named_parameters())[m].numel() for m in names)
    total_params = sum(p.numel() for p in model.parameters())
    print(
        f"# Llama-2-7B shape: {args.layers} blocks, {total_params / 1e9:.2f}B parameters (bf16), {n / 1e9:.2f}B masked "
        f"(default selection, {len(names)} tensors); batch {args.batch} x {args.seq} tokens; "
        f"autograd saves {human(per_example)} per example (measured on 1 and 2 blocks, CPU); budget {args.budget / 1e9:.0f} GB"
    )
    print(f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| --samples | --adam-state | total | bytes/masked weight (no activations) | fits |")
    print("|---:|---|---:|---:|---|")
    for k in (1, 2, 4):
        for state in ("fp32", "bf16"):
            est = estimate(model, names, device="cuda", batch_size=args.batch, samples=k, act_per_example=per_example,
                           act_factor=SAVED_FACTOR, state_bytes=2 if state == "bf16" else 4)  # fmt: skip
            per_weight = (est.total - est.activations) / n
            fits = "yes" if est.total <= args.budget else "no"
            print(f"| {k} | {state} | {est.total / 1e9:.1f} GB | {per_weight:.1f} | {fits} |")
    parts = ", ".join(f"{k} {v / 1e9:.1f} GB" for k, v in est.parts().items())
    print(f"# last row's parts: {parts}")


if __name__ == "__main__":
    main()
