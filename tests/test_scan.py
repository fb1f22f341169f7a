"""SCAN sample tasks: the grammar, the splits, both models, and mask training through the engine."""

from __future__ import annotations

import itertools

import pytest
import torch

from maskprobe.learning.training import TrainConfig, train_mask
from maskprobe.masks.maskfile import load_masks
from maskprobe.tasks import TaskRef
from maskprobe.testing import check_task
from sample_tasks import scan_data
from sample_tasks.scan import ScanJumpTask, ScanLengthTask, ScanSimpleTask, ScanTurnLeftTask, main, sequence_loss

TINY = {"hidden": 16, "layers": 2, "embedding": 8, "heads": 2, "ff": 32}
MODELS = ("lstm", "transformer")


def acts(command: str) -> str:
    return " ".join(scan_data.interpret(command))


def test_grammar_has_the_20910_commands_with_their_actions():
    cmds = scan_data.commands()
    assert len(cmds) == scan_data.N_COMMANDS == 20910
    assert len({c for c, _ in cmds}) == 20910
    assert acts("jump twice after walk left") == "I_TURN_LEFT I_WALK I_JUMP I_JUMP"
    assert acts("jump opposite left and walk thrice") == "I_TURN_LEFT I_TURN_LEFT I_JUMP I_WALK I_WALK I_WALK"
    assert acts("jump opposite left after walk around left") == " ".join(
        ["I_TURN_LEFT", "I_WALK"] * 4 + ["I_TURN_LEFT", "I_TURN_LEFT", "I_JUMP"]
    )
    assert acts("turn left twice") == "I_TURN_LEFT I_TURN_LEFT"
    assert acts("turn around right") == "I_TURN_RIGHT I_TURN_RIGHT I_TURN_RIGHT I_TURN_RIGHT"
    assert acts("look opposite right") == "I_TURN_RIGHT I_TURN_RIGHT I_LOOK"
    assert len(scan_data.interpret("run around right thrice")) == 24
    lengths = {len(a) for _, a in cmds}
    assert min(lengths) == 1 and max(lengths) == 48 and 23 not in lengths
    assert max(len(c.split()) for c, _ in cmds) == scan_data.MAX_WORDS == 9
    with pytest.raises(KeyError):
        scan_data.interpret("jump jump")


def test_vocabularies_and_encoding():
    assert len(scan_data.IN_TOKENS) == 15 and scan_data.IN_TOKENS[:2] == ("<pad>", "<eos>")
    assert scan_data.OUT_TOKENS == ("<eos>", *scan_data.ACTIONS, "<sos>") and scan_data.N_CLASSES == 7
    i = [c for c, _ in scan_data.commands()].index("jump twice after walk left")
    src, tgt = scan_data.batch(torch.tensor([i]))
    words = ["jump", "twice", "after", "walk", "left"]
    assert src[0].tolist() == [scan_data.IN_TOKENS.index(w) for w in words] + [scan_data.SRC_EOS]
    assert tgt[0].tolist() == [scan_data.OUT_TOKENS.index(a) for a in acts("jump twice after walk left").split()] + [0]
    assert scan_data.decode_actions(tgt) == [acts("jump twice after walk left")]
    src, tgt = scan_data.batch(torch.tensor([i, 0]))  # trimmed to the longer one, padded
    assert src.shape == (2, 6) and tgt.shape[1] == max(5, len(scan_data.commands()[0][1]) + 1)


def test_split_rules():
    cmds = scan_data.commands()
    sizes = {"simple": (16728, 4182), "jump": (13204, 7706), "turn_left": (19702, 1208), "length": (16990, 3920)}
    for split, (n_train, n_test) in sizes.items():
        train, test = scan_data.split_indices(split)
        assert (len(train), len(test)) == (n_train, n_test), split
        assert len(set(train.tolist()) | set(test.tolist())) == 20910  # a partition of all commands
    train, test = scan_data.split_indices("jump")
    train_cmds = [cmds[i][0] for i in train.tolist()]
    assert [c for c in train_cmds if "jump" in c.split()] == ["jump"]
    assert all("jump" in cmds[i][0].split() for i in test.tolist())
    train, test = scan_data.split_indices("turn_left")
    train_cmds = {cmds[i][0] for i in train.tolist()}
    assert "turn left" in train_cmds and "turn opposite left" in train_cmds and "walk left" in train_cmds
    assert "turn left twice" not in train_cmds and all("turn left" in cmds[i][0] for i in test.tolist())
    train, test = scan_data.split_indices("length")
    assert max(len(cmds[i][1]) for i in train.tolist()) == 22
    assert {len(cmds[i][1]) for i in test.tolist()} == {24, 25, 26, 27, 28, 30, 32, 33, 36, 40, 48}
    a, b = scan_data.split_indices("simple", 0), scan_data.split_indices("simple", 1)
    assert torch.equal(a[1], scan_data.split_indices("simple", 0)[1]) and not torch.equal(a[1], b[1])


def test_tasks_draw_train_from_the_train_set_and_eval_from_the_test_set():
    task = ScanJumpTask(eval_size=0, **TINY)
    gen = torch.Generator().manual_seed(3)
    first = list(itertools.islice(task.batches("train", 32, gen), 2))
    again = list(itertools.islice(task.batches("train", 32, torch.Generator().manual_seed(3)), 2))
    assert all(torch.equal(x, y) for b1, b2 in zip(first, again, strict=True) for x, y in zip(b1, b2, strict=True))
    jump = scan_data.IN_TOKENS.index("jump")
    for src, _ in first:  # no "jump" in train but the bare command
        has = (src == jump).any(1)
        assert all((row != scan_data.SRC_PAD).sum() == 2 for row in src[has])
    ev = list(task.batches("eval", 2048, gen))
    assert sum(len(s) for s, _ in ev) == 7706 and all(bool((s == jump).any(1).all()) for s, _ in ev)
    capped = ScanLengthTask(eval_size=100, **TINY)
    e1 = list(capped.batches("eval", 64, torch.Generator().manual_seed(0)))
    e2 = list(capped.batches("eval", 64, torch.Generator().manual_seed(0)))
    assert [len(s) for s, _ in e1] == [64, 36] and all(torch.equal(a[1], b[1]) for a, b in zip(e1, e2, strict=True))
    assert all(int((t >= 0).sum(1).min()) >= 25 for _, t in e1)  # 24..48 actions + <eos>
    on_train = ScanLengthTask(eval_size=0, eval_on="train", **TINY)
    assert sum(len(s) for s, _ in on_train.batches("eval", 4096, gen)) == 16990
    assert len(ScanTurnLeftTask(eval_on="simple_test", **TINY).eval_idx) == 4182
    with pytest.raises(ValueError):
        ScanSimpleTask(eval_on="valid")


def test_sizes_presets_and_overrides():
    assert ScanSimpleTask(model="lstm", size="paper").arch == {
        "hidden": 200, "layers": 2, "embedding": 16, "heads": 0, "ff": 0, "dropout": 0.5
    }  # fmt: skip
    paper = ScanSimpleTask(model="transformer", size="paper").build_model()
    assert paper.output.weight.shape == (7, 100) and len(paper.encoder) == len(paper.decoder) == 3
    assert paper.decoder[0].linear1.weight.shape == (200, 100) and paper.decoder[0].self_attn.heads == 4
    lstm = ScanSimpleTask(model="lstm", size="paper").build_model()
    assert lstm.encoder.num_layers == 2 and lstm.encoder.hidden_size == 200 and lstm.in_embedding.weight.shape == (15, 16)
    assert ScanSimpleTask(model="lstm", hidden=40).build_model().encoder.hidden_size == 40


@pytest.mark.parametrize("model", MODELS)
def test_forward_shapes_and_greedy_matches_teacher_forcing(model):
    torch.manual_seed(0)
    task = ScanSimpleTask(model=model, **TINY)
    net = task.build_model().eval()
    src, tgt = next(task.batches("train", 8, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        logits = net(src, tgt)
        pred = net(src, max_len=tgt.shape[1])
        again = net(src, pred).argmax(-1)  # greedy = argmax of teacher forcing on its own output
    assert logits.shape == (*tgt.shape, 7) and pred.shape == tgt.shape and pred.dtype == torch.int64
    assert torch.equal(pred, again)
    with torch.no_grad():
        assert float(task.loss(net, (src, tgt))) == pytest.approx(float(sequence_loss(logits, tgt)))


@pytest.mark.parametrize("model", MODELS)
def test_greedy_decoding_of_a_model_trained_on_one_example(model):
    torch.manual_seed(0)
    task = ScanSimpleTask(model=model, hidden=32, layers=1, embedding=8, heads=2, ff=32, dropout=0.0)
    net = task.build_model()
    i = [c for c, _ in scan_data.commands()].index("jump twice after walk left")
    src, tgt = scan_data.batch(torch.tensor([i]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        task.loss(net, (src, tgt)).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        m = task.evaluate(net, [(src, tgt)])
        assert m["accuracy"] == 1.0 and m["token_accuracy"] == 1.0 and m["loss"] < 0.5
        assert scan_data.decode_actions(net(src, max_len=8)) == ["I_TURN_LEFT I_WALK I_JUMP I_JUMP"]


@pytest.mark.parametrize("model", MODELS)
def test_mask_steps_move_the_logits_and_leave_embeddings_alone(model):
    task = ScanJumpTask(model=model, eval_size=32, **TINY)
    torch.manual_seed(0)
    net = task.build_model()
    config = TrainConfig(steps=3, batch_size=16, eval_batch_size=64, log_every=1, seed=0)
    result = train_mask(net, task, TaskRef("scan-jump", {"model": model}), config)
    logits = result.state.logits
    assert not any("embedding" in n for n in logits)
    assert {n for n in logits if n.startswith("output.")} == {"output.weight"}  # biases unmasked
    moved = {n for n, t in logits.items() if (t != 2.0).any()}
    assert moved == set(logits), set(logits) - moved  # the gradient reached every masked tensor
    step = max(float((t - 2.0).abs().max()) for t in logits.values())
    assert 0.02 < step <= 3 * config.lr * 1.05  # 3 Adam steps of about lr each
    assert 0.0 <= result.metric_masked["accuracy"] <= 1.0 and result.final_loss > 0


@pytest.mark.parametrize("model", MODELS)
def test_train_a_mask_through_the_cli(tmp_path, model):
    from maskprobe.cli import run

    torch.manual_seed(0)
    task = ScanSimpleTask(model=model, **TINY)
    ckpt = tmp_path / "scan.pt"
    torch.save(task.build_model().state_dict(), ckpt)
    args = [f"model={model}", *(f"{k}={v}" for k, v in TINY.items()), "eval_size=16"]
    out = tmp_path / "m.safetensors"
    argv = ["train", str(ckpt), "--task", "scan-length", "--steps", "2", "--batch-size", "8", "--out", str(out)]
    argv += ["--exclude", "*.bias_*"]  # nn.LSTM's biases (see docs/plugins.md, SCAN)
    assert run([*argv, *(x for a in args for x in ("--task-arg", a))]) == 0
    masks = load_masks(out).masks
    expected = {
        n
        for n, p in task.build_model().named_parameters()
        if "embedding" not in n and not n.rsplit(".", 1)[-1].startswith("bias") and ".norm" not in n
    }  # norm gains are not masked by default (docs/method.md)
    assert set(masks) == expected and all(m.dtype == torch.bool for m in masks.values())


@pytest.mark.parametrize("model", MODELS)
def test_contract_check_passes(model):
    report = check_task(ScanTurnLeftTask(model=model, eval_size=16, **TINY))
    assert report.ok, report.problems


def test_base_training_command_line(tmp_path, capsys):
    out = tmp_path / "b.pt"
    main(["--model", "lstm", "--out", str(out), "--steps", "2", "--hidden", "8", "--layers", "1", "--eval-size", "8"])
    sd = torch.load(out, weights_only=True)
    assert sd["encoder.weight_hh_l0"].shape == (32, 8) and sd["output.weight"].shape == (7, 8)
    text = capsys.readouterr().out
    assert "step 2 loss" in text and "simple-split test: accuracy" in text


def test_base_recipe_is_the_one_fitting_routine(tmp_path):
    from maskprobe.learning.fitting import Recipe, fit

    task = ScanSimpleTask(model="lstm", hidden=8, layers=1, embedding=4, eval_size=8)
    assert task.base_recipe() == Recipe(steps=2000, batch_size=128, lr=3e-3, schedule="constant", clip=5.0)
    assert ScanJumpTask(model="transformer").base_recipe() == task.base_recipe()
    out = tmp_path / "b.pt"
    main(["--model", "lstm", "--out", str(out), "--steps", "3", "--batch-size", "16", "--lr", "0.01", "--eval-size", "8",
          "--device", "cpu"])  # fmt: skip
    main_sd = torch.load(out, weights_only=True)  # the command line = fit() with the recipe and its overrides
    direct = fit(ScanSimpleTask(model="lstm"), Recipe(steps=3, batch_size=16, lr=0.01, schedule="constant", clip=5.0))
    assert all(torch.equal(main_sd[k], v) for k, v in direct.state_dict().items())
