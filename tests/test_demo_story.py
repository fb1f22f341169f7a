"""The demo at its default settings must show what the paper found (specialisation), beyond the control.

This runs the real demo (about 1.5 minutes on 2 CPU cores). The settings are the demo's defaults, fixed
before this test was written; the assertions are the paper's qualitative claim, not numbers fitted to a run.
"""

from __future__ import annotations

import json

import pytest

from maskprobe.cli import run


@pytest.mark.slow
def test_default_demo_shows_specialisation(tmp_path, capsys):
    assert run(["demo", "--out", str(tmp_path), "--device", "cpu", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    ab = data["ablation"]
    assert ab["tasks"] == ["arith-add", "arith-mul"]
    d_excl = ab["drops"]["exclusive"]
    d_ctrl = ab["drops"]["control_exclusive"]
    for i, j in ((0, 1), (1, 0)):
        # removing the weights only task i uses breaks task i far more than task j ...
        assert d_excl[i][i] - d_excl[i][j] > 0.3
        # ... and far more than removing as many random weights does
        assert d_excl[i][i] - d_ctrl[i][i] > 0.3
    assert data["scores"]["p_specialize"] > data["scores"]["p_specialize_control"] + 0.3
    assert all(f > 0.8 for f in ab["full"])  # the base network learned both operations
