"""Evaluation metrics: FID, path length (ppl2_wend), identity cosine / retrieval, attribute recovery."""

from lightning_modules.metrics.evaluate import evaluate
from lightning_modules.metrics.fid import FID, quantize
from lightning_modules.metrics.identity import FaceNetEmbedder, centroids, identity_cosine, retrieval_recall
from lightning_modules.metrics.markdown import headline_markdown, summary_markdown
from lightning_modules.metrics.ppl import LPIPSDistance, path_length, trimmed_mean
from lightning_modules.metrics.weights import MetricUnavailable

__all__ = [
    "FID",
    "FaceNetEmbedder",
    "LPIPSDistance",
    "MetricUnavailable",
    "centroids",
    "evaluate",
    "headline_markdown",
    "identity_cosine",
    "path_length",
    "quantize",
    "retrieval_recall",
    "summary_markdown",
    "trimmed_mean",
]
