"""maskprobe.masks.layout: model order and input/output roles on the architectures researchers have."""

from __future__ import annotations

import torch
from torch import nn

from maskprobe.masks.layout import model_layout, names_layout, natural_order, recorded_layout, with_io


def _masked(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.dim() >= 2 and "embed" not in n]


def test_fnn_first_and_last_linear_are_input_and_output():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    names = ["0.weight", "0.bias", "2.weight", "4.weight", "4.bias"]
    lay = model_layout(net, names)
    assert lay.names == ("0.weight", "0.bias", "2.weight", "4.weight", "4.bias")
    assert lay.roles == {"0.weight": "input", "0.bias": "input", "2.weight": "hidden", "4.weight": "output", "4.bias": "output"}
    assert lay.io_tensors() == ("0.weight", "0.bias", "4.weight", "4.bias")


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=2)
        self.head = nn.Linear(8, 3)


def test_lstm_input_is_the_first_layers_input_weights_and_the_head_is_output():
    net = LSTMNet()
    names = _masked(net)
    lay = model_layout(net, names)
    assert lay.names[0] == "lstm.weight_ih_l0" and lay.names[-1] == "head.weight"  # model order, not alphabetical
    assert lay.roles["lstm.weight_ih_l0"] == "input"
    assert lay.roles["lstm.weight_hh_l0"] == "hidden" and lay.roles["lstm.weight_ih_l1"] == "hidden"
    assert lay.roles["head.weight"] == "output"
    # without the model, names sort alphabetically and "head" would come first: the recorded layout fixes that
    rec = recorded_layout({"layers": lay.to_list()}, sorted(names))
    assert rec is not None and rec.names == lay.names and rec.roles == lay.roles


class TinyTransformer(nn.Module):
    def __init__(self, vocab=11, d=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(nn.ModuleDict({"q": nn.Linear(d, d), "ff": nn.Linear(d, d)}) for _ in range(2))
        self.lm_head = nn.Linear(d, vocab)


def test_transformer_blocks_are_hidden_and_the_head_is_output():
    net = TinyTransformer()
    lay = model_layout(net, _masked(net))
    assert lay.roles["layers.0.q.weight"] == "hidden"  # layer 0's query is not "the input layer"
    assert lay.roles["layers.1.ff.weight"] == "hidden"
    assert lay.roles["lm_head.weight"] == "output"
    assert "input" not in lay.roles.values()  # the embedding is the input layer, and it is not masked


def test_encoder_only_model_without_head_has_no_io_layers():
    net = TinyTransformer()
    names = [n for n in _masked(net) if not n.startswith("lm_head")]
    assert set(model_layout(net, names).roles.values()) == {"hidden"}


def test_io_globs_and_none_replace_the_roles():
    lay = names_layout(["a.weight", "b.weight", "c.weight"], {"a.weight": (2, 2), "b.weight": (2, 2), "c.weight": (2, 2)})
    assert [lay.roles[n] for n in lay.names] == ["input", "hidden", "output"]
    assert set(with_io(lay, ["none"]).roles.values()) == {"hidden"}
    by_glob = with_io(lay, ["a.*", "b.*"])
    assert [by_glob.roles[n] for n in lay.names] == ["input", "input", "hidden"]
    assert with_io(lay, None) is lay


def test_natural_order_compares_numbers_as_numbers():
    assert natural_order(["l.10.w", "l.2.w", "l.0.w"]) == ["l.0.w", "l.2.w", "l.10.w"]


def test_recorded_layout_is_ignored_when_it_does_not_cover_the_files_tensors():
    assert recorded_layout({"layers": [{"name": "a", "role": "input"}]}, ["a", "b"]) is None
    assert recorded_layout({"layers": [{"name": "a", "role": "sideways"}]}, ["a"]) is None
    assert recorded_layout({}, ["a"]) is None


def test_tied_head_counts_once_under_its_first_name():
    net = TinyTransformer()
    net.lm_head.weight = net.embed.weight  # tied: named_parameters() lists it once, as embed.weight
    names = [n for n, _ in net.named_parameters() if n.startswith("layers.")] + ["embed.weight"]
    lay = model_layout(net, names)
    assert lay.names.count("embed.weight") == 1
    assert torch.equal(dict(net.named_parameters())["embed.weight"], net.lm_head.weight)
