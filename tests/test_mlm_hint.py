"""text-mlm on a bare encoder names the task that fits it, as text-classify's error does (issue 21 item 8)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from builtin_helpers import animal_lines, make_model, write_lines  # noqa: E402 (transformers first)

from maskprobe.cli import run  # noqa: E402


def test_text_mlm_on_a_bare_encoder_suggests_keep_outputs(tmp_path, capsys):
    encoder = make_model("bert", tmp_path / "bert")  # BertModel: no language-modelling head
    data = write_lines(tmp_path / "a.txt", animal_lines(20))
    capsys.readouterr()
    code = run(["evaluate", str(encoder), "--task", "text-mlm", "--task-arg", f"data={data}", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "BertModel has no language-modelling head" in err and "or use keep-outputs" in err
