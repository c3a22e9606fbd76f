"""Unit tests of the flow's planning and wiring (no Prefect server, no stage runs): fast."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

from flows import GPU_STAGES, STAGE_ORDER
from flows.pipelines import CONFIG_SETS, PipelineError, StageInstance, pipeline_file, stage_instances
from flows.workspace import WorkspaceError, register_subject, workspace_lock
from tests.flows.builders import REPO, copy_repository

pytest.importorskip("prefect")


def test_plan_of_the_example_follows_stage_order_and_skips_render():
    plan = stage_instances(REPO, "fox")
    assert [i.stage for i in plan] == [s for s in STAGE_ORDER if s != "render"]  # fox comes from a committed render
    mvgen = next(i for i in plan if i.stage == "mvgen")
    assert mvgen.cmd.startswith("python -m stages.mvgen --config configs/mvgen.yaml --input data/preprocess/fox")
    assert "weights/fourdm" in mvgen.deps and mvgen.outs == ("data/mvgen/fox",)
    assert [i.stage for i in stage_instances(REPO, "fox", ["eval"])] == ["eval"]
    with pytest.raises(PipelineError, match="unknown stages"):
        stage_instances(REPO, "fox", ["nerf"])


def test_a_config_set_runs_its_pipeline_in_the_repository_with_its_configs_weights_and_outputs():
    tiny = {i.stage: i for i in stage_instances(REPO, "fox", config_set="tiny")}
    assert set(tiny) == {"preprocess", "mvgen", "distill", "eval"}
    assert {i.pipeline for i in tiny.values()} == {"pipelines/tiny/dvc.yaml"}
    assert tiny["mvgen"].target == "pipelines/tiny/dvc.yaml:mvgen@fox"
    assert tiny["mvgen"].cmd == (
        "python -m stages.mvgen --config configs/tiny/mvgen.yaml --input data/tiny/preprocess/fox "
        "--weights weights/fourdm --output data/tiny/mvgen/fox"
    )
    assert tiny["eval"].outs == ("data/tiny/eval/fox", "reports/tiny/fox.json")
    demo = {i.stage: i for i in stage_instances(REPO, "fox", config_set="demo")}
    assert "--weights weights/demo/fourdm" in demo["distill"].cmd and "weights/fourdm" not in demo["distill"].deps
    assert "weights/eval/lpips" not in demo["distill"].deps  # the demo's anchor loss has no LPIPS term
    # demo-gpu has no eval config: its eval runs with the production one.
    assert "--config configs/eval.yaml" in stage_instances(REPO, "fox", ["eval"], "demo-gpu")[0].cmd
    assert pipeline_file("default") == "dvc.yaml"
    with pytest.raises(PipelineError, match="config set 'huge'"):
        pipeline_file("huge")
    assert set(CONFIG_SETS) == {p.name for p in (REPO / "configs").iterdir() if p.is_dir()}


def test_render_joins_for_asset_subjects_and_eval_only_with_ground_truth(tmp_path):
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["assets"] = {"dog": {"asset": "assets/dog.glb", "clip": "Run"}}
    params["subjects"]["dog"] = {"input": "data/render/dog/input", "fps": 8.0, "framing": "keep"}
    params["subjects"]["cat"] = {"input": "data/raw/cat/video.mp4", "fps": 0.0, "framing": "recenter"}
    params["evaluate"]["dog"] = {"ground_truth": "data/render/dog"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    dog = stage_instances(tmp_path, "dog")
    assert [i.name for i in dog] == ["render@dog", "preprocess@dog", "mvgen@dog", "distill@dog", "eval@dog"]
    assert dog[0].cmd.startswith(".venv-render/bin/python -m stages.render") and "--clip Run" in dog[0].cmd
    assert "data/render/dog" in dog[-1].deps
    assert [i.stage for i in stage_instances(tmp_path, "cat")] == ["preprocess", "mvgen", "distill"]
    # A config set's render is the root pipeline's: the asset's render is an input every set shares.
    (tmp_path / "pipelines" / "tiny").mkdir(parents=True)
    (tmp_path / "pipelines/tiny/dvc.yaml").write_text((REPO / "pipelines/tiny/dvc.yaml").read_text())
    tiny = stage_instances(tmp_path, "dog", config_set="tiny")
    assert [i.target for i in tiny[:2]] == ["dvc.yaml:render@dog", "pipelines/tiny/dvc.yaml:preprocess@dog"]


def test_params_and_dvc_yaml_agree():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, spec in stages.items():
        key = re.fullmatch(r"\$\{(\w+)\}", spec["foreach"]).group(1)
        assert isinstance(params[key], dict), (name, key)
    for subject, spec in params["evaluate"].items():
        assert subject in params["subjects"], subject
        assert (REPO / spec["ground_truth"] / "manifest.json").is_file() or spec["ground_truth"].startswith("data/")
        assert params["subjects"][subject].get("ground_truth", spec["ground_truth"]) == spec["ground_truth"]
    assert GPU_STAGES <= set(STAGE_ORDER) | {"distill"}


def test_register_subject_copies_adds_and_lists_the_video_once(tmp_path):
    repo = copy_repository(tmp_path / "repo")
    video = tmp_path / "My Clip.mp4"
    video.write_bytes((REPO / "examples/fox/video.mp4").read_bytes())
    assert register_subject(repo, video, prompt="a fox") == "my-clip"
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["subjects"]["my-clip"] == {"input": "data/raw/my-clip/video.mp4", "fps": 0.0, "framing": "recenter"}
    assert (repo / "data/raw/my-clip.dvc").is_file() and (repo / "data/raw/my-clip/prompt.txt").is_file()
    assert "# DVC vars" in (repo / "params.yaml").read_text()
    assert register_subject(repo, video, prompt="a fox") == "my-clip"  # same content: no-op
    other = tmp_path / "other.mp4"
    other.write_bytes(b"not the same video")
    with pytest.raises(WorkspaceError, match="already exists"):
        register_subject(repo, other, subject="my-clip")
    with pytest.raises(WorkspaceError, match="expected one of"):
        register_subject(repo, tmp_path / "repo/params.yaml")
    assert [i.stage for i in stage_instances(repo, "my-clip")] == ["preprocess", "mvgen", "distill"]


def test_workspace_lock_is_exclusive(tmp_path):
    import threading

    (tmp_path / ".dvc").mkdir()
    order: list[str] = []
    with workspace_lock(tmp_path):
        t = threading.Thread(target=lambda: [workspace_lock(tmp_path).__enter__(), order.append("second")])
        t.start()
        t.join(0.3)
        order.append("first")
    t.join(5)
    assert order == ["first", "second"]


def test_docker_command_mounts_the_workspace_and_uses_the_image_entry_point(tmp_path):
    from flows.update import docker_command

    inst = StageInstance(
        "mvgen",
        "fox",
        "python -m stages.mvgen --config configs/mvgen.yaml --input data/preprocess/fox "
        "--weights weights/fourdm --output data/mvgen/fox",
        ("weights/fourdm",),
        ("data/mvgen/fox",),
    )
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/db/mlflow.db", "FOURD_PARENT_RUN_ID": "abc"}
    cmd = docker_command(tmp_path, inst, env, "fourd/mvgen:0.1.0")
    i = cmd.index("fourd/mvgen:0.1.0")
    assert cmd[i + 1 :] == [
        "--config",
        "configs/mvgen.yaml",
        "--input",
        "data/preprocess/fox",
        "--weights",
        "weights/fourdm",
        "--output",
        "data/mvgen/fox",
    ]
    assert f"{tmp_path}:{tmp_path}" in cmd and f"{tmp_path}/db:{tmp_path}/db" in cmd
    assert "FOURD_PARENT_RUN_ID=abc" in cmd and "--gpus" in cmd and cmd[cmd.index("--network") + 1] == "none"


def test_prefect_yaml_deploys_the_flow_with_valid_parameters():
    from flows.fourd import fourd

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["prefect-version"] == "3.9.1"
    names = {d["name"]: d for d in spec["deployments"]}
    assert set(names) == {"local", "docker", "k8s-gpu"}
    signature = inspect.signature(fourd.fn)
    for d in names.values():
        path, func = d["entrypoint"].split(":")
        assert (REPO / path).is_file() and func == fourd.name
        assert set(d["parameters"]) <= set(signature.parameters), d["name"]
    assert names["docker"]["parameters"]["executor"] == "docker"
    template = json.loads((REPO / "flows/k8s-gpu-job-template.json").read_text())
    used = json.dumps(template["job_configuration"])
    for var in template["variables"]["properties"]:  # an unreferenced variable is silently dropped by Prefect
        assert "{{ " + var + " }}" in used, var
    assert set(names["k8s-gpu"]["work_pool"]["job_variables"]) <= set(template["variables"]["properties"])


def test_makefile_has_the_orchestration_targets():
    text = (REPO / "Makefile").read_text()
    for target in ("flow", "prefect-server", "prefect-setup", "prefect-worker", "mlflow-ui", "docker-images"):
        assert re.search(rf"^{target}:", text, re.M), target
    assert "--host 127.0.0.1" in text and "0.0.0.0" not in text


def test_flow_entry_point_is_thin():
    src = Path(REPO / "flows/fourd.py").read_text()
    assert "import stages" not in src and "from stages" not in src  # stages run as CLIs via dvc.yaml


def test_registering_a_video_that_lies_in_data_raw_keeps_it(tmp_path):
    repo = copy_repository(tmp_path / "repo")
    video = repo / "data/raw/corgi/corgi.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes((REPO / "examples/fox/video.mp4").read_bytes())
    assert register_subject(repo, video) == "corgi"
    assert video.read_bytes() == (REPO / "examples/fox/video.mp4").read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["subjects"]["corgi"]["input"] == "data/raw/corgi/corgi.mp4"
    assert (repo / "data/raw/corgi.dvc").is_file()
    assert register_subject(repo, video) == "corgi"  # the same file again: a no-op
    # Another file under a name whose folder exists (not registered yet): an error, nothing touched.
    (repo / "data/raw/dog").mkdir()
    (repo / "data/raw/dog/video.mp4").write_bytes(b"the user's own file")
    other = tmp_path / "dog.mp4"
    other.write_bytes((REPO / "examples/fox/video.mp4").read_bytes())
    with pytest.raises(WorkspaceError, match="already exists and differs"):
        register_subject(repo, other)
    assert (repo / "data/raw/dog/video.mp4").read_bytes() == b"the user's own file"
