"""Pictures of an evaluation: ROC curves and a grid of heat-map overlays."""

import numpy as np

from edge.view.overlay import grid, heat_overlay, label, write_png

from edge.common import metrics


def roc_plot(path, labels, scores, masks, maps, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    for name, (y, s) in {"image": (labels, scores), "pixel": (masks, maps)}.items():
        curve = metrics.roc_curve(y, s)
        if curve is not None:
            fpr, tpr, _ = curve
            if fpr.size > 2000:                      # thin the pixel curve for plotting
                keep = np.unique(np.linspace(0, fpr.size - 1, 2000).astype(int))
                fpr, tpr = fpr[keep], tpr[keep]
            ax.plot(fpr, tpr, label=f"{name} AUROC {metrics.trapezoid(tpr, fpr):.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png")
    plt.close(fig)
    import os
    os.replace(path + ".tmp.png", path)


def overlay_grid(path, images, maps, scores, labels, threshold, per_class=9):
    """The highest-scoring good images and a spread of defective ones, captioned."""
    idx_good = [i for i in np.argsort(-scores) if labels[i] == 0][:per_class // 2]
    bad = [i for i in np.argsort(-scores) if labels[i] == 1]
    idx_bad = [bad[j] for j in np.linspace(0, len(bad) - 1, min(per_class, len(bad))).astype(int)] if bad else []
    tiles = []
    for i in idx_bad + idx_good:
        rej = bool(scores[i] >= threshold)
        caption = f"{'defect' if labels[i] else 'good'} {scores[i]:.3g} {'REJ' if rej else 'ok'}"
        tiles.append(label(heat_overlay(images[i], maps[i], threshold), caption, rej))
    write_png(path, grid(tiles, cols=6))
