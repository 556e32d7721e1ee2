"""Statistics for results tables: Student-t CDF/quantiles (no SciPy) and :class:`Stat` (mean, std, 95 % CI)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """CDF of Student's t distribution."""
    x = dof / (dof + t * t)
    tail = 0.5 * _betai(dof / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, dof: float) -> float:
    """Quantile of Student's t (bisection on :func:`t_cdf`; exact to ~1e-10). ``t_ppf(0.975, 2) = 4.3027``."""
    if not 0.0 < p < 1.0 or dof <= 0:
        raise ValueError("t_ppf needs 0 < p < 1 and dof > 0")
    if p < 0.5:
        return -t_ppf(1.0 - p, dof)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, dof) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@dataclass
class Stat:
    n: int
    mean: float
    std: float       # sample std (ddof=1); nan for n == 1
    ci95: float      # half-width of the 95 % Student-t interval; nan for n == 1

    @classmethod
    def of(cls, values: Iterable[float]) -> "Stat":
        v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
        n = len(v)
        if n == 0:
            return cls(0, math.nan, math.nan, math.nan)
        mean = sum(v) / n
        if n == 1:
            return cls(1, mean, math.nan, math.nan)
        std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
        return cls(n, mean, std, t_ppf(0.975, n - 1) * std / math.sqrt(n))

    def fmt(self, kind: str = "ci", digits: int = 4) -> str:
        if self.n == 0:
            return "–"
        spread = self.ci95 if kind == "ci" else self.std
        if math.isnan(spread):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {spread:.{digits}f}"

    def to_dict(self) -> dict[str, float | None]:
        """JSON-safe: an undefined spread (n < 2) or mean (n = 0) is null, never NaN (not JSON)."""
        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {"n": self.n, "mean": num(self.mean), "std": num(self.std), "ci95": num(self.ci95)}


