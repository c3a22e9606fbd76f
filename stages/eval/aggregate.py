"""Merge per-subject eval artifacts into one flat metrics file for `dvc metrics show/diff` (house style §8.2).

    python -m stages.eval.aggregate --output reports/metrics.json data/eval/fox data/eval/dog

Keys: `<metric>` over all subjects, `<metric>/<subject>` per subject, `num_subjects`. Every metric is the mean
over the subjects that computed it (as the Consistent4D scripts average objects), except `fvd`, which is
recomputed from the I3D features of every clip of every subject pooled together (`i3d_features.safetensors`):
FVD of a distribution is not the mean of per-subject FVDs. `fvd/num_clips` says how many clips a side it saw.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stages.common.errors import StageError
from stages.common.image_io import atomic_write_bytes
from stages.common.logs import setup_logging
from stages.eval.manifest import EvalManifest
from stages.eval.metrics.fvd import compute_fvd

__all__ = ["aggregate", "main"]

log = logging.getLogger(__name__)


def _load_features(directory: Path, manifest: EvalManifest) -> tuple[np.ndarray, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = load_file(str(directory / str(manifest.features_file)))
    return tensors["prediction"], tensors["ground_truth"]


def aggregate(eval_dirs: Sequence[Path]) -> dict[str, float]:
    """Flat metrics over subjects (module docstring).

    Raises:
        StageError: no folders, a folder that is not an eval artifact, or one subject twice.
    """
    if not eval_dirs:
        raise StageError("no eval artifacts given")
    loaded = [(Path(d), EvalManifest.load(Path(d))) for d in eval_dirs]
    subjects = [m.subject for _, m in loaded]
    if len(set(subjects)) != len(subjects):
        raise StageError(f"a subject appears twice: {subjects}")
    out: dict[str, float] = {"num_subjects": len(loaded)}
    keys = sorted({k for _, m in loaded for k in m.metrics})
    for key in keys:
        values = {m.subject: m.metrics[key] for _, m in loaded if key in m.metrics}
        if len(values) < len(loaded):
            log.warning("%s: computed for %d of %d subjects (%s)", key, len(values), len(loaded), sorted(values))
        out[key] = float(np.mean(list(values.values())))
        out.update({f"{key}/{subject}": value for subject, value in values.items()})
    with_features = [(d, m) for d, m in loaded if m.features_file is not None]
    if with_features:
        pred, gt = zip(*(_load_features(d, m) for d, m in with_features), strict=True)
        pooled_pred, pooled_gt = np.concatenate(pred), np.concatenate(gt)
        if len(pooled_pred) >= 2:
            out["fvd"] = compute_fvd(pooled_pred, pooled_gt)
            out["fvd/num_clips"] = len(pooled_pred)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with one `error:` line on bad input)."""
    setup_logging()
    parser = argparse.ArgumentParser(prog="python -m stages.eval.aggregate", description=__doc__.splitlines()[0])
    parser.add_argument("eval_dirs", nargs="+", type=Path, help="eval artifact folders, one per subject")
    parser.add_argument("--output", type=Path, required=True, help="where to write the merged metrics JSON")
    args = parser.parse_args(argv)
    try:
        metrics = aggregate(args.eval_dirs)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.output, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    log.info("wrote %d metrics over %d subjects to %s", len(metrics), int(metrics["num_subjects"]), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
