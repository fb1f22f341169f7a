"""Every number in docs/ is reproduced by a command beside it (issue 21, item 7).

Two checks over docs/*.md (and README.md for the flags):

* a markdown table with a measured cell (a percentage, a number with a unit such as ms, s, MiB or steps/s, a
  ratio such as 1.22x or a decimal such as 0.931) has, in the same section (from its heading to the next heading
  of the same or a higher level), a command: a fenced code block line or an inline code span that starts with
  ``maskprobe``, ``python``, ``bash``, ``pytest`` or ``torchrun`` (after optional ``VAR=value`` settings). A
  table that defines rather than measures (defaults, flags) opts out with ``<!-- no-command: reason -->`` in
  its section;
* every ``--flag`` written after ``maskprobe train|compare|evaluate|inspect|tasks|demo`` in a command line of
  the docs is an option of that command (read from the CLI's own click command, not from its help text).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
COMMANDS = ("train", "compare", "evaluate", "inspect", "tasks", "demo")

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+\S")
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
OPT_OUT = re.compile(r"<!--\s*no-command:\s*\S.*?-->")
ENV_PREFIX = re.compile(r"^(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*")
RUNNERS = ("maskprobe ", "python ", "python3 ", "bash ", "pytest", "torchrun ", ".venv/bin/python ")
# a measured cell: 93 %, 1.5 ms, 12 MiB, 203 steps/s, 1.22x / x1.22, 0.931 (not a bare integer, not a version 2.13.0)
UNIT = r"(?:%|ms|µs|us|s|min|h|MiB|GiB|KiB|MB|GB|KB|B|steps/s|ms/step|s/step|GB/s|MB/s|it/s)"
MEASURED = re.compile(rf"(?<![\w.])(?:\d[\d,]*(?:\.\d+)?\s?{UNIT}(?![\w/])|\d+(?:\.\d+)?x(?!\w)|x\d+\.\d+|\d*\.\d+)(?![\w.])")


def _runs_command(text: str) -> bool:
    return ENV_PREFIX.sub("", text.strip()).startswith(RUNNERS)


def sections(text: str):
    """Yield (heading, level, lines) for each heading's section: its own lines up to the next heading of the
    same or a higher level (subsections included). Lines inside fences are marked so tables there are skipped."""
    lines, heads, fenced = text.splitlines(), [], False
    marks = []
    for i, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
            marks.append(True)
            continue
        marks.append(fenced)
        m = None if fenced else HEADING.match(line)
        if m:
            heads.append((i, len(m.group(1)), line.strip()))
    heads.insert(0, (-1, 0, "(top of file)"))
    for n, (start, level, title) in enumerate(heads):
        end = next((s for s, lv, _ in heads[n + 1 :] if lv <= level), len(lines))
        own_end = heads[n + 1][0] if n + 1 < len(heads) else len(lines)
        yield title, start, own_end, end, lines, marks


def has_command(lines: list[str], marks: list[bool], start: int, end: int) -> bool:
    for i in range(max(start, 0), end):
        line = lines[i]
        if marks[i] and not FENCE.match(line):
            if _runs_command(line):
                return True
        elif any(_runs_command(span) for span in INLINE.findall(line)):
            return True
    return False


def measured_tables(lines: list[str], marks: list[bool], start: int, own_end: int):
    """(line number, cell) of the first measured body cell of each table among the section's own lines."""
    i = max(start, 0)
    while i < own_end:
        if not marks[i] and lines[i].lstrip().startswith("|"):
            j = i
            while j < own_end and lines[j].lstrip().startswith("|"):
                j += 1
            body = [row for row in lines[i + 2 : j] if not re.fullmatch(r"[\s|:-]*", row)]
            for row in body:
                cells = [c for c in row.strip().strip("|").split("|")]
                # a cell that is code (a flag's default, an example) is a definition, not a measurement
                hit = next((c for c in cells if MEASURED.search(INLINE.sub("", c))), None)
                if hit is not None:
                    yield i + 1, hit.strip()
                    break
            i = j
        else:
            i += 1


def test_measured_cell_pattern():
    for cell in ("93.1 %", "1.5 ms", "12 MiB", "203 steps/s", "1.22x", "x1.52", "0.931", "**2.10**", "4.2 GB/s"):
        assert MEASURED.search(cell), cell
    for cell in ("42", "2.13.0", "`0.97`", "beta 1e-3", "K=4", "seed 3", "42-2000x4-20", "fp32", "`--steps 500`"):
        assert not MEASURED.search(INLINE.sub("", cell)), cell


def test_a_table_without_a_command_is_found(tmp_path):
    doc = "# T\n\n## Results\n\n| run | time |\n|---|---:|\n| a | 1.5 ms |\n\n## Next\n\n`python x.py`\n"
    found = [
        t
        for t, start, own, end, lines, marks in sections(doc)
        for _ in measured_tables(lines, marks, start, own)
        if not has_command(lines, marks, start, end)
    ]
    assert found == ["## Results"]
    fixed = doc.replace("## Next", "`python benchmarks/x.py --rounds 3`\n\n## Next")
    assert not [
        t
        for t, start, own, end, lines, marks in sections(fixed)
        for _ in measured_tables(lines, marks, start, own)
        if not has_command(lines, marks, start, end)
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_measured_table_has_a_command_in_its_section(doc):
    text = doc.read_text(encoding="utf-8")
    missing = []
    for title, start, own_end, end, lines, marks in sections(text):
        for lineno, cell in measured_tables(lines, marks, start, own_end):
            section = "\n".join(lines[max(start, 0) : end])
            if OPT_OUT.search(section) or has_command(lines, marks, start, end):
                continue
            missing.append(f"{doc.name}:{lineno} under {title!r} (cell {cell!r})")
    assert not missing, "tables of measurements with no command that reproduces them:\n" + "\n".join(missing)


# ---------------------------------------------------------------------------------------------------------- flags


def _options() -> dict[str, set[str]]:
    import typer

    from maskprobe.cli import app

    group = typer.main.get_command(app)
    out = {}
    for name in COMMANDS:
        command = group.commands[name]
        opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
        out[name] = opts | {"--help"}
    return out


def command_lines(text: str):
    """Each command line of a doc (fenced lines joined over trailing backslashes, and inline code spans)."""
    fenced, pending = False, ""
    for line in text.splitlines():
        if FENCE.match(line):
            fenced, pending = not fenced, ""
            continue
        if fenced:
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            yield pending
            pending = ""
        else:
            yield from INLINE.findall(line)


CALL = re.compile(r"(?:^|[\s(;&|])maskprobe\s+(" + "|".join(COMMANDS) + r")\b(.*)")


def flag_uses(text: str):
    for line in command_lines(text):
        for m in CALL.finditer(line):
            rest = re.split(r"\s#|\s\|\s|&&|;|\)", m.group(2))[0]  # up to a comment, a pipe or the next command
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest):
                yield m.group(1), flag, line.strip()


def test_flag_check_finds_an_unknown_flag():
    text = "```bash\nmaskprobe train ckpt --task arith-add \\\n    --log-every 10 --out m.safetensors\n```\n"
    uses = [(c, f) for c, f, _ in flag_uses(text)]
    assert ("train", "--log-every") in uses and ("train", "--out") in uses
    assert "--log-every" not in _options()["train"] and "--out" in _options()["train"]


@pytest.mark.parametrize("doc", [*DOCS, ROOT / "README.md"], ids=lambda p: p.name)
def test_every_flag_in_a_docs_command_exists(doc):
    options = _options()
    unknown = sorted(
        {
            f"maskprobe {cmd} {flag}   in: {line}"
            for cmd, flag, line in flag_uses(doc.read_text(encoding="utf-8"))
            if flag not in options[cmd]
        }
    )
    assert not unknown, f"{doc.name}: flags that `maskprobe CMD --help` does not list:\n" + "\n".join(unknown)
