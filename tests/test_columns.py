"""80 columns (issue 21 items 2 and 5): the progress bar keeps its step counter and ETA, train's parameter summary
fits one screen, compare never folds a tensor name, ``train --help`` leaves its descriptions room, and a sweep's
runs are told apart wherever they are shown. Every test checks that no line is wider than the terminal."""

from __future__ import annotations

import io
import re

import pytest
import torch
from rich.console import Console

from maskprobe import progress
from maskprobe.cli import run
from maskprobe.learning.selection import SelectedParameter
from maskprobe.learning.training import StepEvent
from maskprobe.masks.maskfile import save_masks
from maskprobe.measure.compare import compare
from maskprobe.render import common_prefix, names_fit
from maskprobe.render.compare import compare_tables, overlap_table
from maskprobe.render.train import selection_groups, selection_summary

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
ETA = re.compile(r"(\d+:\d\d:\d\d|-:--:--)")


def lines_of(text: str, width: int) -> list[str]:
    """The lines a terminal shows (escape codes removed, carriage returns as line breaks); none wider than it."""
    lines = [line.rstrip() for line in re.split(r"[\r\n]", ANSI.sub("", text))]
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, f"wider than {width}: {too_wide[:3]}"
    return [line for line in lines if line.strip()]


def shown(*renderables, width=80) -> list[str]:
    c = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    for r in renderables:
        c.print(r, markup=False) if isinstance(r, str) else c.print(r)
    return lines_of(c.export_text(), width)


# ---- the live progress bar ---------------------------------------------------------------------------------


@pytest.fixture
def terminal(monkeypatch):
    """A terminal as rich sees one (the tests' conftest sets CI for plain lines; a live bar needs it unset)."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")

    def make(width: int) -> tuple[Console, io.StringIO]:
        monkeypatch.setenv("COLUMNS", str(width))
        buf = io.StringIO()
        return Console(file=buf, force_terminal=True, color_system=None), buf

    return make


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("label", ["keep-outputs beta=1e-05", "a-task-with-a-rather-long-name seed=3 beta=0.0001"])
def test_the_bar_keeps_label_step_counter_and_eta_at_80_and_120_columns(terminal, width, label):
    console, buf = terminal(width)
    assert console.width == width and progress.interactive(console)
    with progress.TrainProgress(console, label, 20000) as callback:
        callback(StepEvent("ignored", 1200, 20000, 0.5, 0.0123, 0.881, 100.0, 0.95, "cosine"))
    lines = [line for line in lines_of(buf.getvalue(), width) if "1200/20000" in line]
    assert lines, buf.getvalue()
    last = lines[-1]
    assert ETA.search(last.split("1200/20000", 1)[1]), last  # the ETA right after the counter
    settings = label.partition(" ")[2]
    assert f" {settings} " in last.split("1200/20000")[0], last  # the run's settings survive a cut label
    assert "88.1%" in last  # the density always fits beside them
    if width == 120 and len(label) < 30:
        assert "cosine  0.9500" in last and "task loss" in last and "it/s" in last


def test_the_numbers_give_way_in_order_rate_loss_metric_density():
    full = progress.stats_text(200, 0.0123, 0.881, "accuracy", 0.95, 12.3)
    assert full == "task loss   0.0123  density  88.1%  accuracy  0.9500    12.3 it/s"
    assert progress.stats_text(len(full) - 1, 0.0123, 0.881, "accuracy", 0.95, 12.3).endswith("12.3/s")
    for form in ("loss   0.0123 dens  88.1% accuracy  0.9500", "dens  88.1% accuracy  0.9500", "dens  88.1%"):
        assert progress.stats_text(len(form), 0.0123, 0.881, "accuracy", 0.95, 12.3) == form
    assert progress.stats_text(5, 0.0123, 0.881) == ""


def test_a_label_is_cut_in_its_task_name_not_in_its_settings():
    assert progress.shorten("keep-outputs beta=1e-05", 30) == "keep-outputs beta=1e-05"
    assert progress.shorten("keep-outputs beta=1e-05", 16) == "keep… beta=1e-05"
    assert progress.shorten("a-very-long-task-name", 10) == "a-very-lo…"


def test_plain_lines_name_the_run_and_give_an_eta(capsys):
    console = Console(file=io.StringIO(), width=80)
    with progress.TrainProgress(console, "arith-add seed=2", 100, plain_every=0) as callback:
        callback(StepEvent("arith-add", 50, 100, 1.0, 0.9, 0.5, 10.0))
    line = console.file.getvalue().strip()
    assert line.startswith("arith-add seed=2: step 50/100 ") and line.endswith("eta 0:00:10")


# ---- train's parameter summary -------------------------------------------------------------------------------


def bert_rows(layers=6, exclude_layer=None):
    """``describe_selection`` rows of a BERT encoder as MiniLM has them (16 tensors a layer, embeddings, pooler)."""
    rows = [SelectedParameter("embeddings.word_embeddings.weight", (30522, 384), "float32", 30522 * 384, False, "embedding",
                              kind="embedding"),
            SelectedParameter("embeddings.LayerNorm.weight", (384,), "float32", 384, False, "norm", kind="norm"),
            SelectedParameter("embeddings.LayerNorm.bias", (384,), "float32", 384, False, "norm", kind="norm")]  # fmt: skip
    for b in range(layers):
        for sub, shape in [("attention.self.query", (384, 384)), ("attention.self.key", (384, 384)),
                           ("attention.self.value", (384, 384)), ("attention.output.dense", (384, 384)),
                           ("intermediate.dense", (1536, 384)), ("output.dense", (384, 1536))]:  # fmt: skip
            name = f"encoder.layer.{b}.{sub}"
            masked = b != exclude_layer
            rows.append(SelectedParameter(f"{name}.weight", shape, "float32", shape[0] * shape[1], masked,
                                          "" if masked else "--exclude", kind="weight"))  # fmt: skip
            rows.append(SelectedParameter(f"{name}.bias", shape[:1], "float32", shape[0], False, "bias", kind="bias"))
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            for attr in ("weight", "bias"):
                name = f"encoder.layer.{b}.{ln}.{attr}"
                rows.append(SelectedParameter(name, (384,), "float32", 384, False, "norm", kind="norm"))
    rows.append(SelectedParameter("pooler.dense.weight", (384, 384), "float32", 384 * 384, True, kind="weight"))
    rows.append(SelectedParameter("pooler.dense.bias", (384,), "float32", 384, False, "bias", kind="bias"))
    return rows


def test_the_summary_of_a_six_layer_encoder_fits_one_screen_at_80_columns():
    rows = bert_rows()
    assert len(rows) == 101
    groups = selection_groups(rows)
    assert [label for label, _ in groups] == ["embeddings", "encoder.layer.0-5", "pooler"]
    assert sum(len(members) for _, members in groups) == len(rows)
    lines = shown(*selection_summary(rows, "minilm (hf-folder); parameters to mask"), width=80)
    assert len(lines) <= 24  # one screen, where the full table took ~110 lines
    text = "\n".join(lines)
    layer_row = next(line for line in lines if line.startswith("encoder.layer.0-5"))
    assert layer_row.split()[1:] == ["weights", "36", f"{6 * (4 * 384 * 384 + 2 * 1536 * 384):,}", "all"]
    masked = 6 * (4 * 384 * 384 + 2 * 1536 * 384) + 384 * 384
    assert f"masked: 37 of 101 tensors, {masked:,} of" in text
    assert "no (bias)" in text and "no (embedding)" in text and "train --verbose" in text


def test_an_excluded_layer_stands_apart_in_the_summary():
    groups = [label for label, _ in selection_groups(bert_rows(exclude_layer=3))]
    assert groups == ["embeddings", "encoder.layer.0-2", "encoder.layer.3", "encoder.layer.4-5", "pooler"]
    lines = shown(*selection_summary(bert_rows(exclude_layer=3)), width=80)
    row = next(line for line in lines if line.startswith("encoder.layer.3 "))
    assert row.split()[1:3] == ["weights", "6"] and row.endswith("no (--exclude)")


def test_a_bare_sequential_groups_by_its_indices():
    rows = [SelectedParameter(f"{k}.weight", (4, 4), "float32", 16, True, kind="weight") for k in (0, 2)]
    rows.append(SelectedParameter("4.weight", (2, 4), "float32", 8, True, kind="weight"))
    assert [label for label, _ in selection_groups(rows)] == ["0", "2", "4"]  # 0 and 2 are not consecutive


def test_selection_rows_know_their_kind():
    from maskprobe.learning.selection import describe_selection

    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model.register_parameter("scale", torch.nn.Parameter(torch.ones(3)))
    kinds = {r.name: r.kind for r in describe_selection(model)}
    assert kinds == {"0.weight": "embedding", "1.weight": "weight", "1.bias": "bias", "2.weight": "norm", "2.bias": "norm",
                     "scale": "vector"}  # fmt: skip


# ---- compare: whole tensor names ---------------------------------------------------------------------------

LONG = ["encoder.layer.0.attention.self.query.weight", "encoder.layer.0.attention.output.dense.weight",
        "encoder.layer.0.intermediate.dense.weight", "encoder.layer.1.attention.self.query.weight"]  # fmt: skip


@pytest.fixture(scope="module")
def long_named(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    paths = []
    for k in range(2):
        gen = torch.Generator().manual_seed(k)
        masks = {n: torch.rand(6, 5, generator=gen) < 0.4 for n in LONG}
        paths.append(save_masks(d / f"m{k}.safetensors", masks, {"task": {"name": f"t{k}"}}))
    return compare(paths).to_dict()


@pytest.mark.parametrize("width", [80, 120])
def test_compare_never_folds_a_tensor_name(long_named, width):
    lines = shown(*compare_tables(long_named, width), width=width)
    text = "\n".join(lines)
    cut = width == 80  # at 120 the whole names fit in the table's own column
    assert ("names after encoder.layer." in text) == cut  # the shared prefix, said once where names would not fit
    for name in [n.removeprefix("encoder.layer.") if cut else n for n in LONG]:
        assert any(line.strip() == name or line.startswith(f"{name} ") or f"│ {name} " in line for line in lines), name


def test_the_overlap_table_is_unchanged_where_names_fit(long_named):
    assert overlap_table(long_named, width=None).__class__.__name__ == "Table"
    wide = shown(overlap_table(long_named, width=250), width=250)
    assert any(f"│ {LONG[0]} " in line for line in wide)  # whole names in the table's own column


def test_common_prefix_and_names_fit():
    assert common_prefix(LONG) == "encoder.layer."
    assert common_prefix(["a.b", "a.b.c"]) == "a."
    assert common_prefix(["x.weight"]) == "" and common_prefix(["a.w", "b.w"]) == ""
    from rich.table import Table

    t = Table()
    t.add_column("name")
    t.add_column("value", justify="right")
    t.add_row("short", "1")
    assert names_fit(t, 80) is t
    t.add_row("n" * 78, "22")
    lines = shown(names_fit(t, 80), width=80)
    assert lines == ["  value", "short", "      1", "n" * 78, "     22"]


# ---- train: --help, the summary, a sweep's labels ---------------------------------------------------------


def option_helps():
    import typer.main

    from maskprobe.cli import app

    command = typer.main.get_command(app).commands["train"]
    return {p.opts[0]: p.help for p in command.params if getattr(p, "help", None) and p.opts[0].startswith("--")}


@pytest.mark.parametrize("width", [80, 120])
def test_train_help_gives_every_option_its_first_words_at_80_columns(monkeypatch, capsys, width):
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    assert run(["train", "--help"]) == 0
    lines = lines_of(capsys.readouterr().out, width)
    text = "\n".join(re.sub(r"[│╭╮╰╯─]", " ", line) for line in lines)
    flat = [" ".join(line.split()) for line in text.splitlines()]
    for opt, help_text in option_helps().items():
        assert any(opt == w or w.startswith(opt + ",") for line in flat for w in line.split()), opt  # the option whole
        words = " ".join(help_text.split()[:3])
        assert any(words in line for line in flat), f"{opt}: {words!r} not on one line"


@pytest.fixture(scope="module")
def sweep(tiny_addmul, tmp_path_factory):
    ckpt, _, hidden = tiny_addmul
    return ckpt, hidden, tmp_path_factory.mktemp("sweep")


def test_a_beta_sweep_names_each_run_by_its_beta_everywhere(sweep, capsys, monkeypatch):
    ckpt, hidden, out = sweep
    monkeypatch.setenv("COLUMNS", "80")
    argv = ["train", str(ckpt), "--task", "arith-add", "--task-arg", f"hidden={hidden}", "--steps", "3", "--beta",
            "1e-4,1e-3", "--out", str(out / "b"), "--batch-size", "16"]  # fmt: skip
    assert run(argv) == 0
    captured = capsys.readouterr()
    err, stdout = captured.err, captured.out
    for beta in ("0.0001", "0.001"):
        label = f"arith-add beta={beta}"
        assert f"{label}: step 3/3 " in err and f"{label}: saved " in err
        assert f"Mask for task {label}" in stdout and f"{label}: density " in stdout and f"{label}: metrics" in stdout
    assert "one row per tensor: train --verbose" in err and "masked: 3 of 6 tensors" in err
    lines = err.splitlines()
    summary = lines[next(k for k, line in enumerate(lines) if line.startswith("block")) :]
    summary = summary[: next(k for k, line in enumerate(summary) if line.startswith("one row per tensor")) + 1]
    assert 4 < len(summary) < 20 and max(map(len, summary)) <= 80  # (log lines: one line each, never cut)


def test_seeds_are_labelled_and_verbose_lists_every_tensor(sweep, capsys):
    ckpt, hidden, out = sweep
    argv = ["train", str(ckpt), "--task", "arith-add", "--task-arg", f"hidden={hidden}", "--steps", "2", "--seeds", "0,1",
            "--out", str(out / "s"), "--batch-size", "16", "--verbose", "--json"]  # fmt: skip
    assert run(argv) == 0
    err = capsys.readouterr().err
    assert "arith-add seed=1: step 2/2" in err and "arith-add seed=0: saved" in err
    assert "one row per tensor" not in err and "no (bias)" in err  # the full table, one row per tensor


@pytest.mark.slow  # the whole demo at tiny settings: ~50 s on 2 busy cores
def test_the_demo_fits_80_columns_and_says_the_time_left(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    argv = ["demo", "--out", str(tmp_path), "--base-steps", "600", "--steps", "20", "--hidden", "16,16", "--device", "cpu"]
    assert run(argv) == 0
    captured = capsys.readouterr()
    lines = lines_of(captured.out, 80)  # the compact overlap table, not the 130-column one
    assert any("IoU (chance)" in line for line in lines)
    assert re.search(r"base step 500/600 loss \d+\.\d+, about \d+ s left", captured.err)


def test_a_trained_masks_table_keeps_long_names_whole_at_80_columns():
    from types import SimpleNamespace

    from maskprobe.render.train import mask_table

    masks = {n: torch.ones(384, 1536, dtype=torch.bool) for n in LONG}
    numel = 384 * 1536 * len(LONG)
    dens = {"per_tensor": dict.fromkeys(LONG, 1.0), "kept": numel, "numel": numel, "total": 1.0}
    result = SimpleNamespace(masks=masks, density=lambda: dens, task=SimpleNamespace(name="keep-outputs"))
    table = mask_table(result, "keep-outputs beta=1e-05")
    lines = shown(names_fit(table, 80), width=80)
    assert lines[0].startswith("Mask for task keep-outputs beta=1e-05")
    assert all(name in lines for name in LONG)  # each on a line of its own, whole
    assert names_fit(table, 200) is table  # where they fit: the table as it was


def test_two_masks_of_one_task_are_told_apart_by_their_files_at_80_columns(long_named):
    import copy

    report = copy.deepcopy(long_named)
    for k, m in enumerate(report["masks"]):
        m.update(
            task="keep-outputs",
            label=f"keep-outputs#{k + 1}",
            path=f"/runs/keep-outputs.beta{['1e-05', '0.0001'][k]}.safetensors",
        )
    text = " ".join(" ".join(shown(*compare_tables(report, 80), width=80)).split())
    assert "A = keep-outputs#1 (keep-outputs.beta1e-05.safetensors), B = keep-outputs#2 (keep-outputs.beta0.0001" in text


def test_inspect_keeps_long_tensor_names_whole_at_80_columns(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    path = save_masks(tmp_path / "m.safetensors", {n: torch.ones(6, 5, dtype=torch.bool) for n in LONG}, {"task": {"name": "t"}})
    assert run(["inspect", str(path)]) == 0
    lines = lines_of(capsys.readouterr().out, 80)
    assert all(name in lines for name in LONG)  # each on a line of its own, not folded into fragments


def test_bars_open_at_once_share_one_live_display(terminal, monkeypatch):
    """train --together opens one bar per mask at once: one rich Progress, a line each (rich < 15 refuses a second
    live display), stopped when the last bar closes."""
    console, buf = terminal(100)
    started = []
    real_start = progress.TrainProgress.__enter__

    def counting(self):
        out = real_start(self)
        started.append(self._bar)
        return out

    monkeypatch.setattr(progress.TrainProgress, "__enter__", counting)
    a, b = progress.TrainProgress(console, "arith-add seed=0", 100), progress.TrainProgress(console, "arith-add seed=1", 100)
    with a as cb_a, b as cb_b:
        assert started[0] is started[1] and progress.TrainProgress._shared is not None
        cb_a(StepEvent("ignored", 40, 100, 0.5, 0.5, 0.9, 1.0, None, "accuracy"))
        cb_b(StepEvent("ignored", 70, 100, 0.5, 0.5, 0.8, 1.0, None, "accuracy"))
    assert progress.TrainProgress._shared is None and not started[0].live.is_started
    out = buf.getvalue()
    assert "40/100" in out and "70/100" in out and "seed=0" in out and "seed=1" in out
