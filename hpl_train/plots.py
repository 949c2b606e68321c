"""A PNG of a training run: losses per level, the group pool and held-out evaluation over steps,
curriculum phases shaded."""

from __future__ import annotations

import json
from pathlib import Path


def plot_training(metrics_path: Path, out: Path, boundaries: list[float], total_steps: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    rows = [r for r in all_rows if "loss" in r]  # training steps; held-out evaluations are their own rows
    evals = [r for r in all_rows if any(k.startswith("eval/") for k in r)]
    fig, (ax, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 8.5), sharex=True)
    b1, b2 = boundaries[0] * total_steps, boundaries[1] * total_steps
    for a in (ax, ax2, ax3):
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
    ax2.legend(fontsize=8)
    # held-out pairs: preference accuracy per level (left axis), BC loss on held-out expert actions (right)
    eval_steps = [r["step"] for r in evals]
    for level in ("traj", "step", "group"):
        key = f"eval/{level}/accuracy"
        if any(key in r for r in evals):
            n = max(r.get(f"eval/{level}/pairs", 0) for r in evals)
            ax3.plot(eval_steps, [r.get(key, float("nan")) for r in evals], marker="o", label=f"{level} accuracy (n={n})")
    ax3.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax3.set_ylim(-0.05, 1.05)
    ax3.set_ylabel("held-out accuracy")
    if any("eval/bc_loss" in r for r in evals):
        bc = ax3.twinx()
        bc.plot(eval_steps, [r.get("eval/bc_loss", float("nan")) for r in evals], color="black", ls="--",
                marker="x", label="held-out BC loss")
        bc.set_ylabel("BC loss")
        bc.legend(fontsize=8, loc="lower right")
    if evals:
        ax3.legend(fontsize=8, loc="upper left")
    ax3.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
