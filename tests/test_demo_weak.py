"""The demo's story names a mask that keeps much less of its own task than the unmasked network (issue 21 item 8:
the mul mask kept 57.9 % of mul accuracy and the output said nothing)."""

from __future__ import annotations

from maskprobe.commands.demo import _story, weak_masks


def _report(kept_mul: float) -> dict:
    full = [1.0, 0.95]
    kept = [[0.99, 0.3], [0.1, kept_mul]]
    square = [[0.0, 0.0], [0.0, 0.0]]
    return {
        "ablation": {"full": full, "kept": kept, "exclusive": square, "control_exclusive": square},
        "scores": {"p_specialize": 0.5, "p_specialize_control": 0.0, "p_reuse": 0.1},
    }


def test_a_weak_mask_is_one_line_of_the_story():
    story = _story(_report(0.579))
    notes = [line for line in story.splitlines() if "note:" in line]
    assert len(notes) == 1 and "the mul mask alone keeps mul at 57.9% of 95.0% unmasked (61%)" in notes[0]
    assert "more --steps or a smaller --beta" in notes[0]


def test_masks_that_keep_their_task_are_not_named():
    assert "note:" not in _story(_report(0.94))
    assert weak_masks([1.0, 0.95], [[0.9, 0.0], [0.0, 0.855]], ("add", "mul")) == []  # exactly 90 %: not weak
    assert weak_masks([0.0, 1.0], [[0.0, 0.0], [0.0, 1.0]], ("add", "mul")) == []  # nothing to keep
