"""``maskprobe demo``: the paper's addition/multiplication experiment on a small FNN, end to end.

1. train a ReLU FNN (42-hidden-20) on both operations (Adam 1e-3, batch 128);
2. learn the ``arith-add`` and ``arith-mul`` masks on the frozen network;
3. compare them: overlap per layer, removals (inverted, exclusive, random controls), P_specialize, P_reuse.

Everything lands in ``--out`` so each step can be rerun with the ordinary commands it prints.
"""

from __future__ import annotations

import time


def _check_outputs(out, hidden: str, force: bool) -> None:
    """Refuse before any work: malformed --hidden, --out that is a file, an earlier demo's files without --force."""
    from ..errors import BadInputError

    parts = [h.strip() for h in hidden.split(",")]
    if not parts or not all(h.isdigit() and int(h) > 0 for h in parts):
        raise BadInputError(f"--hidden must be comma-separated positive sizes like 256,256, got {hidden!r}")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} exists and is not a folder")
    existing = [p for p in (out / "addmul.pt", out / "arith-add.safetensors", out / "arith-mul.safetensors") if p.exists()]
    if existing and not force:
        raise BadInputError(f"{existing[0]} exists; pass --force to overwrite the earlier demo or choose another --out")


def run_demo(*, out, hidden, base_steps, steps, beta, seed, device, json_out, quiet, force=False) -> None:
    import torch

    from ..ablation import ablate
    from ..analysis import overlap
    from ..atomic import atomic_write
    from ..checkpoints import Checkpoint, sha256_of
    from ..cli import _stderr, _stdout
    from ..devices import resolve_device
    from ..fitting import fit
    from ..maskfile import save_masks
    from ..progress import TrainProgress, status_line
    from ..render import ablation_tables, compare_json, dumps, overlap_table, pct, scores_table
    from ..tasks import load_task
    from ..training import TrainConfig, evaluate_task, train_mask

    err = _stderr()
    say = status_line(err, quiet)
    dev = resolve_device(device)
    _check_outputs(out, hidden, force)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    args = {"hidden": hidden}
    base_task, _ = load_task("arith-both", args)
    say(f"[1/3] training the base network {42}-{hidden.replace(',', 'x')}-20 on add+mul for {base_steps} steps")
    model = fit(
        base_task,
        base_task.base_recipe().with_steps(base_steps),
        seed=seed,
        callback=None if quiet else (lambda s, loss: say(f"  base step {s}/{base_steps} loss {loss:.4f}")),
    )
    ckpt_path = out / "addmul.pt"
    atomic_write(ckpt_path, lambda tmp: torch.save(model.state_dict(), tmp))
    base_acc = evaluate_task(model, base_task)["accuracy"]
    say(f"  saved {ckpt_path}; accuracy on add+mul {pct(base_acc)} ({time.perf_counter() - t_start:.0f} s)")
    ckpt = Checkpoint(model, ckpt_path, "torch-zip", sha256_of(ckpt_path))

    config = TrainConfig(steps=steps, beta=beta, seed=seed, device=str(dev))
    paths, results = [], []
    for i, name in enumerate(("arith-add", "arith-mul")):
        task, ref = load_task(name, args)
        say(f"[2/3] mask {i + 1}/2: {name}, {steps} steps, beta {beta}")
        with TrainProgress(err, name, steps, quiet=quiet) as cb:
            res = train_mask(model, task, ref, config, callback=cb)
        path = out / f"{name}.safetensors"
        save_masks(path, res.masks, res.metadata(ckpt.to_dict()))
        say(
            f"  saved {path}: density {pct(res.density()['total'])}, accuracy {pct(res.metric_full['accuracy'])} "
            f"unmasked, {pct(res.metric_masked['accuracy'])} with the mask"
        )
        paths.append(path)
        results.append(res)

    say("[3/3] comparing the masks and running the removals")
    order = [n for n, _ in model.named_parameters()]
    ov = overlap(paths, order=order)
    ab = ablate(model, [r.task for r in results], [r.masks for r in results], device=dev, seed=seed)
    elapsed = time.perf_counter() - t_start
    stdout = _stdout()
    if json_out:
        stdout.out(dumps({**compare_json(ov, ab), "elapsed_s": elapsed, "checkpoint": str(ckpt_path)}))
        return
    stdout.print(overlap_table(ov))
    for t in ablation_tables(ab):
        stdout.print(t)
    stdout.print(scores_table(ab))
    full = ab.full
    ex = ab.exclusive
    ce = ab.control_exclusive
    stdout.print(
        "\n[bold]What it shows[/bold] (accuracy, full network: add {}, mul {}):\n"
        "  removing the weights only the add mask uses: add {}, mul {}   (random removal of as many: add {}, mul {})\n"
        "  removing the weights only the mul mask uses: add {}, mul {}   (random removal of as many: add {}, mul {})\n"
        "  P_specialize = {:.3f} (control {:.3f}); P_reuse = {:.3f}.  Paper (2000x4 FNN): specialised, little reuse.\n".format(
            pct(full[0]),
            pct(full[1]),
            pct(ex[0][0]),
            pct(ex[0][1]),
            pct(ce[0][0]),
            pct(ce[0][1]),
            pct(ex[1][0]),
            pct(ex[1][1]),
            pct(ce[1][0]),
            pct(ce[1][1]),
            ab.scores()["p_specialize"],
            ab.scores()["p_specialize_control"],
            ab.scores()["p_reuse"],
        )
    )
    stdout.print(
        f"Done in {elapsed:.0f} s. Rerun the comparison yourself:\n"
        f"  maskprobe compare {paths[0]} {paths[1]} --checkpoint {ckpt_path}\n"
        f"  maskprobe inspect {paths[0]}"
    )
