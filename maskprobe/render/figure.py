"""What every figure of ``compare --plot`` shares: sizes, colours, the matplotlib import (optional extra ``plot``),
an atomic PNG write, file-name slugs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import BadInputError

DPI = 150
FIGSIZE = {"overlap": (7.0, 3.2), "density": (7.0, 3.2), "drops": (7.5, 3.0), "kept": (6.4, 4.2), "kind": (10.0, 6.0)}
# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and in greyscale print
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MAX_KEPT_NUMEL = 1 << 24  # kept-weights images for matrices up to 16M weights (each is read whole)
MAX_PIXELS = 512  # per side of a kept-weights image; larger matrices are averaged over blocks


def require_matplotlib() -> None:
    """Raises BadInputError (exit 2) with the install line when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BadInputError("--plot needs matplotlib: pip install 'maskprobe[plot]'") from None


def pyplot() -> Any:  # matplotlib.pyplot, imported only here (optional extra)
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (also on a head-less CI runner)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "axes.grid.axis": "y",
            "grid.alpha": 0.3,
            "legend.frameon": False,
        }
    )
    return plt


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def save(fig: Any, path: Path) -> Path:
    from ..atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
