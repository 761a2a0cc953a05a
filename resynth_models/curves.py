"""ROC and precision-recall curves as one PNG figure (matplotlib, off-screen).

:func:`plot_curves` draws the curves that :meth:`~resynth_models.metrics.PixelMetrics.curves`
returns: a ROC panel and a precision-recall panel, one curve per lesion type plus "all" (drawn
thicker), each labelled with its AUROC / AUPR. matplotlib is imported when a figure is drawn, with
its non-interactive Agg backend, so evaluation never needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

#: Colours per curve name (matplotlib's tab10, fixed so that figures compare across runs).
COLOURS = {
    "all": "black",
    "MA": "tab:red",
    "HE": "tab:purple",
    "EX": "tab:orange",
    "SE": "tab:olive",
    "lesion": "tab:blue",
}


def plot_curves(
    curves: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, str],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """Write a two-panel PNG (ROC, precision-recall) of ``curves`` to ``path``.

    ``curves[name]`` has arrays ``fpr``, ``tpr``, ``recall``, ``precision``; ``labels[name]`` is
    its legend entry. Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 5), dpi=110)
    try:
        for name, c in curves.items():
            colour = COLOURS.get(name)
            width = 2.2 if name == "all" else 1.3
            label = labels.get(name, name)
            roc.plot(np.r_[0.0, c["fpr"]], np.r_[0.0, c["tpr"]], color=colour, lw=width,
                     label=label)  # fmt: skip
            pr.plot(c["recall"], c["precision"], color=colour, lw=width, label=label)
        roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC",
                xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
        pr.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1),
               ylim=(0, 1.01))  # fmt: skip
        for ax in (roc, pr):
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right" if ax is roc else "upper right", fontsize=8)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)
