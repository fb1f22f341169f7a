"""Task discovery, --task-arg typing, the listing, and one-line errors (exit 3) for every broken-plugin case."""

from __future__ import annotations

import json

import pytest
import torch

from maskprobe.cli import run
from maskprobe.errors import BadInputError, PluginError
from maskprobe.tasks import contract_problems, load_task, task_class
from maskprobe.tasks.args import parse_task_args
from maskprobe.testing import tiny_fnn

# a valid task over a 4 -> 2 FNN; the broken variants below each change one thing
PLUGIN_HEAD = """
import torch
import torch.nn.functional as F
from maskprobe import Task
from maskprobe.testing import tiny_fnn


class Good(Task):
    name = "good"

    def __init__(self, n: int = 3, scale: float = 1.0, flag: bool = False, sizes: list[int] | None = None, label: str = "x"):
        self.n, self.scale, self.flag, self.sizes, self.label = n, scale, flag, sizes, label

    def build_model(self):
        return tiny_fnn(4, 2, hidden=(8,))

    def batches(self, split, batch_size, generator):
        while True:
            x = torch.randn(batch_size, 4, generator=generator)
            yield x, (x.sum(1) > 0).long()
            if split == "eval":
                return

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    def evaluate(self, model, batches):
        right = total = 0
        for x, y in batches:
            right += int((model(x).argmax(1) == y).sum())
            total += len(y)
        return {"accuracy": right / total}
"""

BROKEN = {
    "NoLoss": (
        "class NoLoss(Task):\n    name = 'noloss'\n    def batches(self, s, b, g):\n        yield torch.zeros(b, 4)\n"
        "    def evaluate(self, m, bs):\n        return {'accuracy': 0.0}\n",
        "does not implement loss()",
    ),
    "VectorLoss": (
        "class VectorLoss(Good):\n    name = 'vector-loss'\n    def loss(self, model, batch):\n"
        "        x, y = batch\n        return F.cross_entropy(model(x), y, reduction='none')\n",
        "loss() must return a scalar float tensor, got Tensor(",
    ),
    "WrongDevice": (
        "class WrongDevice(Good):\n    name = 'wrong-device'\n    def loss(self, model, batch):\n"
        "        x, y = batch\n        return F.cross_entropy(model(x), torch.zeros(len(y), dtype=torch.long, device='meta'))\n",
        "wrong device",
    ),
    "OutOfRange": (
        "class OutOfRange(Good):\n    name = 'out-of-range'\n    def evaluate(self, model, batches):\n"
        "        return {'accuracy': 1.5}\n",
        "metric accuracy=1.5 is outside its range (0.0, 1.0)",
    ),
    "MetaLoss": (
        "class MetaLoss(Good):\n    name = 'meta-loss'\n    def loss(self, model, batch):\n"
        "        return torch.zeros((), device='meta')\n",
        "wrong device: loss() returned a tensor on meta",
    ),
    "Finite": (
        "class Finite(Good):\n    name = 'finite'\n    def batches(self, split, batch_size, generator):\n"
        "        yield from list(Good.batches(self, 'eval', batch_size, generator))\n",
        "the 'train' batch stream ended at step 1; it must be endless",
    ),
}


NAMES = {
    "MetaLoss": "meta-loss",
    "VectorLoss": "vector-loss",
    "WrongDevice": "wrong-device",
    "OutOfRange": "out-of-range",
    "Finite": "finite",
}


@pytest.fixture()
def plugin(tmp_path):
    path = tmp_path / "myplugin.py"
    path.write_text(PLUGIN_HEAD + "\n\n" + "\n\n".join(code for code, _ in BROKEN.values()))
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_fnn(4, 2, hidden=(8,)).state_dict(), ckpt)
    return path, ckpt


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("cls", sorted(BROKEN))
def test_broken_plugin_is_one_line_naming_plugin_file_and_fault(plugin, tmp_path, capsys, cls):
    path, ckpt = plugin
    code = run(
        [
            "train",
            str(ckpt),
            "--task",
            f"{path}:{cls}",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path / "m"),
            "--quiet",
        ]
    )
    assert code == 3
    err = _one_line_error(capsys)
    assert str(path) in err  # names the file
    assert BROKEN[cls][1] in err  # says what is wrong
    # names the plugin: by its task name once it has one, by its reference when refused before that
    assert f"'{path}:NoLoss'" in err if cls == "NoLoss" else f"task plugin '{NAMES[cls]}'" in err


def test_import_error_names_file_and_exception(tmp_path, capsys):
    bad = tmp_path / "broken_import.py"
    bad.write_text("import torch\nx = 1 / 0\n")
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_fnn(4, 2).state_dict(), ckpt)
    code = run(["train", str(ckpt), "--task", f"{bad}:Task", "--out", str(tmp_path / "m"), "--quiet"])
    assert code == 3
    err = _one_line_error(capsys)
    assert str(bad) in err and "ZeroDivisionError" in err


def test_missing_class_and_not_a_task(plugin, capsys):
    path, _ = plugin
    assert run(["tasks", "--check", f"{path}:Nope"]) == 3
    assert "has no attribute 'Nope'" in _one_line_error(capsys)
    assert run(["tasks", "--check", f"{path}:F"]) == 3  # the module's torch.nn.functional, not a Task
    assert "not a subclass of maskprobe.Task" in _one_line_error(capsys)


def test_check_command_passes_good_and_fails_broken(plugin, capsys):
    path, _ = plugin
    assert run(["tasks", "--check", f"{path}:Good", "--task-arg", "n=5"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.count(" ok ") + out.count("ok    ") >= 5
    assert run(["tasks", "--check", f"{path}:OutOfRange", "--json"]) == 3
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is False and "outside its range" in report["problems"][0]
    assert len(captured.err.strip().splitlines()) == 1


def test_task_args_are_typed_from_the_signature(plugin):
    path, _ = plugin
    ref = f"{path}:Good"
    cls = task_class(ref)
    args = parse_task_args(ref, cls, ["n=7", "scale=0.5", "flag=yes", "sizes=1,2,3", "label=7"])
    assert args == {"n": 7, "scale": 0.5, "flag": True, "sizes": [1, 2, 3], "label": "7"}
    task, task_ref = load_task(ref, args)
    assert (task.n, task.scale, task.flag, task.sizes, task.label) == (7, 0.5, True, [1, 2, 3], "7")
    assert task_ref.ref == f"{path.resolve()}:Good" and task_ref.args == args


@pytest.mark.parametrize(
    "pair, message",
    [
        ("n=three", "n='three' is not a valid int"),
        ("scale=big", "is not a valid float"),
        ("flag=maybe", "is not a valid bool"),
        ("sizes=1,x", "is not a valid"),
        ("nope=1", "has no argument 'nope'"),
        ("n", "must be key=value"),
    ],
)
def test_bad_task_arg_is_bad_input(plugin, capsys, pair, message):
    path, ckpt = plugin
    with pytest.raises(BadInputError, match=message.replace("(", r"\(")):
        parse_task_args(f"{path}:Good", task_class(f"{path}:Good"), [pair])
    code = run(["train", str(ckpt), "--task", f"{path}:Good", "--task-arg", pair, "--out", str(path.parent / "m"), "--quiet"])
    assert code == 2
    cli_message = "no task accepts --task-arg 'nope=1'" if pair == "nope=1" else message.split("'")[0]
    assert cli_message in _one_line_error(capsys)


def test_contract_problems_lists_each_declaration_fault():
    from maskprobe import Task

    class Bad(Task):
        name = "bad"
        metric = ""
        higher_is_better = "yes"
        metric_range = (1.0, 0.0)

        def batches(self, split, batch_size, generator):
            yield torch.zeros(1)

    problems = contract_problems(Bad)
    assert any("does not implement loss()" in p for p in problems)
    assert any("does not implement evaluate()" in p for p in problems)
    assert any("metric must be a non-empty string" in p for p in problems)
    assert any("higher_is_better must be True or False" in p for p in problems)
    assert any("metric_range must be None or (low, high)" in p for p in problems)
    with pytest.raises(PluginError):
        task_class("maskprobe.testing:TaskCheck")


def test_listing_shows_sample_tasks_with_arguments_metric_and_source(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the table's width, whatever terminal runs the tests (rich reads COLUMNS)
    assert run(["tasks", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["tasks"]}
    for name in ("arith-add", "dadd-pair1", "dadd-pair2", "dadd-both", "digits"):
        assert name in rows and rows[name]["error"] is None, rows.get(name)
    assert rows["dadd-pair1"]["source"].startswith("sample_tasks.double_addition:Pair1Task (entry point")
    assert rows["dadd-pair1"]["metric"] == "accuracy" and rows["dadd-pair1"]["metric_range"] == [0.0, 1.0]
    assert rows["digits"]["arguments"]["removed"] == ": int = -1"
    assert run(["tasks"]) == 0
    table = capsys.readouterr().out
    assert "dadd-pair2" in table and "accuracy (higher is better) in [0, 1]" in table
    assert run(["tasks", "--task-arg", "n=1"]) == 2


def test_unknown_task_name_is_bad_input(capsys):
    assert run(["tasks", "--check", "no-such-task"]) == 2
    assert "unknown task 'no-such-task'" in _one_line_error(capsys)


def test_module_reference_and_entry_point_give_the_same_class():
    assert task_class("dadd-pair1") is task_class("sample_tasks.double_addition:Pair1Task")
    task, ref = load_task("dadd-both", {"hidden": "8"})
    assert task.name == "dadd-both" and task.hidden == [8] and ref.ref == "dadd-both"


# ------------------------------------------------------------------------------------ per-task --task-arg


def test_task_arg_per_task_by_ref_or_position_and_plain_for_all():
    from maskprobe.tasks.args import resolve_tasks

    (add, add_ref), (mul, mul_ref) = resolve_tasks(
        ["arith-add", "arith-mul"], ["eval_size=5", "arith-mul:eval_size=7", "1:hidden=8,8", "2:eval-size=9"]
    )
    assert add_ref.args == {"eval_size": 5, "hidden": "8,8"}
    assert mul_ref.args == {"eval_size": 9}  # TASK:key=value wins over key=value, the last of them over earlier ones
    assert (add.name, mul.name) == ("arith-add", "arith-mul")


def test_name_renames_one_instance_and_the_record_rebuilds_it():
    from maskprobe.tasks.args import resolve_tasks

    tasks = resolve_tasks(["arith-add", "arith-add"], ["hidden=8,8", "1:name=legal", "2:name=news", "2:eval_size=4"])
    assert [t.name for t, _ in tasks] == ["legal", "news"]
    assert [r.args for _, r in tasks] == [{"hidden": "8,8", "name": "legal"}, {"hidden": "8,8", "name": "news", "eval_size": 4}]
    rebuilt, ref = load_task(tasks[1][1].ref, json.loads(tasks[1][1].to_json())["args"])  # as compare rebuilds a mask's task
    assert rebuilt.name == "news" and ref.args == tasks[1][1].args and type(rebuilt).name == "arith-add"


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["arith-add:eval_size=3"], "--task-arg 'arith-add:eval_size=3': --task arith-add is given 2 times; name it by "
                                    "position (1 or 2)"),
        (["3:eval_size=1"], "--task-arg '3:eval_size=1': '3' is neither a --task nor a position among them "
                            "(1 arith-add, 2 arith-add)"),
        (["1:colour=red"], "task 'arith-add' has no argument 'colour' (arguments: "),
        (["colour=red"], "no task accepts --task-arg 'colour=red'"),
        ([":eval_size=1"], "--task-arg ':eval_size=1' must be key=value or TASK:key=value"),
        (["2:name=a/b"], "task 'arith-add': name='a/b' must be a word of letters, digits and . _ + - (it names the mask file)"),
    ],
)  # fmt: skip
def test_bad_per_task_arg_is_one_error(pairs, message):
    from maskprobe.tasks.args import resolve_tasks

    with pytest.raises(BadInputError) as err:
        resolve_tasks(["arith-add", "arith-add"], pairs)
    assert str(err.value).startswith(message), str(err.value)


def test_two_tasks_of_one_name_are_refused_with_the_rename_remedy(tmp_path):
    from maskprobe.paths import output_paths

    with pytest.raises(BadInputError) as err:
        output_paths(tmp_path / "out", ["arith-add", "arith-mul", "arith-add"])
    assert str(err.value) == (
        f"two tasks are both named 'arith-add' (both masks would be {tmp_path / 'out' / 'arith-add'}.safetensors): "
        "rename one with --task-arg N:name=NEW, N its position among the --task options"
    )


def test_train_one_class_twice_into_two_named_masks(tmp_path, capsys):
    from maskprobe.masks.maskfile import load_masks
    from sample_tasks.arithmetic import IN_FEATURES, OUT_FEATURES, build_fnn

    torch.manual_seed(0)
    torch.save(build_fnn(IN_FEATURES, [8, 8], OUT_FEATURES).state_dict(), ckpt := tmp_path / "c.pt")
    argv = ["train", str(ckpt), "--task", "arith-add", "--task", "arith-add", "--task-arg", "hidden=8,8",
            "--task-arg", "eval_size=16", "--task-arg", "1:name=legal", "--task-arg", "2:name=news", "--steps", "2",
            "--batch-size", "8", "-q", "--out", str(tmp_path / "masks")]  # fmt: skip
    assert run(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.safetensors")) == ["legal.safetensors", "news.safetensors"]
    meta = load_masks(tmp_path / "masks" / "news.safetensors").metadata
    assert meta["task"]["name"] == "news" and meta["task"]["args"] == {"hidden": "8,8", "eval_size": 16, "name": "news"}
