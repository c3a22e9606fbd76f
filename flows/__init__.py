"""Orchestration of the stages (Prefect flows arrive with the orchestration work, issue #8).

`STAGE_ORDER` is the order in which a subject's stages run; a consistency test keeps it equal to the
topological order of dvc.yaml, so the flow and `dvc repro` never disagree.
"""

STAGE_ORDER: tuple[str, ...] = ("render", "preprocess", "mvgen", "eval")
"""Stages with a DVC stage today, in dependency order (render runs only for subjects made from 3D assets);
distill joins when it lands."""
