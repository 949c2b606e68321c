"""A PNG of a training run: losses per level over steps, curriculum phases shaded."""

from __future__ import annotations

import json
from pathlib import Path


def plot_training(metrics_path: Path, out: Path, boundaries: list[float], total_steps: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    b1, b2 = boundaries[0] * total_steps, boundaries[1] * total_steps
    for a in (ax, ax2):
        for lo, hi, name, color in ((0, b1, "phase 1", "#e8f0fe"), (b1, b2, "phase 2", "#fef7e0"),
                                    (b2, total_steps, "phase 3", "#e6f4ea")):
            if hi > lo:
                a.axvspan(lo, hi, color=color, zorder=0)
                if a is ax:
                    a.text((lo + hi) / 2, 1.0, name, transform=a.get_xaxis_transform(), ha="center", va="bottom",
                           fontsize=8)
    steps = [r["step"] for r in rows]
    for key in ("loss/bc", "loss/traj", "loss/step", "loss/group", "loss"):
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(steps, [float("nan") if y is None else y for y in ys], label=key, lw=2 if key == "loss" else 1)
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax2.plot(steps, [r.get("group_pool", 0) for r in rows], color="tab:purple", label="group pairs eligible")
    ax2.set_ylabel("group pool")
    ax2.set_xlabel("optimizer step")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
