"""Issue 11's targets, the ratios to the baselines, and the markdown table of a run.

Every target is checked on the gateway with its features on. A target relative to a baseline
(the mock answering directly, the minimal aiohttp relay) uses that baseline's figure from the
same run, never a number written down here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Results = dict[str, dict[str, dict[str, float]]]  # scenario -> target -> figure -> value
BASELINES = ("relay", "mock", "before")
COLUMNS = ("mock", "relay", "before", "off", "on")
TITLES = {
    "mock": "mock",
    "relay": "aiohttp relay",
    "before": "gateway before",
    "off": "gateway off",
    "on": "gateway on",
}
RATIOS = (("on", "relay"), ("on", "mock"), ("off", "relay"), ("on", "before"))
SHED = "503s (shed, asked again)"


def has_ratio(figure: str) -> bool:
    """Counts and the machine's own load have no meaningful ratio to a baseline."""
    return figure not in {"errors", "open streams", SHED} and not figure.endswith("%")


@dataclass(frozen=True)
class Target:
    """``value op limit``, where the limit may be added to or multiply a baseline's figure."""

    op: str  # "<=" or ">="
    limit: float
    baseline: str | None = None
    scaled: bool = False  # limit x baseline (else baseline + limit)

    def bound(self, figures: dict[str, dict[str, float]], figure: str) -> float:
        """The limit this run's baselines give (nan when the baseline was not measured)."""
        if self.baseline is None:
            return self.limit
        base = figures.get(self.baseline, {}).get(figure, math.nan)
        return base * self.limit if self.scaled else base + self.limit

    def describe(self) -> str:
        if self.baseline is None:
            return f"{self.op} {self.limit:g}"
        if self.scaled:
            return f"{self.op} {self.limit:g}x {self.baseline}"
        return f"{self.op} {self.baseline} + {self.limit:g}"

    def verdict(self, value: float, bound: float) -> str:
        if math.isnan(value) or math.isnan(bound):
            return "n/a"
        ok = value <= bound if self.op == "<=" else value >= bound
        return "PASS" if ok else "MISS"


TARGETS: dict[tuple[str, str], tuple[Target, ...]] = {
    ("json", "req/s"): (
        Target(">=", 1.0, "relay", scaled=True),
        Target(">=", 3.0, "before", scaled=True),  # "3x today's", with --before REF
    ),
    ("json", "CPU us/req"): (Target("<=", 160),),
    ("burst", "CPU us/event"): (Target("<=", 6),),
    ("paced500", "TTFB p50 ms"): (Target("<=", 2, "mock"),),
    ("paced500", "TTFB p99 ms"): (Target("<=", 25, "mock"),),
    ("paced500", "CPU us/event"): (Target("<=", 20),),
    ("paced1000", "errors"): (Target("<=", 0),),
    ("paced1000", "stream time p50 / ideal"): (Target("<=", 1.10),),
    ("idle", "RSS KiB/stream"): (Target("<=", 16),),
}


def applicable(scenario: str, figure: str, by_target: dict[str, dict[str, float]]) -> list[Target]:
    """The targets of a figure whose baseline this run measured (absolute ones always)."""
    found = TARGETS.get((scenario, figure), ())
    return [t for t in found if t.baseline is None or t.baseline in by_target]


def ratios(results: Results) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """scenario -> target -> figure -> {baseline: target's figure / baseline's figure}."""
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for scenario, by_target in results.items():
        for target, figures in by_target.items():
            for figure, value in figures.items():
                for baseline in BASELINES:
                    base = by_target.get(baseline, {}).get(figure)
                    if baseline == target or base is None or not has_ratio(figure):
                        continue
                    ratio = value / base if base else math.nan
                    node = out.setdefault(scenario, {}).setdefault(target, {})
                    node.setdefault(figure, {})[baseline] = ratio
    return out


def verdicts(results: Results) -> dict[str, dict[str, str]]:
    """scenario -> figure -> "PASS"/"MISS"/"n/a" for the features-on gateway: PASS when every
    target that could be checked passed."""
    out: dict[str, dict[str, str]] = {}
    for scenario, figure in TARGETS:
        by_target = results.get(scenario)
        if by_target is None or "on" not in by_target:
            continue
        value = by_target["on"].get(figure, math.nan)
        found = [t.verdict(value, t.bound(by_target, figure)) for t in
                 applicable(scenario, figure, by_target)]  # fmt: skip
        checked = [v for v in found if v != "n/a"]
        verdict = "n/a" if not checked else "PASS" if all(v == "PASS" for v in checked) else "MISS"
        out.setdefault(scenario, {})[figure] = verdict
    return out


def _cell(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def markdown(results: Results, titles: dict[str, str]) -> str:
    """One markdown table: every figure of every scenario, the ratios, the targets."""
    before = any("before" in by_target for by_target in results.values())
    columns = [c for c in COLUMNS if c != "before" or before]
    pairs = [(a, b) for a, b in RATIOS if b != "before" or before]
    header = [
        "scenario", "figure", *(TITLES[c] for c in columns),
        *(f"{a}/{b}" for a, b in pairs), "target (on)", "",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    checked = verdicts(results)
    for scenario, by_target in results.items():
        figures: list[str] = []
        for name in columns:
            figures.extend(f for f in by_target.get(name, {}) if f not in figures)
        for figure in figures:
            row = [titles.get(scenario, scenario), figure]
            row.extend(_cell(by_target.get(name, {}).get(figure)) for name in columns)
            for a, b in pairs:
                top, bottom = by_target.get(a, {}).get(figure), by_target.get(b, {}).get(figure)
                if top is None or not bottom or not has_ratio(figure):
                    row.append("-")
                else:
                    row.append(f"{top / bottom:.2f}x")
            targets = applicable(scenario, figure, by_target) or TARGETS.get((scenario, figure), ())
            row.append(" and ".join(t.describe() for t in targets))
            row.append(checked.get(scenario, {}).get(figure, ""))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def cdf(samples: list[float], points: int = 200) -> list[float]:
    """``points`` evenly spaced quantiles of ``samples``: what the JSON keeps and the plot uses."""
    ordered = sorted(samples)
    if not ordered:
        return []
    last = len(ordered) - 1
    return [ordered[round(last * i / (points - 1))] for i in range(points)]
