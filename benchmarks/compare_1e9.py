"""Compare two masks of 1e9 parameters (8 tensors) written on the fly: seconds for plain bool files, for
packed-bit files, and for a plain numpy stream (the baseline), all measured in this run.

    python benchmarks/compare_1e9.py [--numel 1e9] [--tensors 8] [--repeat 3] [--dir /tmp]

Needs about 2.25 GB of free disk (two 1 GB bool files and two 125 MB packed files, deleted afterwards) and
~1 GB of RAM. Each timing is the best of --repeat runs after one warm-up read, so the files are in the page
cache: what is measured is the counting, not the disk. The baseline is the obvious numpy code: safe_open,
then ``count_nonzero(a & b)`` and ``count_nonzero(a | b)`` per tensor.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def write_pair(folder: Path, numel: int, tensors: int, pack: bool) -> list[Path]:
    """Two masks of densities ~0.3 and ~0.2, written tensor by tensor so that RAM stays ~numel/tensors."""
    from safetensors.numpy import save_file

    from maskprobe.masks.maskfile import encode_metadata

    rng = np.random.default_rng(0)
    per = numel // tensors
    paths = []
    for k, density in enumerate((0.3, 0.2)):
        arrays, shapes = {}, {}
        for t in range(tensors):
            # random bytes thresholded: fast to make, and no structure a counter could exploit
            m = rng.integers(0, 256, size=per, dtype=np.uint8) < int(256 * density)
            shapes[f"layers.{t}.weight"] = [per // 1000, 1000]
            arrays[f"layers.{t}.weight"] = np.packbits(m, bitorder="little") if pack else m.reshape(per // 1000, 1000)
        meta = {"task": {"name": f"task{k}"}}
        if pack:
            meta["packed"] = {"bitorder": "little", "shapes": shapes}
        path = folder / f"mask{k}{'-packed' if pack else ''}.safetensors"
        save_file(arrays, str(path), metadata=encode_metadata(meta))
        del arrays
        paths.append(path)
    return paths


def baseline(paths: list[Path]) -> tuple[int, int]:
    from safetensors import safe_open

    inter = union = 0
    with safe_open(str(paths[0]), "numpy") as fa, safe_open(str(paths[1]), "numpy") as fb:
        for name in fa.keys():
            a, b = fa.get_tensor(name), fb.get_tensor(name)
            inter += int(np.count_nonzero(a & b))
            union += int(np.count_nonzero(a | b))
    return inter, union


def best(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up: page cache, imports
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=float, default=1e9)
    ap.add_argument("--tensors", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write the files (default: the system temp dir)")
    args = ap.parse_args()
    from maskprobe.measure.analysis import overlap

    numel, tensors = int(args.numel), args.tensors
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}")
    print(f"two masks of {numel:,} weights in {tensors} tensors")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        plain = write_pair(folder, numel, tensors, pack=False)
        packed = write_pair(folder, numel, tensors, pack=True)
        print(
            f"written in {time.perf_counter() - t0:.1f} s: {plain[0].stat().st_size / 1e9:.2f} GB per bool file, "
            f"{packed[0].stat().st_size / 1e9:.3f} GB per packed file"
        )
        t_base, (inter, union) = best(lambda: baseline(plain), args.repeat)
        t_bool, ov_bool = best(lambda: overlap(plain), args.repeat)
        t_one, _ = best(lambda: overlap(plain, workers=1), args.repeat)
        t_pack, ov_pack = best(lambda: overlap(packed), args.repeat)
        for ov in (ov_bool, ov_pack):
            assert ov.total.intersection[0][1] == inter, "counts disagree with the baseline"
            assert ov.total.counts[0] + ov.total.counts[1] - inter == union, "union disagrees with the baseline"
        print(f"IoU {inter / union:.4f} (all three agree)")
        print(f"numpy stream (baseline):      {t_base:.3f} s")
        print(f"maskprobe, bool files:        {t_bool:.3f} s  ({t_base / t_bool:.1f}x the baseline)")
        print(f"maskprobe, bool, one thread:  {t_one:.3f} s  ({t_base / t_one:.1f}x the baseline)")
        print(f"maskprobe, packed-bit files:  {t_pack:.3f} s  ({t_base / t_pack:.1f}x the baseline)")


if __name__ == "__main__":
    main()
