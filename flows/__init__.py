"""Orchestration of the stages: the Prefect flow `fourd` (flows/fourd.py) and its workspaces (flows/workspace.py).

`STAGE_ORDER` is the order in which a subject's stages run; a consistency test keeps it equal to the
topological order of dvc.yaml, so the flow and `dvc repro` never disagree.
"""

STAGE_ORDER: tuple[str, ...] = ("render", "preprocess", "mvgen", "distill", "eval")
"""Stages in dependency order (render runs only for subjects made from 3D assets, eval only for subjects with
a rendered ground truth)."""

GPU_STAGES: frozenset[str] = frozenset({"mvgen", "distill"})
"""Stages whose Prefect tasks carry the `gpu` tag (a concurrency limit of 1 per GPU: `make prefect-setup`)."""
