"""The built-in tasks (maskprobe/builtin/, docs/builtin-tasks.md) through the real CLI, on tiny models made on the fly.

``text-lm`` (GPT-2, an LSTM through ``--model``), ``text-mlm`` (BERT), ``text-classify`` (a BERT classifier, class
removal with ``compare``), ``keep-outputs`` (a BERT encoder, GPT-2's logits); every data format; and each mistake a
user can make with data, labels or checkpoints, which must be one line and exit code 2. Mask training runs
``FAST`` (3 steps): the point is the plumbing and the numbers the tasks report, not a pruned mask.
"""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch

pytest.importorskip("transformers")

from builtin_helpers import (  # noqa: E402 (transformers first)
    FAST,
    LABELS,
    LSTM_MODEL,
    animal_lines,
    color_lines,
    labelled_rows,
    make_lstm,
    make_model,
    number_lines,
    write_lines,
)
from safetensors.torch import load_file  # noqa: E402

from maskprobe.cli import run  # noqa: E402
from maskprobe.learning.masked import MaskedModel, masked_weights  # noqa: E402
from maskprobe.loading.checkpoints import load_checkpoint  # noqa: E402
from maskprobe.masks.maskfile import load_masks, save_masks  # noqa: E402
from maskprobe.measure.analysis import relative_drop  # noqa: E402
from maskprobe.measure.evaluation import EVAL_SEED, evaluate_task  # noqa: E402
from maskprobe.tasks import setup_tasks  # noqa: E402
from maskprobe.tasks.args import resolve_tasks  # noqa: E402

BAD = 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny checkpoints (gpt2, bert-mlm, bert-cls, bert, an LSTM state dict) and data files, made once."""
    root = tmp_path_factory.mktemp("builtin")
    w = {kind: make_model(kind, root / kind) for kind in ("gpt2", "bert-mlm", "bert-cls", "bert")}
    w["lstm"], w["lstm-tokenizer"] = make_lstm(root / "lstm")
    mixed = [line for triple in zip(animal_lines(20), number_lines(20), color_lines(20), strict=True) for line in triple]
    w["text"] = write_lines(root / "mixed.txt", mixed)  # 60 lines of 4, 5 and 6 words: padded batches
    w["rows"] = labelled_rows(per_class=10)  # 30 rows, classes interleaved: every held-out split has each class
    w["cls"] = root / "cls.jsonl"
    w["cls"].write_text("".join(json.dumps(r) + "\n" for r in w["rows"]), encoding="utf-8")
    w["root"] = root
    return w


def train(capsys, checkpoint, task, out, *args):
    """``maskprobe train ... --json`` -> (exit code, the JSON's mask entry or None, stderr)."""
    capsys.readouterr()
    code = run(["train", str(checkpoint), "--task", task, *args, "--out", str(out), "--json", *FAST])
    captured = capsys.readouterr()
    payload = json.loads(captured.out)["masks"][0] if code == 0 else None
    return code, payload, captured.err


def task_on(checkpoint, ref, *pairs, model=None):
    """The task ``ref`` with ``--task-arg`` pairs, set up on the loaded checkpoint (the Python road the CLI takes)."""
    [(task, _)] = resolve_tasks([ref], list(pairs))
    ckpt = load_checkpoint(checkpoint, tasks=[task], model=model)
    setup_tasks([task], ckpt)
    return task, ckpt.model


def assert_mask_matches(path, module, names):
    tensors = load_file(str(path))
    params = dict(module.named_parameters())
    assert sorted(tensors) == sorted(names)
    for name, t in tensors.items():
        assert t.dtype == torch.bool and t.shape == params[name].shape, name


def gpt2_masked(module):
    return [n for n, p in module.named_parameters()
            if "bias" not in n and ".wte." not in n and ".wpe." not in n and ".ln_" not in n]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- text-lm


def test_text_lm_trains_a_mask_on_gpt2_and_reports_token_metrics(world, tmp_path, capsys):
    out = tmp_path / "lm.safetensors"
    code, mask, err = train(capsys, world["gpt2"], "text-lm", out, "--task-arg", f"data={world['text']}")
    assert code == 0, err
    module = load_checkpoint(world["gpt2"]).model
    assert_mask_matches(out, module, gpt2_masked(module))
    assert len(load_file(str(out))) == 8  # 2 blocks x (c_attn, c_proj, c_fc, c_proj); norms not masked by default
    full = mask["metric_full"]
    # the eval set is every 10th line: lines 10, 20, ..., 60 of mixed.txt, i.e. 2 x (animal, number, color) lines of
    # 4, 5, 6 words; a line of n words is n tokens and n - 1 predictions
    assert full["tokens"] == 2 * (3 + 4 + 5)
    assert 0.0 <= full["accuracy"] <= 1.0 and full["loss"] > 0
    assert full["perplexity"] == pytest.approx(math.exp(full["loss"]))
    meta = load_masks(out).metadata
    assert meta["task"]["name"] == "text-lm" and meta["task"]["args"]["data"] == str(world["text"])


def test_text_lm_loss_is_transformers_own_next_token_loss(world):
    import transformers

    task, module = task_on(world["gpt2"], "text-lm", f"data={world['text']}", "eval_batch_size=4")
    got = evaluate_task(module, task)
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(world["gpt2"])
    lines = world["text"].read_text().splitlines()[9::10]
    nll = count = 0.0
    with torch.no_grad():
        for line in lines:  # one example at a time: no padding, transformers shifts the labels itself
            ids = tok(line, return_tensors="pt")["input_ids"]
            nll += float(module(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    assert got["tokens"] == count
    assert got["loss"] == pytest.approx(nll / count, rel=1e-5)


def test_a_task_sets_itself_up_from_the_model_it_is_evaluated_on(world):
    task, module = task_on(world["gpt2"], "text-lm", f"data={world['text']}")
    [(fresh, _)] = resolve_tasks(["text-lm"], [f"data={world['text']}"])  # a notebook: no setup() before evaluate
    assert evaluate_task(module, fresh) == evaluate_task(module, task)


def test_text_lm_chunks_running_text(world):
    task, _ = task_on(world["gpt2"], "text-lm", f"data={world['text']}", "chunk=8", "holdout=4")
    words = sum(len(line.split()) for line in world["text"].read_text().splitlines())
    chunks = [*task.ids["train"], *task.ids["eval"]]
    assert sum(len(c) != 8 for c in chunks) <= 1  # the text's last piece (a piece under 2 tokens is dropped)
    assert sum(map(len, chunks)) == words - (words % 8 if words % 8 < 2 else 0)  # one record: no separators
    assert len(task.ids["eval"]) == len(chunks) // 4


def test_text_lm_and_keep_outputs_on_an_lstm_with_model_and_a_tokenizer_folder(world, tmp_path, capsys):
    capsys.readouterr()
    code = run(["train", str(world["lstm"]), "--model", LSTM_MODEL, "--task", "text-lm", "--task", "keep-outputs",
                "--task-arg", f"data={world['text']}", "--task-arg", f"tokenizer={world['lstm-tokenizer']}",
                "--task-arg", "keep-outputs:output=logits", "--out", str(tmp_path), "--json", *FAST])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lm, keep = json.loads(captured.out)["masks"]
    module = load_checkpoint(world["lstm"], model=LSTM_MODEL).model
    for name in ("text-lm", "keep-outputs"):  # no embedding, no biases (nn.LSTM's bias_ih/bias_hh included)
        assert_mask_matches(tmp_path / f"{name}.safetensors", module, ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "head.weight"])
    assert lm["metric_full"]["tokens"] == 24 and 0 <= lm["metric_masked"]["accuracy"] <= 1
    assert keep["metric_full"]["agreement"] == 1.0 and keep["metric_full"]["cosine"] == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------------------------- text-mlm


def test_text_mlm_trains_a_mask_on_bert(world, tmp_path, capsys):
    out = tmp_path / "mlm.safetensors"
    code, mask, err = train(capsys, world["bert-mlm"], "text-mlm", out, "--task-arg", f"data={world['text']}")
    assert code == 0, err
    module = load_checkpoint(world["bert-mlm"]).model
    assert_mask_matches(out, module, [n for n, p in module.named_parameters()
                                      if "bias" not in n and "embeddings" not in n and "LayerNorm" not in n])  # fmt: skip
    full = mask["metric_full"]
    assert 0 <= full["accuracy"] <= 1 and full["loss"] > 0 and 6 <= full["masked_tokens"] <= 36


def eval_examples(task, batch_size):
    """Each eval example's (masked inputs, labels) without padding, in order, from the fixed evaluation seed."""
    out = []
    for b in task.batches("eval", batch_size, torch.Generator().manual_seed(EVAL_SEED)):
        for ids, labels, keep in zip(b["input_ids"], b["labels"], b["attention_mask"].bool(), strict=True):
            out.append((ids[keep].tolist(), labels[keep].tolist()))
    return out


def test_text_mlm_eval_masking_is_the_same_on_every_call_and_at_every_batch_size(world):
    task, module = task_on(world["bert-mlm"], "text-mlm", f"data={world['text']}", "holdout=2")
    first = eval_examples(task, 32)
    assert len(first) == 30 and first == eval_examples(task, 32)
    assert first == eval_examples(task, 1) == eval_examples(task, 7)
    assert all(any(lab != -100 for lab in labels) for _, labels in first)  # every example has a masked position
    small = resolve_tasks(["text-mlm"], [f"data={world['text']}", "holdout=2", "eval_batch_size=3"])[0][0]
    setup_tasks([small], load_checkpoint(world["bert-mlm"]))
    want = evaluate_task(module, task)
    assert evaluate_task(module, small) == {k: pytest.approx(v, rel=1e-6) for k, v in want.items()}


def test_text_mlm_follows_the_bert_rule(world):
    task, _ = task_on(world["bert-mlm"], "text-mlm", f"data={world['text']}")
    gen = torch.Generator().manual_seed(0)
    ids = task.ids["train"][0]  # [CLS] w1 .. wn [SEP]
    chosen = masked = real = 0
    for _ in range(2000):
        inputs, labels = task.mask(ids, gen)
        assert labels[0] == labels[-1] == -100 and inputs[0] == ids[0] and inputs[-1] == ids[-1]  # specials untouched
        for orig, inp, lab in zip(ids[1:-1], inputs[1:-1], labels[1:-1], strict=True):
            real += 1
            if lab != -100:
                assert lab == orig
                chosen += 1
                masked += inp == task.tok.mask_token_id
            else:
                assert inp == orig
    # 15 % chosen, raised by the one position every example gets (4-6 real tokens here); 80 % of those [MASK]
    assert 0.15 < chosen / real < 0.35
    assert masked / chosen == pytest.approx(0.8, abs=0.04)


# ---------------------------------------------------------------------------------------------------- text-classify


@pytest.fixture(scope="module")
def class_masks(world, tmp_path_factory):
    """A control mask (every class) and a removal mask (without 'animal', the output layer fixed to the control's),
    trained with a large step so that they differ."""
    out = tmp_path_factory.mktemp("cls-masks")
    data = f"data={world['cls']}"
    base = ["train", str(world["bert-cls"]), "--task", "text-classify", "--task-arg", data, "--steps", "3",
            "--batch-size", "8", "--lr", "1.0", "-q"]  # fmt: skip
    assert run([*base, "--out", str(out / "control.safetensors")]) == 0
    assert run([*base, "--task-arg", "exclude_classes=animal", "--fix-from", str(out / "control.safetensors"),
                "--out", str(out)]) == 0  # fmt: skip
    return out / "control.safetensors", out / "text-classify-without-animal.safetensors"


def test_text_classify_maps_labels_by_the_models_label2id(world):
    task, module = task_on(world["bert-cls"], "text-classify", f"data={world['cls']}")
    label2id = module.config.label2id
    assert task.by_name and task.label_names["eval"] == ["animal", "number", "color"]  # rows 3, 6, 9 ... of 30
    assert task.targets["eval"] == [label2id[name] for name in task.label_names["eval"]]
    metrics = evaluate_task(module, task)
    assert set(metrics) == {"accuracy", "accuracy_all", *(f"accuracy_class_{c}" for c in LABELS)}
    per_class = [metrics[f"accuracy_class_{c}"] for c in LABELS]
    assert metrics["accuracy"] == pytest.approx(sum(per_class) / 3)  # one eval example per class


def test_text_classify_class_subsets_name_the_task_and_say_what_they_remove(world):
    task, module = task_on(world["bert-cls"], "text-classify", f"data={world['cls']}", "classes=number")
    assert task.name == "text-classify-only-number" and task.classes_removed == ("animal", "color")
    assert set(task.label_names["train"]) == {"number"} and len(task.label_names["eval"]) == 3  # eval keeps all
    metrics = evaluate_task(module, task)
    assert metrics["accuracy"] == metrics["accuracy_class_number"]
    assert metrics["accuracy_removed"] == pytest.approx((metrics["accuracy_class_animal"] + metrics["accuracy_class_color"]) / 2)
    other, _ = task_on(world["bert-cls"], "text-classify", f"data={world['cls']}", "exclude_classes=animal,color")
    assert other.name == "text-classify-without-animal+color" and other.classes_removed == ("animal", "color")


def test_class_removal_masks_train_evaluate_and_compare(world, class_masks, capsys):
    control, removal = class_masks
    tensors_c, tensors_r = load_file(str(control)), load_file(str(removal))
    assert sorted(tensors_c) == sorted(tensors_r) and "classifier.weight" in tensors_r
    assert torch.equal(tensors_c["classifier.weight"], tensors_r["classifier.weight"])  # --fix-from: the output layer
    meta = load_masks(removal).metadata
    assert meta["task"]["name"] == "text-classify-without-animal"
    assert "accuracy_removed" in meta["metric_masked"] and "accuracy_removed" not in load_masks(control).metadata["metric_full"]

    capsys.readouterr()
    args = ["--task", "text-classify", "--task-arg", f"data={world['cls']}", "--mask", str(removal), "--json"]
    assert run(["evaluate", str(world["bert-cls"]), *args, "--task-arg", "exclude_classes=animal"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["masked"] == pytest.approx(meta["metric_masked"])  # what train measured, measured again
    assert run(["evaluate", str(world["bert-cls"]), *args]) == 0
    under_control_task = json.loads(capsys.readouterr().out)["results"][0]["masked"]

    assert run(["compare", str(control), str(removal), "--checkpoint", str(world["bert-cls"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    [entry] = data["ablation"]["class_removal"]
    assert entry["mask"] == "text-classify-without-animal" and entry["removed"] == ["animal"]
    kept = data["ablation"]["kept_metrics"]  # kept[i][j]: task j with only mask i kept; the control is task 0
    assert kept[1][0] == pytest.approx(under_control_task)
    for c in LABELS:
        want = relative_drop(kept[0][0][f"accuracy_class_{c}"], kept[1][0][f"accuracy_class_{c}"])
        assert entry["drops"][c] == pytest.approx(want, nan_ok=True)
    assert entry["removed_drop"] == pytest.approx(entry["drops"]["animal"], nan_ok=True)
    others = [entry["drops"][c] for c in ("number", "color") if not math.isnan(entry["drops"][c])]
    assert entry["largest_other_drop"] == pytest.approx(max(others) if others else float("nan"), nan_ok=True)

    assert run(["compare", str(control), str(removal), "--checkpoint", str(world["bert-cls"])]) == 0
    text = capsys.readouterr().out
    assert "Class removal" in text and "text-classify-without-animal" in text


def test_compare_rebuilds_the_tasks_from_another_directory(world, tmp_path, monkeypatch, capsys):
    here = tmp_path / "work"
    here.mkdir()
    shutil.copy(world["cls"], here / "rows.jsonl")
    monkeypatch.chdir(here)
    code, _, err = train(capsys, world["bert-cls"], "text-classify", "a.safetensors", "--task-arg", "data=rows.jsonl")
    assert code == 0, err
    assert load_masks(here / "a.safetensors").metadata["task"]["args"]["data"] == str(here / "rows.jsonl")
    shutil.copy(here / "a.safetensors", here / "b.safetensors")
    monkeypatch.chdir(tmp_path)  # rows.jsonl is not here: the mask's metadata must name it absolutely
    assert run(["compare", str(here / "a.safetensors"), str(here / "b.safetensors"), "--checkpoint",
                str(world["bert-cls"]), "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["ablation"]["tasks"] == ["text-classify#1", "text-classify#2"]


# ---------------------------------------------------------------------------------------------------- keep-outputs


def ones_and_half(module, names, folder):
    """An all-ones mask and one that removes the first half of every tensor, saved under ``folder``."""
    params = dict(module.named_parameters())
    ones = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}
    half = {n: torch.arange(params[n].numel()).reshape(params[n].shape) >= params[n].numel() // 2 for n in names}
    save_masks(folder / "ones.safetensors", ones, {})
    save_masks(folder / "half.safetensors", half, {})
    return ones, half


def test_keep_outputs_trains_on_a_bert_encoder(world, tmp_path, capsys):
    out = tmp_path / "keep.safetensors"
    code, mask, err = train(capsys, world["bert"], "keep-outputs", out, "--task-arg", f"data={world['text']}")
    assert code == 0, err
    module = load_checkpoint(world["bert"]).model
    names = [n for n, p in module.named_parameters() if "bias" not in n and "embeddings" not in n and "LayerNorm" not in n]
    assert_mask_matches(out, module, names)
    assert mask["metric_full"]["cosine"] == pytest.approx(1.0, abs=1e-5) and mask["metric_full"]["mse"] < 1e-10
    assert -1 <= mask["metric_masked"]["cosine"] <= 1


@pytest.mark.parametrize(
    "checkpoint, pairs",
    [
        ("bert", ()),  # the mean-pooled sentence embedding (sentence-transformers' pooling)
        ("bert", ("output=hidden:1", "loss=mse")),
        ("gpt2", ("output=logits", "loss=kl")),
    ],
)
def test_keep_outputs_is_exact_unmasked_and_under_an_all_ones_mask(world, tmp_path, capsys, checkpoint, pairs):
    task, module = task_on(world[checkpoint], "keep-outputs", f"data={world['text']}", *pairs)
    names = [n for n, p in module.named_parameters() if "bias" not in n and "embed" not in n and ".wte." not in n
             and ".wpe." not in n]  # fmt: skip
    ones, half = ones_and_half(module, names, tmp_path)
    for overrides in (None, masked_weights(module, ones)):
        metrics = evaluate_task(module, task, overrides)
        assert metrics["cosine"] == pytest.approx(1.0, abs=1e-5) and metrics["mse"] == pytest.approx(0.0, abs=1e-10)
        if "output=logits" in pairs:
            assert metrics["agreement"] == 1.0 and metrics["kl"] == pytest.approx(0.0, abs=1e-6)
        batch = next(task.batches("train", 8, torch.Generator().manual_seed(0)))
        loss = task.loss(MaskedModel(module, overrides or {}), batch)
        assert float(loss.detach()) == pytest.approx(0.0, abs=1e-5)
    assert evaluate_task(module, task, masked_weights(module, half))["cosine"] < 0.999  # the metric can fall

    capsys.readouterr()
    args = ["--task", "keep-outputs", *(x for p in pairs for x in ("--task-arg", p))]
    assert run(["evaluate", str(world[checkpoint]), *args, "--task-arg", f"data={world['text']}", "--mask",
                str(tmp_path / "ones.safetensors"), "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["masked"]["cosine"] == pytest.approx(1.0, abs=1e-5) == result["unmasked"]["cosine"]


@pytest.mark.parametrize("ref", ["text-mlm", "keep-outputs"])  # the two with streams of their own (masking, targets)
def test_tasks_check_passes(world, capsys, ref):
    checkpoint = {"text-mlm": "bert-mlm", "keep-outputs": "bert"}[ref]
    data = world["text"]
    capsys.readouterr()
    assert run(["tasks", "--check", ref, "--task-arg", f"data={data}", "--checkpoint", str(world[checkpoint])]) == 0
    assert "2 mask steps" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- data formats


def write_format(rows, path):
    """``rows`` (dicts of text and label) as the file format ``path``'s suffix names (or a datasets folder)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif path.suffix in (".csv", ".tsv"):
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, ["text", "label"], delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        pa = pytest.importorskip("pyarrow")
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        datasets = pytest.importorskip("datasets")
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json", "rows.csv", "rows.tsv", "rows.parquet", "rows-dataset"])
def test_every_format_gives_the_same_task(world, tmp_path, name):
    path = write_format(world["rows"], tmp_path / name)
    reference, module = task_on(world["bert-cls"], "text-classify", f"data={world['cls']}")
    task, _ = task_on(world["bert-cls"], "text-classify", f"data={path}")
    assert task.ids == reference.ids and task.targets == reference.targets
    assert evaluate_task(module, task) == evaluate_task(module, reference)


def test_a_txt_file_is_one_example_per_non_blank_line(world, tmp_path):
    path = tmp_path / "gaps.txt"
    path.write_text("\n".join(f"  {line}  \n" for line in animal_lines(10)), encoding="utf-8")  # blank lines between
    task, _ = task_on(world["gpt2"], "text-lm", f"data={path}", "holdout=5")
    assert len(task.ids["train"]) == 8 and len(task.ids["eval"]) == 2 and all(len(i) == 4 for i in task.ids["eval"])


def test_a_datasets_folder_evaluates_on_its_validation_split(world, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = world["rows"]
    dd = datasets.DatasetDict(train=datasets.Dataset.from_list(rows[:24]), validation=datasets.Dataset.from_list(rows[24:]))
    dd.save_to_disk(str(tmp_path / "dd"))
    task, _ = task_on(world["bert-cls"], "text-classify", f"data={tmp_path / 'dd'}")
    assert len(task.ids["train"]) == 24 and task.label_names["eval"] == [r["label"] for r in rows[24:]]


def test_csv_quoting_byte_order_mark_and_raw_quotes_in_tsv(world, tmp_path):
    from maskprobe.builtin.data import read_records

    csv_path = tmp_path / "q.csv"
    csv_path.write_bytes(b'\xef\xbb\xbftext,label\n"the cat, again\nruns",animal\nthe dog runs,animal\n')  # Excel's BOM
    records = read_records(csv_path)
    assert records.columns == {"text": ["the cat, again\nruns", "the dog runs"], "label": ["animal", "animal"]}
    tsv_path = tmp_path / "q.tsv"
    tsv_path.write_text('text\tlabel\nthe "cat runs\tanimal\nthe dog" runs\tanimal\n', encoding="utf-8")
    assert read_records(tsv_path).columns["text"] == ['the "cat runs', 'the dog" runs']


# ---------------------------------------------------------------------------------------------------- bad input


def bad_cases(w):
    root, text, cls = w["root"], w["text"], w["cls"]
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 4)
    (root / "plant.jsonl").write_text("".join(json.dumps({"text": t, "label": "plant"}) + "\n" for t in animal_lines(6)))
    (root / "sentence.csv").write_text("sentence,label\n" + "".join(f"{t},animal\n" for t in animal_lines(6)))
    (root / "nolabel.jsonl").write_text('{"text": "the cat runs"}\n' * 4)
    (root / "broken.parquet").write_bytes(b"PAR1 not really")
    notok = root / "gpt2-notok"
    if not notok.exists():
        notok.mkdir()
        for f in ("config.json", "model.safetensors"):
            shutil.copy(w["gpt2"] / f, notok / f)
    one = write_lines(root / "one.txt", ["the cat runs"])
    return {
        "no data": (["gpt2", "text-lm"], "needs --task-arg data=FILE"),
        "missing file": (["gpt2", "text-lm", f"data={root / 'nope.txt'}"], "data file not found"),
        "wrong column": (["bert-cls", "text-classify", f"data={root / 'sentence.csv'}"],
                         "has no column 'text' (columns: sentence, label)"),
        "no label": (["bert-cls", "text-classify", f"data={root / 'nolabel.jsonl'}"], "no column 'label'"),
        "not utf-8": (["gpt2", "text-lm", f"data={root / 'latin1.txt'}"], "is not UTF-8 text"),
        "unknown label": (["bert-cls", "text-classify", f"data={root / 'plant.jsonl'}"],
                          "label 'plant' is not one of the model's labels"),
        "unknown class": (["bert-cls", "text-classify", f"data={cls}", "exclude_classes=plant"], "class 'plant' is not a label"),
        "no lm head": (["bert", "text-lm", f"data={text}"], "BertModel is not a causal language model"),
        "masked lm as lm": (["bert-mlm", "text-lm", f"data={text}"], "BertForMaskedLM is not a causal language model"),
        "lm as classifier": (["gpt2", "text-classify", f"data={cls}"], "is not a sequence classifier"),
        "no mask token": (["gpt2", "text-mlm", f"data={text}"], "has no mask token"),
        "no logits": (["bert", "keep-outputs", f"data={text}", "output=logits"], "has no logits"),
        "hidden layer": (["bert", "keep-outputs", f"data={text}", "output=hidden:9"], "hidden states 0..2"),
        "hf folder without tokenizer": (["gpt2-notok", "text-lm", f"data={text}"], "no tokenizer could be loaded"),
        "weights-only file without tokenizer": (["lstm", "text-lm", f"data={text}"],
                                                "give a tokenizer folder with --task-arg tokenizer=DIR"),
        "tokenizer folder missing": (["gpt2", "text-lm", f"data={text}", f"tokenizer={root / 'nowhere'}"],
                                     "tokenizer folder not found"),
        "damaged parquet": (["gpt2", "text-lm", f"data={root / 'broken.parquet'}"], "is not a readable parquet file"),
        "one line only": (["gpt2", "text-lm", f"data={one}"], "at least 2 are needed"),
        "chunk too long": (["gpt2", "text-lm", f"data={text}", "chunk=64"], "longer than the model's 32 positions"),
    }  # fmt: skip


BAD_CASES = ["no data", "missing file", "wrong column", "no label", "not utf-8", "unknown label", "unknown class",
             "no lm head", "masked lm as lm", "lm as classifier", "no mask token", "no logits", "hidden layer",
             "hf folder without tokenizer", "weights-only file without tokenizer", "tokenizer folder missing",
             "damaged parquet", "one line only", "chunk too long"]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_and_exit_2(world, tmp_path, capsys, case):
    (checkpoint, ref, *pairs), expected = bad_cases(world)[case]
    model = ["--model", LSTM_MODEL] if checkpoint == "lstm" else []
    path = world[checkpoint] if checkpoint in world else world["root"] / checkpoint
    capsys.readouterr()
    code = run(["train", str(path), "--task", ref, *(x for p in pairs for x in ("--task-arg", p)), *model,
                "--out", str(tmp_path / "m.safetensors"), *FAST])  # fmt: skip
    err = capsys.readouterr().err
    assert code == BAD, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("maskprobe: error: "), err
    assert expected in lines[0] and "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()
