"""--batched-samples (maskprobe.learning.engine.FusedEngine): the K samples as one torch.func.vmap give the loop's
gradients on an FNN, nn.TransformerEncoder, a Hugging Face BERT and GPT-2 (the batched path taken, not the
fallback), and a model vmap cannot run falls back to the loop with the loop's result, said in the metadata.

Tolerance: the vmap computes each sample's forward and backward with batched matmuls (bmm) where the loop calls
mm per chunk, so sums are blocked differently and float32 results differ by rounding: a few ulps per reduction
(float32 eps 1.2e-7), over reductions of at most 64 terms in these models, ~1e-6 relative. rtol 1e-4 with atol
1e-4 of the gradient's largest entry leaves room for that and is still far below the differences a wrong
pairing of samples, noise or chunks makes (checked: two samples' gradients differ by more than 100 times that).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskprobe.config import TrainConfig
from maskprobe.learning.batching import split_batch
from maskprobe.learning.engine import FusedEngine, stack_chunks

K = 4


def fnn():
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))
    batch = (torch.randn(16, 6), torch.randint(0, 3, (16,)))
    return model, batch, lambda m, b: F.cross_entropy(m(b[0]), b[1])


class Encoder(nn.Module):
    def __init__(self, norm_first: bool = False):
        super().__init__()
        self.embed = nn.Linear(4, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x, padding=None):
        return self.head(self.blocks(self.embed(x), src_key_padding_mask=padding).mean(1))


def encoder():
    batch = (torch.randn(16, 5, 4), torch.randint(0, 3, (16,)))
    return Encoder(), batch, lambda m, b: F.cross_entropy(m(b[0]), b[1])


def encoder_padded():
    padding = torch.zeros(16, 5, dtype=torch.bool)
    padding[::3, 3:] = True  # differs between chunks: stays batched (a bool mask in a plain tensor op)
    batch = (torch.randn(16, 5, 4), torch.randint(0, 3, (16,)), padding)
    return Encoder(norm_first=True), batch, lambda m, b: F.cross_entropy(m(b[0], b[2]), b[1])


def bert(padded: bool = False):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, pad_token_id=0)  # fmt: skip
    ids = torch.randint(1, 40, (16, 6))
    mask = torch.ones_like(ids)
    if padded:
        mask[::3, 4:] = 0
    return transformers.BertModel(config), {"input_ids": ids, "attention_mask": mask}, lambda m, b: m(**b).pooler_output.sum()


def gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=1,
                                     eos_token_id=1)  # fmt: skip
    ids = torch.randint(1, 40, (16, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    return transformers.GPT2LMHeadModel(config), batch, lambda m, b: m(**b).loss


def one_step(model, batch, loss_of, batched: bool, steps: int = 1):
    """The engine after ``steps`` steps (backward + update), and the last step's gradients: per sample the gated
    weights', and the logits' (the gate kernel's backward of those, without the regulariser)."""
    engine = FusedEngine(model, TrainConfig(samples=K, backend="torch", batched_samples=batched, seed=3))
    with engine.frozen():
        for step in range(steps):
            loss = engine.backward(step, split_batch(batch, K), range(K), K, loss_of)
            if step < steps - 1:
                engine.update(step, 0.0, 1.0)
    weights = [{n: g.clone() for n, g in sample.items() if g is not None} for sample in engine._grads]
    engine.mask.gradient(steps - 1, engine._grads, 0.0)
    return engine, loss, weights, engine.mask._buf.clone()


@pytest.mark.parametrize("make", [fnn, encoder, encoder_padded, bert, gpt2])
def test_vmap_gives_the_loops_gradients_and_is_taken(make):
    torch.manual_seed(0)
    model, batch, loss_of = make()
    loop, loss, weights, logits = one_step(model, batch, loss_of, batched=False, steps=3)
    vmap, vloss, vweights, vlogits = one_step(model, batch, loss_of, batched=True, steps=3)
    assert vmap.batched and vmap.fallback is None and vmap.info()["samples"] == "vmap"
    assert torch.backends.mha.get_fastpath_enabled()  # switched off only for the vmapped call
    assert vloss == pytest.approx(loss, rel=1e-5)
    scale = float(logits.abs().max())
    assert scale > 0
    torch.testing.assert_close(vlogits, logits, rtol=1e-4, atol=1e-4 * scale)
    assert weights[0].keys() == vweights[0].keys() and len(weights[0]) > 0
    for i in range(K):
        for n, g in weights[i].items():
            torch.testing.assert_close(vweights[i][n], g, rtol=1e-4, atol=1e-4 * float(g.abs().max()) + 1e-12)
    # the tolerance can fail: another sample's gradient (other noise, other chunk) is far outside it
    worst = max(float((weights[0][n] - weights[1][n]).abs().max() / (weights[0][n].abs().max() + 1e-30)) for n in weights[0])
    assert worst > 1e-2


def test_a_model_vmap_cannot_run_falls_back_to_the_loops_result():
    """Padded BERT: Hugging Face branches on the mask's values (padding_mask.all()), which vmap refuses for a mask
    that differs between chunks. The loop reruns the step (it used to fail with an in-place error: the stacked
    buffers' rows share one version counter) and the reason is recorded."""
    torch.manual_seed(0)
    model, batch, loss_of = bert(padded=True)
    loop, loss, weights, logits = one_step(model, batch, loss_of, batched=False, steps=2)
    fell, floss, fweights, flogits = one_step(model, batch, loss_of, batched=True, steps=2)
    assert not fell.batched and fell.batched_asked and fell.info()["samples"].startswith("loop (vmap failed: ")
    assert floss == loss and torch.equal(flogits, logits)


def test_the_loop_runs_between_vmap_steps_when_chunks_differ():
    """A step whose chunks differ in size runs the loop; the vmap steps before and after it still run batched."""
    torch.manual_seed(0)
    model, (x, y), loss_of = encoder()
    engine = FusedEngine(model, TrainConfig(samples=K, backend="torch", batched_samples=True))
    with engine.frozen():
        for step, n in enumerate((16, 15, 16)):
            engine.backward(step, split_batch((x[:n], y[:n]), K), range(K), K, loss_of)
            engine.update(step, 0.0, 1.0)
    assert engine.batched and engine.fallback is None and torch.isfinite(engine.mask.flat_logits).all()


def test_equal_integer_chunks_go_in_unbatched():
    ones = torch.ones(2, 3, dtype=torch.long)
    ids = torch.arange(12).view(4, 3)
    data, dims = stack_chunks([{"ids": ids[:2], "mask": ones}, {"ids": ids[2:], "mask": ones.clone()}])
    assert dims == {"ids": 0, "mask": None} and data["mask"].shape == (2, 3) and data["ids"].shape == (2, 2, 3)
    padded = ones.clone()
    padded[1, 2] = 0
    assert stack_chunks([ones, padded])[1] == 0
    same = torch.ones(2, 3)
    assert stack_chunks([same, same.clone()])[1] == 0  # floats are never compared
