"""maskprobe.learning.batching: a task's batch (tensor, tuple/list/dict of tensors, batch along dim 0) split into the K
chunks of a step, its size, and its move to a device."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from maskprobe.learning.batching import batch_size_of, split_batch, to_device


class Pair(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


@pytest.mark.parametrize(("n", "parts", "sizes"), [(10, 3, [4, 3, 3]), (8, 4, [2, 2, 2, 2]), (5, 1, [5]), (2, 4, [1, 1, 0, 0])])
def test_a_tensor_splits_along_dim0_into_sizes_that_differ_by_at_most_one(n, parts, sizes):
    batch = torch.arange(n * 3).reshape(n, 3)
    chunks = split_batch(batch, parts)
    assert [c.shape[0] for c in chunks] == sizes
    assert all(c.shape[1:] == (3,) for c in chunks)
    assert torch.equal(torch.cat(chunks), batch)  # in order, nothing lost or repeated


def test_a_dict_splits_per_key_and_keeps_key_order_and_repeats_non_tensors():
    batch = {"y": torch.arange(6), "x": torch.arange(12).reshape(6, 2), "name": "add", "scale": torch.tensor(0.5)}
    chunks = split_batch(batch, 3)
    assert len(chunks) == 3
    assert [list(c) for c in chunks] == [["y", "x", "name", "scale"]] * 3
    assert [c["y"].tolist() for c in chunks] == [[0, 1], [2, 3], [4, 5]]
    assert chunks[2]["x"].tolist() == [[8, 9], [10, 11]]
    assert all(c["name"] == "add" for c in chunks)
    assert all(c["scale"] is batch["scale"] for c in chunks)  # a 0-d tensor is not split, it is shared


def test_tuples_and_lists_keep_their_type_and_nest():
    x, y = torch.arange(8).reshape(4, 2), torch.arange(4)
    chunks = split_batch((x, [y, {"z": y * 10}]), 2)
    assert type(chunks[0]) is tuple and type(chunks[0][1]) is list
    assert chunks[1][0].tolist() == [[4, 5], [6, 7]]
    assert chunks[1][1][0].tolist() == [2, 3]
    assert chunks[1][1][1]["z"].tolist() == [20, 30]


def test_a_named_tuple_batch_splits_and_moves_as_its_own_type():
    batch = Pair(torch.arange(6), torch.arange(6) * 2)
    chunks = split_batch(batch, 2)
    assert [type(c) for c in chunks] == [Pair, Pair]
    assert chunks[1].x.tolist() == [3, 4, 5] and chunks[1].y.tolist() == [6, 8, 10]
    moved = to_device(batch, "meta")
    assert type(moved) is Pair and moved.x.device.type == "meta" and moved.y.shape == (6,)


def test_a_non_tensor_batch_is_repeated():
    assert split_batch("abc", 3) == ["abc", "abc", "abc"]
    assert split_batch(torch.tensor(7.0), 2)[1].item() == 7.0


@pytest.mark.parametrize(
    ("batch", "size"),
    [
        (torch.zeros(7, 3), 7),
        (torch.tensor(1.0), 1),  # a lone scalar is one example
        ((torch.zeros(5), torch.zeros(9)), 5),  # the first tensor decides
        ([torch.zeros(0, 2), torch.zeros(3)], 3),  # an empty tensor is skipped
        ({"meta": "x", "ids": torch.zeros(4, 2, dtype=torch.long)}, 4),
        ({"scale": torch.tensor(0.5), "x": torch.zeros(16, 3)}, 16),  # a 0-d tensor is shared, not a batch of 1
        ((torch.tensor(2.0), {"x": torch.zeros(6)}), 6),
        ((torch.tensor(2.0), torch.tensor(3.0)), 1),
        (Pair(torch.zeros(3), torch.zeros(3)), 3),
        ({}, 0),
        ("text", 0),
    ],
)
def test_batch_size_of(batch, size):
    assert batch_size_of(batch) == size


def test_the_batch_size_of_every_chunk_adds_up_to_the_batch():
    batch = {"scale": torch.tensor(0.5), "x": torch.zeros(10, 3), "y": torch.zeros(10)}
    k = min(4, batch_size_of(batch))  # training.run: K chunks, never more than the examples
    assert k == 4
    assert [batch_size_of(c) for c in split_batch(batch, k)] == [3, 3, 2, 2]


def test_to_device_moves_every_tensor_and_leaves_the_rest():
    batch = {"x": torch.zeros(2, 3), "pair": (torch.ones(2), [torch.zeros(1)]), "tag": "t", "n": 3}
    moved = to_device(batch, torch.device("meta"))
    assert moved["x"].device.type == "meta" and moved["x"].shape == (2, 3)
    assert type(moved["pair"]) is tuple and moved["pair"][0].device.type == "meta"
    assert type(moved["pair"][1]) is list and moved["pair"][1][0].device.type == "meta"
    assert moved["tag"] == "t" and moved["n"] == 3
    assert batch["x"].device.type == "cpu"  # the caller's batch is not changed


def test_to_device_on_the_same_device_keeps_the_tensor():
    x = torch.zeros(3)
    assert to_device(x, "cpu") is x


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_cuda_round_trip():
    batch = (torch.arange(4), {"y": torch.ones(4)})
    moved = to_device(batch, "cuda")
    assert moved[0].is_cuda and moved[1]["y"].is_cuda
    back = to_device(moved, "cpu")
    assert torch.equal(back[0], batch[0]) and torch.equal(back[1]["y"], batch[1]["y"])
