"""Every file maskprobe writes appears whole or not at all, even when the writer is SIGKILLed mid-write.

The subprocess tests stop a real writer at a known point inside the write (a marker file says "the
temporary file is half written" or "fully written but not yet renamed"), kill it with SIGKILL, and check
that the destination is either absent or still holds its previous bytes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from maskprobe.atomic import atomic_write, check_writable
from maskprobe.errors import BadInputError
from maskprobe.masks.maskfile import load_masks, save_masks

PACKAGE = Path(__file__).resolve().parents[1] / "maskprobe"

HALF_WRITTEN = """
    from maskprobe.atomic import atomic_write
    def slow(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"PARTIAL" * 1000)
            fh.flush()
            open(MARKER, "w").close()
            time.sleep(60)
    atomic_write(TARGET, slow)
"""

# the real mask writer, stopped after safetensors has written the whole temporary file, before the rename
MASK_WRITTEN_NOT_RENAMED = """
    import safetensors.torch as st
    import torch
    from maskprobe.masks.maskfile import save_masks
    real = st.save_file
    def save_then_stall(*args, **kwargs):
        real(*args, **kwargs)
        open(MARKER, "w").close()
        time.sleep(60)
    st.save_file = save_then_stall
    save_masks(TARGET, {"w": torch.zeros(1000, 1000, dtype=torch.bool)}, {"task": {"name": "new"}})
"""


def kill_mid_write(tmp_path: Path, body: str, target: Path) -> None:
    marker = tmp_path / "marker"
    script = f"import time\nTARGET, MARKER = {str(target)!r}, {str(marker)!r}\n" + textwrap.dedent(body)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"writer ended early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("writer never reached the marker")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("body", [HALF_WRITTEN, MASK_WRITTEN_NOT_RENAMED], ids=["half-written", "written-not-renamed"])
def test_sigkill_mid_write_leaves_no_partial_file(tmp_path, body, existing):
    target = tmp_path / "out" / "m.safetensors"
    if existing:
        save_masks(target, {"w": torch.ones(3, dtype=torch.bool)}, {"task": {"name": "old"}})
        before = target.read_bytes()
    kill_mid_write(tmp_path, body, target)
    if existing:
        assert target.read_bytes() == before
        assert load_masks(target).metadata["task"]["name"] == "old"
    else:
        assert not target.exists()
    # what a SIGKILL can leave is a hidden temporary, never something with the destination's name
    names = [p.name for p in target.parent.iterdir() if p.name != target.name]
    assert all(re.fullmatch(r"\.m\.safetensors\..+\.tmp", n) for n in names), names


def test_an_exception_mid_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(BadInputError, match="disk on fire"):  # a writer's failure is a one-line BadInputError (issue 14)
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_write_errors_are_one_line_bad_input(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(BadInputError, match="it is a folder"):
        save_masks(tmp_path / "dir.safetensors", {"w": torch.ones(2, dtype=torch.bool)})
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="not a folder"):
        check_writable(tmp_path / "file" / "sub" / "m.safetensors")
    with pytest.raises(BadInputError, match="cannot write"):
        save_masks(tmp_path / "file" / "m.safetensors", {"w": torch.ones(2, dtype=torch.bool)})
    check_writable(tmp_path / "new" / "deeper" / "m.safetensors")
    assert not (tmp_path / "new").exists(), "the check creates nothing"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_folder_is_refused_up_front(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(BadInputError, match="no permission"):
            check_writable(ro / "m.safetensors")
    finally:
        ro.chmod(0o700)


WRITE_CALL = re.compile(
    r"\b(torch\.save|save_file|savefig|write_text|write_bytes|to_csv|json\.dump)\(|open\([^)]*['\"][wa]b?['\"]"
)


def test_every_writer_in_the_package_goes_through_atomic():
    """A guard for new code: a direct write in the package must sit inside an atomic_write callback."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "atomic.py":
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if WRITE_CALL.search(line) and "atomic" not in line and "lambda tmp" not in line and "(tmp" not in line:
                if line.lstrip().startswith(("#", '"', "'")) or "import" in line:
                    continue
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{no}: {line.strip()}")
    assert not offenders, "non-atomic writes:\n" + "\n".join(offenders)
