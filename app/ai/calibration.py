"""Confidence calibration: isotonic regression of the realised directional hit on
``|mean| / (dispersion + eps)``, fitted on held-out rows, and the reliability table that checks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float64]


def _hits(mean: FloatArray, y: FloatArray) -> FloatArray:
    """1 when the predicted sign was right, 0 when wrong, 0.5 when either side is exactly 0."""
    product = np.sign(mean) * np.sign(y)
    return np.where(product > 0, 1.0, np.where(product < 0, 0.0, 0.5))


def _isotonic(values: FloatArray, weights: FloatArray) -> FloatArray:
    """Weighted pool-adjacent-violators: the non-decreasing fit closest to `values`."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for value, weight in zip(values, weights, strict=True):
        blocks.append([float(value), float(weight), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            w = w1 + w2
            blocks.append([(v1 * w1 + v2 * w2) / w if w > 0 else (v1 + v2) / 2, w, c1 + c2])
    out = [value for value, _, count in blocks for _ in range(int(count))]
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True)
class ConfidenceCalibrator:
    """Maps (mean, dispersion) to P(sign correct), fitted on held-out rows.

    score = |mean| / (dispersion + eps): large when members agree on a large move. Rows are cut
    into equal-count score bins (>= 50 rows each, at most 20 bins), the bins' hit rates are made
    non-decreasing in score (isotonic), and scores in between are interpolated linearly.
    """

    eps: float
    knots_score: tuple[float, ...]
    knots_confidence: tuple[float, ...]

    MIN_ROWS_PER_BIN: ClassVar[int] = 50
    MAX_BINS: ClassVar[int] = 20

    @classmethod
    def uninformative(cls) -> ConfidenceCalibrator:
        """Without validation data there is no evidence either way: 0.5 everywhere."""
        return cls(eps=1e-12, knots_score=(0.0,), knots_confidence=(0.5,))

    @classmethod
    def fit(cls, mean: FloatArray, dispersion: FloatArray, y: FloatArray) -> ConfidenceCalibrator:
        ok = np.isfinite(mean) & np.isfinite(dispersion) & np.isfinite(y)
        mean, dispersion, y = mean[ok], dispersion[ok], y[ok]
        if len(y) == 0:
            return cls.uninformative()
        eps = max(0.5 * float(np.median(dispersion)), 1e-12)
        score = np.abs(mean) / (dispersion + eps)
        hits = _hits(mean, y)
        order = np.argsort(score, kind="stable")
        n_bins = int(min(cls.MAX_BINS, max(1, len(y) // cls.MIN_ROWS_PER_BIN)))
        chunks = [c for c in np.array_split(order, n_bins) if len(c)]
        x = np.array([score[c].mean() for c in chunks])
        rate = np.array([hits[c].mean() for c in chunks])
        weight = np.array([float(len(c)) for c in chunks])
        fitted = np.clip(_isotonic(rate, weight), 0.0, 1.0)
        return cls(eps=eps, knots_score=tuple(map(float, x)), knots_confidence=tuple(fitted))

    def score(self, mean: FloatArray, dispersion: FloatArray) -> FloatArray:
        return np.abs(mean) / (dispersion + self.eps)

    def __call__(self, mean: FloatArray, dispersion: FloatArray) -> FloatArray:
        conf = np.interp(self.score(mean, dispersion), self.knots_score, self.knots_confidence)
        return np.where(np.isfinite(mean), np.clip(conf, 0.0, 1.0), np.nan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "knots_score": list(self.knots_score),
            "knots_confidence": list(self.knots_confidence),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfidenceCalibrator:
        return cls(
            eps=float(data["eps"]),
            knots_score=tuple(float(v) for v in data["knots_score"]),
            knots_confidence=tuple(float(v) for v in data["knots_confidence"]),
        )
