"""Quality-control pictures (matplotlib, the ``eval`` extra): a per-case slice montage and a per-run summary plot.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global state, no display needed)
and written atomically.
"""

from __future__ import annotations

import io as _bytesio
import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from hieseg.errors import MissingDependency
from hieseg.files import write_bytes_atomic
from hieseg.lesions import STRATA, binarize

log = logging.getLogger(__name__)

TRUTH_COLOUR = "#00d000"  # green
PRED_COLOUR = "#ff00ff"  # magenta: distinct from green for the common colour-vision deficiencies
MAX_SLICES = 24
STRATUM_COLOURS = {"none": "#7f7f7f", "<1%": "#1f77b4", "1-5%": "#ff7f0e", ">5%": "#d62728"}


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependency("QC pictures need matplotlib: pip install 'hieseg[eval]'") from None
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = _bytesio.BytesIO()
    figure.savefig(buffer, format="png", facecolor=figure.get_facecolor())
    return buffer.getvalue()


def _save(figure, path: str | Path) -> Path:
    return write_bytes_atomic(_png(figure), path)


def lesion_slices(*masks: np.ndarray | None, limit: int = MAX_SLICES) -> list[int]:
    """Axial (z) slices holding any lesion of ``masks``; evenly thinned to ``limit``. Empty masks: the middle slice."""
    present = [binarize(m) for m in masks if m is not None]
    hit = np.zeros(present[0].shape[0], dtype=bool)
    for m in present:
        hit |= m.any(axis=(1, 2))
    slices = np.flatnonzero(hit)
    if slices.size == 0:
        return [present[0].shape[0] // 2]
    if slices.size > limit:
        slices = slices[np.round(np.linspace(0, slices.size - 1, limit)).astype(int)]
    return [int(z) for z in slices]


def write_montage(adc: np.ndarray, pred: np.ndarray, path: str | Path, truth: np.ndarray | None = None,
                  title: str = "", spacing_zyx: Sequence[float] | None = None) -> Path:
    """``montage_png`` written atomically to ``path``; returns the path."""
    return write_bytes_atomic(montage_png(adc, pred, truth, title, spacing_zyx), path)


def montage_png(adc: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None,
                title: str = "", spacing_zyx: Sequence[float] | None = None) -> bytes:
    """PNG montage of the axial slices that hold truth or predicted lesions.

    ADC in grey, the truth contour in green and the prediction contour in magenta; ``title`` goes on top (for
    example the case id with its Dice, MASD and NSD). ``spacing_zyx`` sets the in-plane pixel aspect.
    """
    adc = np.asarray(adc, dtype=np.float32)
    pred = binarize(pred)
    truth = None if truth is None else binarize(truth)
    if pred.shape != adc.shape or (truth is not None and truth.shape != adc.shape):
        raise ValueError(f"montage arrays differ in shape: ADC {adc.shape}, prediction {pred.shape}"
                         + ("" if truth is None else f", truth {truth.shape}"))
    slices = lesion_slices(truth, pred)
    aspect = 1.0 if spacing_zyx is None else float(spacing_zyx[1]) / float(spacing_zyx[2])
    brain = adc[adc > 0]
    vmax = float(np.percentile(brain, 99.5)) if brain.size else float(adc.max() or 1.0)
    # Show the in-plane box of brain and lesions (with a small margin), not the empty field of view.
    shown = (adc[slices] > 0) | pred[slices] | (truth[slices] if truth is not None else False)
    if shown.any():
        ys, xs = np.flatnonzero(shown.any(axis=(0, 2))), np.flatnonzero(shown.any(axis=(0, 1)))
        box = (slice(max(ys[0] - 3, 0), ys[-1] + 4), slice(max(xs[0] - 3, 0), xs[-1] + 4))
    else:
        box = (slice(None), slice(None))
    adc, pred = adc[(slice(None),) + box], pred[(slice(None),) + box]
    truth = None if truth is None else truth[(slice(None),) + box]

    columns = min(6, len(slices))
    rows = math.ceil(len(slices) / columns)
    panel = 2.6
    figure = _figure(columns * panel, rows * panel * min(max(aspect * adc.shape[1] / adc.shape[2], 0.5), 2.0) + 0.8)
    figure.set_facecolor("black")
    for i, z in enumerate(slices):
        ax = figure.add_subplot(rows, columns, i + 1)
        ax.imshow(adc[z], cmap="gray", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest")
        if truth is not None and truth[z].any():
            ax.contour(truth[z].astype(np.float32), levels=[0.5], colors=TRUTH_COLOUR, linewidths=2.2)
        if pred[z].any():
            ax.contour(pred[z].astype(np.float32), levels=[0.5], colors=PRED_COLOUR, linewidths=1.4)
        ax.set_title(f"z={z}", color="white", fontsize=8, pad=2)
        ax.set_axis_off()
    legend = "prediction: magenta" if truth is None else "truth: green   prediction: magenta"
    figure.suptitle(f"{title}\n{legend}" if title else legend, color="white", fontsize=9)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.7 / figure.get_figheight(),
                           wspace=0.03, hspace=0.15)
    return _png(figure)


def write_summary_plot(rows: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """PNG of per-case Dice against lesion burden (% of brain, log scale), coloured by burden stratum.

    ``rows`` are evaluation rows with ``dice``, ``burden`` (fraction) and ``stratum``; cases without a truth lesion
    cannot sit on a log axis and are drawn at the left edge as hollow markers.
    """
    figure = _figure(6.4, 4.4)
    ax = figure.add_subplot(1, 1, 1)
    scored = [r for r in rows if r.get("dice") is not None and not math.isnan(float(r["dice"]))]
    positive = [100.0 * float(r["burden"]) for r in scored if float(r["burden"]) > 0]
    floor = min(positive) / 3 if positive else 0.01
    for stratum in STRATA:
        group = [r for r in scored if r["stratum"] == stratum]
        if not group:
            continue
        x = [100.0 * float(r["burden"]) if float(r["burden"]) > 0 else floor for r in group]
        y = [float(r["dice"]) for r in group]
        label = f"{stratum} (n={len(group)})" if stratum != "none" else f"no lesion (n={len(group)})"
        hollow = stratum == "none"
        ax.scatter(x, y, s=28, label=label, edgecolors=STRATUM_COLOURS[stratum],
                   facecolors="none" if hollow else STRATUM_COLOURS[stratum])
    missing = [r for r in rows if r.get("missing")]
    if missing:
        ax.scatter([100.0 * float(r["burden"]) if float(r["burden"]) > 0 else floor for r in missing],
                   [0.0] * len(missing), marker="x", color="black", s=36,
                   label=f"missing prediction (n={len(missing)})")
    ax.set_xscale("log")
    for edge in (1.0, 5.0):
        ax.axvline(edge, color="#bbbbbb", linewidth=0.8, linestyle="--", zorder=0)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("lesion burden (% of brain volume, log scale)")
    ax.set_ylabel("Dice")
    ax.set_title(title or "Dice vs lesion burden", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no scored cases", transform=ax.transAxes, ha="center", va="center", color="#7f7f7f")
    figure.tight_layout()
    return _save(figure, path)
