"""The PNG of a run: latency CDFs of the paced scenarios, and CPU per request and per event.

matplotlib comes with the ``bench`` extra (``make bench`` installs it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LABELS = {
    "mock": "mock direct",
    "relay": "aiohttp relay",
    "before": "gateway before",
    "off": "gateway off",
    "on": "gateway on",
}
PACED = ("paced500", "paced1000")


def plot(data: dict[str, Any], path: Path) -> None:
    """Write the figure for ``data`` (the bench.json document) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, cdfs, titles = data["results"], data["cdf"], data["titles"]
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    for row, scenario in enumerate(PACED):
        for col, sample in enumerate(("TTFB ms", "gap ms")):
            ax = axes[row][col]
            if not cdfs.get(scenario):
                ax.set_title(f"{scenario}: not run")
                ax.set_axis_off()
                continue
            for target, curves in cdfs.get(scenario, {}).items():
                values = curves.get(sample, [])
                if values:
                    ys = [i / (len(values) - 1) for i in range(len(values))]
                    ax.plot(values, ys, label=LABELS[target])
            ax.set_title(f"{titles.get(scenario, scenario)}: {sample.split()[0]} CDF")
            ax.set_xlabel(sample)
            ax.set_xscale("log" if sample.startswith("TTFB") else "linear")
            ax.set_ylabel("fraction")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    _bars(axes[0][2], results, [("json", "CPU us/req")], "CPU us per request (JSON)", titles)
    streams = [(s, "CPU us/event") for s in ("burst", *PACED)]
    _bars(axes[1][2], results, streams, "CPU us per event", titles)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _bars(
    ax: Any,
    results: dict[str, dict[str, dict[str, float]]],
    figures: list[tuple[str, str]],
    title: str,
    titles: dict[str, str],
) -> None:
    present = [(s, f) for s, f in figures if s in results]
    measured = {t for s, _ in present for t in results[s]}
    labels = {t: label for t, label in LABELS.items() if t in measured}
    width = 0.8 / max(len(labels), 1)
    for index, (target, label) in enumerate(labels.items()):
        xs = [i + index * width for i in range(len(present))]
        ys = [results[s].get(target, {}).get(f, 0.0) for s, f in present]
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(present))])
    ax.set_xticklabels([titles.get(s, s) for s, _ in present], fontsize=8)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
