"""The paper's LSTM for the add/mul and double-addition tasks (Csordás et al. 2021, §3; its code's
``models/lstm.py`` with the ``interfaces/recurrent`` input protocol).

One input vector is fed at **every** time step for a fixed number of steps (add/mul: 3, the paper code's
``RecurrentAddMulInterface(model, 3)``; double addition in its "together" mode: 2 pairs x 3 = 6), and the output
is read at the **last** step only: a linear layer ``head`` on the top layer's last hidden state. The recurrent
weights are one ``nn.LSTM`` named ``lstm`` (flat ``weight_ih_l*`` / ``weight_hh_l*`` / ``bias_*`` tensors, masked
through ``torch.func.functional_call`` like any parameter).

The paper's size is 2 layers x 256 units (``sweeps/addmul_rnn.yaml``, ``sweeps/tuple_rnn.yaml``). Weights start
from PyTorch's ``nn.LSTM`` initialisation with the forget-gate bias at 1 and the input biases at 0 (the paper
code's LSTM cell: forget bias 1, other biases 0).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RecurrentNet(nn.Module):
    """``steps`` copies of the input through an ``nn.LSTM`` (``layers`` x ``size``), ``head`` on the last step."""

    def __init__(self, in_features: int, out_features: int, size: int = 256, layers: int = 2, steps: int = 3):
        super().__init__()
        if size < 1 or layers < 1 or steps < 1:
            raise ValueError(f"size, layers and steps must be positive, got {size}, {layers}, {steps}")
        self.steps = int(steps)
        self.lstm = nn.LSTM(in_features, size, layers, batch_first=True)
        self.head = nn.Linear(size, out_features)
        with torch.no_grad():
            for name, p in self.lstm.named_parameters():
                if name.startswith("bias_ih"):
                    p.zero_()
                elif name.startswith("bias_hh"):
                    p.zero_()
                    p[size : 2 * size] = 1.0  # gates i, f, g, o: the forget gate's bias

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_features) -> (B, out_features): the input at each of ``steps`` steps, the head on the last."""
        out, _ = self.lstm(x.unsqueeze(1).expand(-1, self.steps, -1))
        return self.head(out[:, -1])


def check_model(model: str) -> str:
    if model not in ("fnn", "lstm"):
        raise ValueError(f"model must be fnn or lstm, got {model!r}")
    return model
