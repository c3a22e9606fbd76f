"""Orchestration of the stages: the Prefect flows `fourd` and `fourd_batch` (flows/fourd.py), their workspaces
(flows/workspace.py) and the machine's GPU pool (flows/gpus.py).

`STAGE_ORDER` is the order in which a subject's stages run; a consistency test keeps it equal to the
topological order of dvc.yaml, so the flow and `dvc repro` never disagree.
"""

STAGE_ORDER: tuple[str, ...] = ("render", "preprocess", "mvgen", "distill", "eval")
"""Stages in dependency order (render runs only for subjects made from 3D assets, eval only for subjects with
a rendered ground truth)."""

GPU_STAGES: frozenset[str] = frozenset({"mvgen", "distill"})
"""Stages that run on a slot of the GPU pool (flows/gpus.py: one stage per GPU, `CUDA_VISIBLE_DEVICES=<device>`);
their Prefect tasks also carry the `gpu` tag, whose concurrency limit `make prefect-setup` sets to the GPU count."""
