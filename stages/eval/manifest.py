"""The map from an input manifest to the views it predicts (EvalManifest itself lives in stages.common.artifacts)."""

from __future__ import annotations

from stages.common.artifacts import (
    DistillManifest,
    EvalManifest,
    Manifest,
    MvgenManifest,
    SkippedMetric,
    ViewPair,
    ViewSet,
)
from stages.common.errors import StageError

__all__ = ["EvalManifest", "SkippedMetric", "ViewPair", "prediction_view_set"]


def prediction_view_set(manifest: Manifest) -> ViewSet:
    """The predicted views × frames an artifact holds (the one place that knows which manifests carry them).

    Raises:
        StageError: the artifact carries no predicted views.
    """
    match manifest:
        case MvgenManifest():
            return manifest.views
        case DistillManifest():
            return manifest.renders
    raise StageError(
        f"a {manifest.stage} artifact ({manifest.schema_id}) holds no predicted views; expected an mvgen artifact"
    )
