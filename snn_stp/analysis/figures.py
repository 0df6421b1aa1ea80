"""Writing figures to files: pyplot with the file-only backend selected (``plt``: the modules that
draw import it from here, so the backend is chosen before any figure exists), and the one helper
every figure is saved with.

Its own module so that the per-run plots (:mod:`.plots`, which also writes the Pareto figure) and
the Pareto figures and tables (:mod:`.pareto`) both import it at the top, and the dependency between
those two goes one way only: plots imports pareto, never the reverse.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, folder: Path, name: str) -> list[Path]:
    """Write ``fig`` as ``folder/name.png`` and ``folder/name.pdf`` (``folder`` made if missing) and
    close it; returns the two paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths
