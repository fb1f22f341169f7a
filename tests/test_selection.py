"""maskprobe/learning/selection.py on real architectures: biases by their owning module, embeddings and ties by tensor,
norm gains by ``mask_norms``; each test asserts the exact set of masked names (docs/method.md "What is masked")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskprobe.errors import BadInputError
from maskprobe.learning.selection import Selection, describe_named, describe_selection, select_parameters


def _masked(model: nn.Module, **selection) -> set[str]:
    return set(select_parameters(model, Selection(**selection)))


def _reasons(model: nn.Module, **selection) -> dict[str, str]:
    return {r.name: r.reason for r in describe_selection(model, Selection(**selection))}


# ----------------------------------------------------------------------------------------- recurrent layers


def test_lstm_biases_are_biases_in_every_layer_and_direction():
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    weights = {f"weight_{k}_l{i}{d}" for k in ("ih", "hh") for i in (0, 1) for d in ("", "_reverse")}
    biases = {f"bias_{k}_l{i}{d}" for k in ("ih", "hh") for i in (0, 1) for d in ("", "_reverse")}
    assert _masked(lstm) == weights
    assert {n for n, r in _reasons(lstm).items() if r == "bias"} == biases
    assert _masked(lstm, mask_biases=True) == weights | biases


@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN])
def test_gru_and_rnn_biases(cls):
    net = cls(3, 4, num_layers=2)
    assert _masked(net) == {"weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"}
    assert _masked(nn.Sequential(cls(3, 4, bias=False))) == {"0.weight_ih_l0", "0.weight_hh_l0"}


def test_lstm_with_projection_and_cells():
    proj = nn.LSTM(3, 4, proj_size=2)
    assert _masked(proj) == {"weight_ih_l0", "weight_hh_l0", "weight_hr_l0"}
    cells = nn.ModuleDict({"lstm": nn.LSTMCell(3, 4), "gru": nn.GRUCell(3, 4), "rnn": nn.RNNCell(3, 4)})
    assert _masked(cells) == {f"{c}.weight_{k}" for c in ("lstm", "gru", "rnn") for k in ("ih", "hh")}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_scripted_lstm_biases_are_recognised_by_name():
    net = torch.jit.script(nn.Sequential(nn.LSTM(3, 4)))
    assert _masked(net) == {"0.weight_ih_l0", "0.weight_hh_l0"}


# ------------------------------------------------------------------------------------------------ attention


def test_multihead_attention_in_proj_bias_and_bias_kv():
    mha = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    assert _masked(mha) == {"in_proj_weight", "out_proj.weight"}
    reasons = _reasons(mha)
    assert {n for n, r in reasons.items() if r == "bias"} == {"in_proj_bias", "bias_k", "bias_v", "out_proj.bias"}
    separate = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)  # separate q/k/v projections, one in_proj_bias
    assert _masked(separate) == {"q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"}


def test_transformer_encoder_layer():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16)
    assert _masked(layer, mask_norms=True) == {
        "self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight",
        "norm1.weight", "norm2.weight",
    }  # fmt: skip
    assert (
        _masked(layer)
        == _masked(layer, mask_norms=False)
        == {
            "self_attn.in_proj_weight",
            "self_attn.out_proj.weight",
            "linear1.weight",
            "linear2.weight",
        }
    )


# ---------------------------------------------------------------------------------------------------- norms


class MyRMSNorm(nn.Module):
    """A norm known only by its class name, as Hugging Face's LlamaRMSNorm is."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))


class _Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.bn = nn.BatchNorm1d(4)
        self.inorm = nn.InstanceNorm1d(4, affine=True)
        self.rms = nn.RMSNorm(4)
        self.custom = MyRMSNorm(4)


def test_norm_gains_left_alone_by_default_and_masked_with_mask_norms():
    m = _Norms()
    gains = {f"{n}.weight" for n in ("ln", "gn", "bn", "inorm", "rms", "custom")}
    assert _masked(m, mask_norms=True) == {"fc.weight"} | gains
    assert _masked(m) == _masked(m, mask_norms=False) == {"fc.weight"}
    reasons = _reasons(m, mask_norms=False)
    assert {n for n, r in reasons.items() if r == "norm"} == gains | {f"{n}.bias" for n in ("ln", "gn", "bn", "inorm")}
    assert reasons["fc.bias"] == "bias"
    # biases of norms are biases when norms are masked; --mask-biases adds them, --mask-norms false still wins
    assert _masked(m, mask_biases=True, mask_norms=True) == {n for n, _ in m.named_parameters()}
    assert _masked(m, mask_biases=True, mask_norms=False) == {"fc.weight", "fc.bias"}
    assert _masked(m, include=("ln.*",), mask_norms=False) == {"ln.weight", "ln.bias"}  # an explicit include wins


# ---------------------------------------------------------------------------------------------- convolutions


def test_conv_and_hf_conv1d_biases():
    from transformers.pytorch_utils import Conv1D

    m = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Conv2d(3, 3, 1), nn.ConvTranspose2d(3, 2, 2), Conv1D(4, 3), nn.Bilinear(2, 2, 2))
    assert _masked(m) == {f"{i}.weight" for i in range(5)}
    assert {n for n, r in _reasons(m).items() if r == "bias"} == {f"{i}.bias" for i in range(5)}


# ----------------------------------------------------------------------------------------------------- ties


class _HeadFirst(nn.Module):
    """The tied head is registered before the embedding: its first name is ``head.weight``."""

    def __init__(self, head_first: bool = True):
        super().__init__()
        if head_first:
            self.head = nn.Linear(4, 10, bias=False)
            self.tok = nn.Embedding(10, 4)
        else:
            self.tok = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
        self.mid = nn.Linear(4, 4)
        self.head.weight = self.tok.weight


@pytest.mark.parametrize("head_first", [True, False])
def test_tied_embedding_is_an_embedding_whatever_the_module_order(head_first):
    m = _HeadFirst(head_first)
    rows = {r.name: r for r in describe_selection(m)}
    first, other = ("head.weight", "tok.weight") if head_first else ("tok.weight", "head.weight")
    assert list(rows) == [first, "mid.weight", "mid.bias"]
    assert rows[first].tied == (other,) and rows[first].reason == "embedding" and not rows[first].masked
    assert _masked(m) == {"mid.weight"}
    # a glob on either name selects the one tensor, under its first name
    assert _masked(m, include=(other,)) == {first}
    assert _masked(m, include=("*",), exclude=("mid.*",)) == {first}


def test_tiny_gpt2_masked_set_and_tied_head():
    from checkpoint_helpers import tiny_gpt2

    m = tiny_gpt2()
    rows = {r.name: r for r in describe_selection(m)}
    assert rows["transformer.wte.weight"].tied == ("lm_head.weight",) and "lm_head.weight" not in rows
    h = "transformer.h.0."
    assert _masked(m, mask_norms=True) == {
        f"{h}ln_1.weight", f"{h}attn.c_attn.weight", f"{h}attn.c_proj.weight", f"{h}ln_2.weight",
        f"{h}mlp.c_fc.weight", f"{h}mlp.c_proj.weight", "transformer.ln_f.weight",
    }  # fmt: skip
    assert _masked(m, mask_norms=False) == {
        f"{h}attn.c_attn.weight",
        f"{h}attn.c_proj.weight",
        f"{h}mlp.c_fc.weight",
        f"{h}mlp.c_proj.weight",
    }
    assert {r.reason for r in rows.values() if "wte" in r.name or "wpe" in r.name} == {"embedding"}


def test_tiny_bert_tied_decoder_and_prediction_bias():
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                     max_position_embeddings=16)  # fmt: skip
    m = BertForMaskedLM(cfg)
    rows = {r.name: r for r in describe_selection(m)}
    # the head's bias belongs to BertLMPredictionHead (not a Linear) but is tied to decoder.bias: a bias
    assert rows["cls.predictions.bias"].tied == ("cls.predictions.decoder.bias",)
    assert rows["cls.predictions.bias"].reason == "bias"
    assert rows["bert.embeddings.word_embeddings.weight"].tied == ("cls.predictions.decoder.weight",)
    layer = "bert.encoder.layer.0."
    linear = [
        f"{layer}attention.self.query", f"{layer}attention.self.key", f"{layer}attention.self.value",
        f"{layer}attention.output.dense", f"{layer}intermediate.dense", f"{layer}output.dense",
        "cls.predictions.transform.dense",
    ]  # fmt: skip
    norms = [f"{p}LayerNorm" for p in ("bert.embeddings.", f"{layer}attention.output.", f"{layer}output.")]
    norms.append("cls.predictions.transform.LayerNorm")
    assert _masked(m, mask_norms=False) == {f"{n}.weight" for n in linear}
    # the embeddings' LayerNorm has "embed" in its name: an embedding by the name rule, whatever mask_norms
    assert _masked(m, mask_norms=True) == {f"{n}.weight" for n in linear + norms[1:]}
    assert _reasons(m, mask_norms=True)["bert.embeddings.LayerNorm.weight"] == "embedding"
    assert rows["bert.embeddings.LayerNorm.weight"].reason == "norm"  # the default leaves every norm alone


# ------------------------------------------------------------------------------------ names only (no module)


def test_describe_named_judges_by_names_and_finds_shared_storage(tmp_path):
    head = nn.Linear(4, 10, bias=False)
    state = {
        "rnn.weight_ih_l0": torch.zeros(8, 2), "rnn.bias_ih_l0_reverse": torch.zeros(8), "attn.in_proj_bias": torch.zeros(6),
        "ln_f.weight": torch.ones(4), "blocks.0.norm1.weight": torch.ones(4), "fc.weight": torch.zeros(4, 4),
        "tok_embed.weight": head.weight.detach(), "head.weight": head.weight.detach(), "step": torch.tensor(3),
    }  # fmt: skip
    torch.save(state, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt")  # torch.save keeps the two names on one storage
    rows = {r.name: r for r in describe_named(loaded.items(), Selection(mask_norms=False))}
    assert rows["tok_embed.weight"].tied == ("head.weight",) and "head.weight" not in rows
    assert {n: r.reason for n, r in rows.items()} == {
        "rnn.weight_ih_l0": "", "rnn.bias_ih_l0_reverse": "bias", "attn.in_proj_bias": "bias", "ln_f.weight": "norm",
        "blocks.0.norm1.weight": "norm", "fc.weight": "", "tok_embed.weight": "embedding", "step": "not floating point",
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ dtype and errors


def test_rows_show_the_stored_dtype():
    m = nn.Linear(2, 2).to(torch.bfloat16)
    assert {r.dtype for r in describe_selection(m)} == {"bfloat16"}
    rows = describe_selection(nn.Linear(2, 2), stored_dtypes={"weight": "float16", "bias": "float32"})
    assert [r.dtype for r in rows] == ["float16→float32", "float32"]


def test_include_of_an_integer_tensor_and_an_empty_selection_are_refused():
    from checkpoint_helpers import quantised_fnn

    with pytest.raises(BadInputError, match=r"^--include selects q of dtype int8, which maskprobe cannot mask"):
        select_parameters(quantised_fnn(), Selection(include=("*",)))
    with pytest.raises(BadInputError, match=r"^the selection masks no parameter"):
        select_parameters(nn.Embedding(3, 2))
