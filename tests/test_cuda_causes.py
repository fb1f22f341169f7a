"""The causes of the failures on a GPU machine (issue 20), each shown on the CPU, with a ``cuda`` test beside it.

1. cuDNN computes an RNN's backward only in training mode: the frozen model's recurrent modules run in train mode
   with dropout 0 (``maskprobe.learning.masked.run_mode``), which computes what eval mode does.
2. A TorchScript module is moved to a device by reloading it there (``maskprobe.devices.module_on``), not by
   ``copy.deepcopy(...).to(...)``, which left parameters that are not leaves.
3. ``--shard`` builds its FSDP2 mesh on the run's device, not on the machine's accelerator; more processes per
   node than GPUs is a one-line error (``maskprobe.learning.distributed.rank_device``).
"""

from __future__ import annotations

import socket
import warnings

import pytest
import torch
from torch import nn

from maskprobe.devices import module_on
from maskprobe.errors import BadInputError
from maskprobe.learning import distributed
from maskprobe.learning.masked import MaskedModel, frozen, masked_weights, run_mode

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class _Recurrent(nn.Module):
    """Two recurrent layers with inter-layer dropout, a dropout layer and a head: every mode-dependent piece."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, 2, batch_first=True, dropout=dropout)
        self.gru = nn.GRU(6, 5, 2, batch_first=True, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        y, _ = self.gru(self.drop(y))
        return self.head(y[:, -1])


def _record_modes(model: nn.Module) -> list[tuple[str, bool, float]]:
    """Forward hooks recording (name, training, dropout) of every recurrent module and dropout layer at each call."""
    seen: list[tuple[str, bool, float]] = []

    def hook(name: str):
        def record(module: nn.Module, args: object, out: object) -> None:
            p = module.dropout if isinstance(module, nn.RNNBase) else module.p
            seen.append((name, module.training, p))

        return record

    for name, m in model.named_modules():
        if isinstance(m, nn.RNNBase | nn.Dropout):
            m.register_forward_hook(hook(name))
    return seen


# ---------------------------------------------------------------------------------- 1. recurrent modules


def test_masked_forward_runs_recurrent_modules_in_train_mode_without_dropout_and_computes_eval_mode():
    torch.manual_seed(0)
    model = _Recurrent()
    model.train()
    model.gru.eval()  # a mixed state: each module's own mode comes back afterwards
    x = torch.randn(8, 5, 4)
    masks = {
        n: torch.rand(p.shape) > 0.3 for n, p in model.named_parameters() if n.endswith("weight_hh_l1") or n == "head.weight"
    }
    overrides = masked_weights(model, masks)
    model.eval()
    expected = torch.func.functional_call(model, overrides, (x,))  # eval mode: no dropout anywhere
    model.train()
    model.gru.eval()
    seen = _record_modes(model)
    with frozen(model):
        logits = {n: torch.zeros(w.shape, requires_grad=True) for n, w in overrides.items()}
        gated = {n: w * (1 + logits[n]) for n, w in overrides.items()}
        out = [MaskedModel(model, gated)(x) for _ in range(2)]
        out[0].sum().backward()
    assert torch.equal(out[0], expected) and torch.equal(out[1], expected)  # bitwise: eval mode's computation
    assert all(logit.grad is not None and logit.grad.abs().sum() > 0 for logit in logits.values())
    by_name = {name: (training, p) for name, training, p in seen}
    assert by_name["lstm"] == (True, 0.0) and by_name["gru"] == (True, 0.0)  # what cuDNN needs, dropout off
    assert by_name["drop"][0] is False  # every other module in eval mode
    assert (model.training, model.lstm.training, model.gru.training, model.drop.training) == (True, True, False, True)
    assert model.lstm.dropout == 0.5 and model.gru.dropout == 0.5  # restored
    assert all(p.requires_grad for p in model.parameters())


def test_nested_run_modes_restore_the_outer_one():
    model = _Recurrent()
    with run_mode(model):
        with run_mode(model):  # evaluate_task inside the training loop's frozen()
            assert model.lstm.training and model.lstm.dropout == 0.0
        assert model.lstm.training and model.lstm.dropout == 0.0 and not model.drop.training
    assert model.lstm.dropout == 0.5 and model.training


def test_training_a_mask_on_an_lstm_with_dropout_never_switches_dropout_on():
    from maskprobe.learning.training import TrainConfig, train_mask
    from maskprobe.tasks import TaskRef
    from sample_tasks.arithmetic import AddTask

    task = AddTask(model="lstm", lstm_size=8, lstm_layers=2, eval_size=64)
    torch.manual_seed(0)
    net = task.build_model()
    net.lstm.dropout = 0.5  # as a checkpoint trained with inter-layer dropout holds it
    seen = _record_modes(net)
    config = TrainConfig(steps=3, batch_size=16, seed=1, device="cpu", log_every=1, eval_every=1)
    results = [train_mask(net, task, TaskRef("arith-add", {}), config) for _ in range(2)]
    assert seen and all(name != "lstm" or (training, p) == (True, 0.0) for name, training, p in seen)
    assert net.lstm.dropout == 0.5
    assert results[0].final_loss == results[1].final_loss  # no dropout noise: the same seed, the same run
    assert all(torch.equal(results[0].masks[n], results[1].masks[n]) for n in results[0].masks)


class _LstmOut(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, 2, batch_first=True, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class _Parent(nn.Module):
    """An eager parent (it takes hooks) around a compiled LSTM, whose dropout is a compiled constant."""

    def __init__(self, dropout: float):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.rnn = torch.jit.script(_LstmOut(dropout))
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[:, -1])


def _with_scripted_lstm(dropout: float) -> nn.Module:
    return _Parent(dropout)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_a_compiled_lstm_gets_train_mode_only_without_dropout(dropout):
    torch.manual_seed(0)
    model = _with_scripted_lstm(dropout)
    seen: list[tuple[bool, bool]] = []
    model.head.register_forward_hook(lambda m, a, o: seen.append((model.rnn.lstm.training, torch.backends.cudnn.enabled)))
    x = torch.randn(3, 5, 4)
    model.eval()
    expected = model(x)
    model.train()
    cudnn_before = torch.backends.cudnn.enabled
    with frozen(model):
        assert torch.equal(model(x), expected)
    # dropout 0: train mode (cuDNN's backward); dropout 0.5 cannot be changed: eval mode, cuDNN off meanwhile
    assert seen[-1] == ((True, cudnn_before) if dropout == 0.0 else (False, False))
    assert model.rnn.lstm.training and torch.backends.cudnn.enabled == cudnn_before


@pytest.mark.cuda
@CUDA
def test_cuda_masked_backward_through_an_lstm_with_dropout_matches_eval_mode():
    torch.manual_seed(0)
    model = _Recurrent().cuda()
    x = torch.randn(8, 5, 4, device="cuda")
    model.eval()
    with torch.no_grad():
        expected = model(x)
    with frozen(model):
        logits = {n: torch.zeros(p.shape, device="cuda", requires_grad=True) for n, p in model.named_parameters()}
        gated = {n: p * (1 + logits[n]) for n, p in model.named_parameters()}
        out = MaskedModel(model, gated)(x)
        out.sum().backward()  # was: "cudnn RNN backward can only be called in training mode"
    torch.testing.assert_close(out.detach(), expected)
    assert logits["lstm.weight_hh_l1"].grad.abs().sum() > 0
    for dropout in (0.0, 0.5):
        scripted = _with_scripted_lstm(dropout).cuda()
        with frozen(scripted):
            params = dict(scripted.named_parameters())
            gate = torch.ones(params["head.weight"].shape, device="cuda", requires_grad=True)
            MaskedModel(scripted, {"head.weight": params["head.weight"] * gate})(x).sum().backward()
        assert gate.grad is not None


@pytest.mark.cuda
@CUDA
def test_cuda_lstm_mask_through_the_cli(tmp_path, capsys):
    from maskprobe.cli import run
    from sample_tasks.arithmetic import AddTask

    torch.manual_seed(0)
    net = AddTask(model="lstm", lstm_size=8, lstm_layers=2).build_model()
    torch.save(net.state_dict(), ckpt := tmp_path / "lstm.pt")
    argv = ["train", str(ckpt), "--task", "arith-add", "--task-arg", "model=lstm", "--task-arg", "lstm_size=8",
            "--task-arg", "lstm_layers=2", "--task-arg", "eval_size=64", "--steps", "3", "--batch-size", "16",
            "--device", "cuda", "--out", str(tmp_path / "m.safetensors"), "-q"]  # fmt: skip
    assert run(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "m.safetensors").exists()


# ---------------------------------------------------------------------------------- 2. TorchScript on a device


def _scripted() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))


def test_a_torchscript_module_moves_to_another_device_with_leaf_parameters():
    script = _scripted()
    script[2].weight.requires_grad_(False)
    moved = module_on(script, "meta")  # another device than the CPU's, on any machine
    assert moved is not script and isinstance(moved, torch.jit.ScriptModule)
    params = dict(moved.named_parameters())
    assert all(p.device.type == "meta" and p.is_leaf for p in params.values())
    assert [p.requires_grad for p in params.values()] == [True, True, False, True]  # the flags as they were
    with frozen(moved):  # was: "you can only change requires_grad flags of leaf variables"
        assert not any(p.requires_grad for p in moved.parameters())
    assert all(p.device.type == "cpu" for p in script.parameters())  # the caller's module is not moved
    assert module_on(script, "cpu") is script  # on the device already: itself


def test_the_old_copy_of_a_torchscript_module_was_the_cause():
    """``copy.deepcopy`` of a ScriptModule clones its parameters with autograd history on this torch: freezing
    that copy failed exactly as on the GPU (where the engine copied the module to the device)."""
    import copy

    old = copy.deepcopy(_scripted())
    if all(p.is_leaf for p in old.parameters()):
        pytest.skip("this torch copies a ScriptModule's parameters as leaves")
    with pytest.raises(RuntimeError):
        with frozen(old):
            pass


def test_the_engine_uses_a_torchscript_module_on_its_device_in_place():
    from maskprobe.learning.engine import FusedEngine
    from maskprobe.learning.training import TrainConfig

    script = _scripted()
    assert FusedEngine(script, TrainConfig(device="cpu")).module is script


@pytest.mark.cuda
@CUDA
def test_cuda_torchscript_checkpoint_trains_on_the_gpu(tmp_path, capsys):
    from maskprobe.cli import run
    from maskprobe.learning.engine import FusedEngine
    from maskprobe.learning.training import TrainConfig

    script = _scripted()
    engine = FusedEngine(script, TrainConfig(device="cuda"))
    assert all(p.is_cuda and p.is_leaf for p in engine.module.parameters())
    with engine.frozen():
        pass
    from checkpoint_helpers import fnn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(fnn("16,16")), path := tmp_path / "m.torchscript.pt")
    argv = ["train", str(path), "--task", "arith-add", "--task-arg", "hidden=16,16", "--task-arg", "eval_size=32",
            "--steps", "3", "--batch-size", "8", "--device", "cuda", "--out", str(tmp_path / "m.safetensors"), "-q"]  # fmt: skip
    assert run(argv) == 0, capsys.readouterr().err


# ---------------------------------------------------------------------------------- 3. sharding and devices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("freq", torch.arange(3, dtype=torch.float32) + 0.5, persistent=False)

    def forward(self, x):
        return self.lin(x) * self.freq


def _build_sharded_on(device: torch.device, backend: str):
    import torch.distributed as dist

    from maskprobe.learning.sharded import build_sharded

    src = _WithBuffer()
    state = {k: v.detach().clone() for k, v in src.state_dict().items()}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        model, gates = build_sharded(_WithBuffer, state, lambda m: ["lin.weight"], device=device, init=2.0)
        tensors = [*model.parameters(), *model.buffers()]
        devices = {(t.to_local() if hasattr(t, "to_local") else t).device.type for t in tensors}
        meshes = {t.device_mesh.device_type for t in model.parameters() if hasattr(t, "device_mesh")}
        x = torch.randn(5, 4, device=device)
        with torch.no_grad():
            gates["lin.weight"].mode = "mask"
            out = model(x)
        return devices, meshes, out, src(x.cpu())
    finally:
        dist.destroy_process_group()


def test_sharded_build_puts_every_shard_and_buffer_on_the_runs_device_whatever_the_accelerator(monkeypatch):
    """fully_shard's default mesh follows the machine's accelerator (cuda:0 on a GPU machine, whatever --device
    said); made to claim CUDA here, the build must not consult it."""
    monkeypatch.setattr(torch._C, "_get_accelerator", lambda: torch.device("cuda"))
    devices, meshes, out, expected = _build_sharded_on(torch.device("cpu"), "gloo")
    assert devices == {"cpu"} and meshes == {"cpu"}
    torch.testing.assert_close(out, expected)


def test_more_processes_per_node_than_gpus_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(BadInputError, match=r"2 processes per node but 1 CUDA device.*--nproc-per-node 1"):
        distributed.rank_device(distributed.World(1, 2, 1), env={"LOCAL_WORLD_SIZE": "2"})
    # rank 0 fits, but its node runs two: it stops at once too instead of waiting for a rank that failed
    with pytest.raises(BadInputError, match="2 processes per node"):
        distributed.rank_device(distributed.World(0, 2, 0), env={"LOCAL_WORLD_SIZE": "2"})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.rank_device(distributed.World(1, 2, 1), env={"LOCAL_WORLD_SIZE": "2"}) == torch.device("cuda", 1)


def test_setup_refuses_before_touching_a_missing_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail(f"set_device({d}) was called"))
    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(BadInputError, match="CUDA device"):
        distributed.setup(torch.device("cuda"))


@pytest.mark.cuda
@CUDA
def test_cuda_sharded_build_on_the_gpu_and_rank_devices():
    devices, meshes, out, expected = _build_sharded_on(torch.device("cuda"), "nccl")
    assert devices == {"cuda"} and meshes == {"cuda"}
    torch.testing.assert_close(out.cpu(), expected)
    n = torch.cuda.device_count()
    assert distributed.rank_device(distributed.World(0, n, 0), env={"LOCAL_WORLD_SIZE": str(n)}) == torch.device("cuda", 0)
    with pytest.raises(BadInputError, match="CUDA device"):
        distributed.rank_device(distributed.World(0, n + 1, 0), env={"LOCAL_WORLD_SIZE": str(n + 1)})
