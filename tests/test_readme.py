"""The README's library example runs as written, on a tiny checkpoint (only its sizes are substituted)."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def library_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Library") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: no python block under '## Library'"
    return match.group(1)


def test_from_maskprobe_import_compare_is_the_function_even_after_the_submodule_is_imported():
    import maskprobe.compare  # noqa: F401 - the import that used to rebind the package attribute to the module
    import maskprobe.overlap  # noqa: F401
    from maskprobe.compare import CompareReport  # the module stays importable by its old path

    import maskprobe.measure.compare  # noqa: F401
    import maskprobe.measure.overlap  # noqa: F401
    from maskprobe import compare, overlap

    assert callable(compare) and compare.__name__ == "compare" and not isinstance(compare, types.ModuleType)
    assert overlap.__name__ == "overlap" and not isinstance(overlap, types.ModuleType)
    assert CompareReport.__name__ == "CompareReport"


def test_readme_library_example_runs(tiny_addmul, tmp_path, monkeypatch, capsys):
    path, _, hidden = tiny_addmul
    code = library_snippet()
    for old, new in (('"256,256,256,256"', repr(hidden)), ("steps=4000", "steps=20"), ('"addmul.pt"', repr(str(path)))):
        assert old in code, f"README.md's library example no longer contains {old}: update this test's substitutions"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    report = namespace["report"]
    assert set(report.scores) >= {"p_specialize"}
    assert (tmp_path / "arith-add.safetensors").exists() and (tmp_path / "arith-mul.safetensors").exists()
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and float(printed[0]) == pytest.approx(report.scores["p_specialize"])
