"""Manifests, the typed contracts between stages, and the atomic output directory they are written into.

A stage writes into a hidden staging directory beside its output (`stages.common.output_dir`), writes
`config.yaml` first and `manifest.json` last, and only then swaps the staging directory into place. A stage that
fails leaves the previous result (or nothing) and never a half-written directory a later stage could take for a
result.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from stages.common.config import format_validation_error
from stages.common.errors import StageError
from stages.common.output_dir import MANIFEST_FILE, staged_output_dir

__all__ = [
    "Manifest",
    "ViewSet",
    "PreprocessManifest",
    "MvgenManifest",
    "DistillManifest",
    "MeshSequence",
    "RenderManifest",
    "EvalManifest",
    "SkippedMetric",
    "ViewPair",
    "MANIFEST_FILE",
    "CONFIG_FILE",
    "load_any_manifest",
    "staged_output_dir",
    "git_sha",
]

CONFIG_FILE = "config.yaml"

M = TypeVar("M", bound="Manifest")


CODE_VERSION_ENV = "FOURD_CODE_VERSION"
"""Where code without its git repository learns its commit: the stage images set it from a build arg."""


@lru_cache(maxsize=1)
def git_sha() -> str:
    """The commit of the code that runs, with `-dirty` when the tree has changes: `$FOURD_CODE_VERSION` when set
    (a container has no git), else git's answer; `unknown` outside git."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


class Manifest(BaseModel):
    """Fields every artifact carries. Subclasses pin `schema_id` and `stage` with `Literal`s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_id: str
    """`fourd.<stage>/v<N>`; bumped when the artifact layout changes, so a stale artifact fails loudly."""
    stage: str
    """The stage that wrote the artifact."""
    subject: str
    """Name of the input video/object; the same across all stages of one subject."""
    files: list[str]
    """Every file of the artifact, relative to its directory (the manifest itself excluded)."""
    config_sha256: str
    """`config_sha256()` of the stage config that produced it; `config.yaml` holds the config itself."""
    code_version: str
    """git commit of the code that wrote it (`-dirty` when uncommitted changes were present)."""
    upstream: dict[str, str] = {}
    """`{stage: sha256 of that stage's manifest.json}` for every artifact this one was computed from."""

    @classmethod
    def load(cls: type[M], directory: Path) -> M:
        """Read and validate `<directory>/manifest.json`.

        Raises:
            StageError: no manifest, not JSON, another schema, invalid fields, a listed file is missing, or the
                files contradict the manifest (sizes, counts, source indices, cameras: `artifact_checks`).
        """
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not directory.is_dir():
            raise StageError(f"artifact directory not found: {directory}")
        if not path.is_file():
            raise StageError(f"{directory} has no {MANIFEST_FILE}: not a finished stage output")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StageError(f"{path}: not valid JSON ({err})") from None
        want = cls.model_fields["schema_id"].default
        if isinstance(data, dict) and data.get("schema_id") != want:
            raise StageError(f"{path}: schema_id is {data.get('schema_id')!r}, expected {want!r}")
        try:
            manifest = cls.model_validate(data)
        except ValidationError as err:
            raise StageError(format_validation_error(err, source=str(path))) from None
        missing = [f for f in manifest.files if not (directory / f).is_file()]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise StageError(f"{directory}: files listed in the manifest are missing: {missing[:3]}{more}")
        from stages.common.artifact_checks import check_artifact

        check_artifact(manifest, directory)
        return manifest

    def write(self, directory: Path) -> Path:
        """Write `manifest.json` atomically (temp file + rename); call it after every other file is written."""
        directory = Path(directory)
        missing = [f for f in self.files if not (directory / f).is_file()]
        if missing:
            raise RuntimeError(f"manifest lists files that were not written: {missing[:3]}")
        text = json.dumps(self.model_dump(mode="json"), indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are read by other users (containers run as uid 1000)
        os.replace(tmp, directory / MANIFEST_FILE)
        return directory / MANIFEST_FILE

    def sha256(self, directory: Path) -> str:
        """Hash of the manifest file as written in `directory` (used for `upstream`)."""
        return hashlib.sha256((Path(directory) / MANIFEST_FILE).read_bytes()).hexdigest()


class PreprocessManifest(Manifest):
    """Written by stages.preprocess; read by stages.mvgen and stages.distill.

    Frames are RGBA uint8 PNG, straight alpha, sRGB, square `size_px`, named by `frame_template`.
    """

    schema_id: Literal["fourd.preprocess/v1"] = "fourd.preprocess/v1"
    stage: Literal["preprocess"] = "preprocess"
    num_frames: int
    """Number of frames kept (the paper uses 8)."""
    size_px: int
    """Side of the square frames, pixels."""
    fps: float
    """Playback rate of the kept frames: source_fps / mean step between kept source indices."""
    source_fps: float
    """Frame rate of the source video (0 when the source was a folder of stills and no fps was given)."""
    source_num_frames: int
    """Frames in the source (T)."""
    source_indices: list[int]
    """Index into the source of each kept frame, in order."""
    source_size: tuple[int, int]
    """Source frame (width, height), pixels."""
    crop_box: tuple[int, int, int, int]
    """Square crop in source pixels (x0, y0, x1, y1), shared by all frames; may extend past the image."""
    alpha_source: Literal["input", "border", "rembg"]
    """Where the alpha came from: the input's own alpha channel, or a background-removal backend."""
    prompt: str | None
    """Text prompt describing the object, if one was given."""
    frame_template: str = "frames/rgba_{frame:05d}.png"
    """Path of frame i relative to the artifact directory."""
    preview_file: str = "preview.mp4"
    """White-composited H.264 preview video (for people; no stage reads it)."""

    def frame_paths(self, directory: Path) -> list[Path]:
        """Paths of the kept frames in time order."""
        return [Path(directory) / self.frame_template.format(frame=i) for i in range(self.num_frames)]


class ViewSet(BaseModel):
    """A set of views × frames of RGBA images with their cameras, inside an artifact directory.

    The common currency of multi-view artifacts: 4DM samples (mvgen), ground-truth renders (render), NeRF
    renders (distill). Evaluation pairs two view sets by camera (`cameras.json`) and by `source_indices`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_views: int
    num_frames: int
    size_px: int
    """Side of the square images, pixels."""
    frame_template: str
    """Path of view v, frame f relative to the artifact directory, e.g. `v{view:02d}/rgba_{frame:05d}.png`."""
    cameras_file: str
    """`cameras.json` (list of `stages.common.cameras.OrbitCamera`, one per view) relative to the artifact dir."""
    source_indices: list[int]
    """For each frame, the index of the input-video frame it shows (aligns predictions with ground truth)."""

    def frame_path(self, directory: Path, view: int, frame: int) -> Path:
        return Path(directory) / self.frame_template.format(view=view, frame=frame)

    def file_list(self) -> list[str]:
        """Every image file plus the cameras file, relative paths."""
        frames = [
            self.frame_template.format(view=v, frame=f) for v in range(self.num_views) for f in range(self.num_frames)
        ]
        return [*frames, self.cameras_file]


class MvgenManifest(Manifest):
    """Written by stages.mvgen (4DM samples); read by stages.distill and stages.eval."""

    schema_id: Literal["fourd.mvgen/v1"] = "fourd.mvgen/v1"
    stage: Literal["mvgen"] = "mvgen"
    views: ViewSet
    """The generated views (4 orthogonal azimuths 0/90/180/270 in our convention) × frames."""
    prompt: str | None
    fps: float
    """Playback rate, copied from the preprocess manifest."""


class MeshSequence(BaseModel):
    """Per-timestamp meshes of a distill artifact: marching cubes of the field's density, vertex colours from its
    rgb (stages/distill/README.md, `mesh` config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    templates: dict[Literal["obj", "glb"], str]
    """Path of frame `frame`'s mesh per format relative to the artifact directory, e.g.
    `{"obj": "meshes/mesh_{frame:05d}.obj"}`; frame f is the field at t = f / (num_frames − 1)."""
    num_frames: int
    threshold: float
    """Density (per world unit) of the extracted surface."""
    resolution: int
    """Density samples per side of the grid over the scene box."""
    num_vertices: list[int]
    """Per frame; 0 where the density never reaches the threshold (the files are then valid, empty meshes)."""
    num_faces: list[int]
    """Triangles per frame."""
    axes: str = "file (X, Y, Z) = world (y, z, x): +Y up, the input camera (azimuth 0) on +Z looking down −Z (glTF)"
    """How file coordinates relate to the z-up world of the cameras (stages/common/cameras.py)."""

    def frame_path(self, directory: Path, fmt: Literal["obj", "glb"], frame: int) -> Path:
        return Path(directory) / self.templates[fmt].format(frame=frame)

    def file_list(self) -> list[str]:
        """Every mesh file, relative paths, format by format."""
        return [t.format(frame=f) for t in self.templates.values() for f in range(self.num_frames)]


class DistillManifest(Manifest):
    """Written by stages.distill (the dynamic NeRF and its renders); read by stages.eval."""

    schema_id: Literal["fourd.distill/v1"] = "fourd.distill/v1"
    stage: Literal["distill"] = "distill"
    renders: ViewSet
    """Renders of the field at the 4 orthogonal eval cameras (azimuths 0/90/180/270) × every timestamp."""
    input_view_template: str = "renders/input_view/rgba_{frame:05d}.png"
    """Render at the input camera (azimuth 0, elevation 0) of frame `frame`."""
    field_file: str = "field.safetensors"
    """`DynamicNeRFField` state dict (hash grids in tiny-cuda-nn's parameter layout, both backends load it)."""
    field_config_file: str = "field_config.json"
    """The field's constructor keyword arguments (`_class_name` plus the hash grid and MLP settings)."""
    occupancy_file: str | None = "occupancy.safetensors"
    """The occupancy grid shared over time (`occupancy`, `binary`, resolution³ cells, x-major); None for Gaussians."""
    preview_file: str = "preview.mp4"
    """Orbit-over-time preview on white (for people; no stage reads it)."""
    train_log_file: str = "train_log.jsonl"
    """The losses of every `log_every_steps`-th step, one JSON object a line (`step`, `loss/…`, `psnr/anchor`)."""
    hash_backend: Literal["torch", "tcnn", "triton"]
    """Hash grid implementation that trained the field (the config's, also for Gaussians, which use none)."""
    representation: Literal["nerf", "gaussians"] = "nerf"
    """The field: the paper's dynamic NeRF, or 4D Gaussians (ours; `field_file` then holds their parameters and
    `field_config_file` says `"_class_name": "GaussianField4D"`, stages/distill/gaussians/field.py)."""
    num_steps: int
    """Optimisation steps run."""
    prompt: str | None
    fps: float
    """Playback rate of the timestamps, copied from upstream."""
    metrics: dict[str, float] = {}
    """Final training terms and PSNRs (`psnr/anchor`: anchor view vs the mvgen anchor video; `psnr/input_view`:
    input camera vs the preprocessed input frames)."""
    meshes: MeshSequence | None = None
    """Per-timestamp meshes, written only when the config's `mesh.enabled` is on."""


class RenderManifest(Manifest):
    """Written by stages.render from an animated 3D asset; read by stages.preprocess (input/) and stages.eval."""

    schema_id: Literal["fourd.render/v1"] = "fourd.render/v1"
    stage: Literal["render"] = "render"
    input_dir: str
    """Folder of the monocular input video's RGBA frames (`rgba_{frame:05d}.png`), usable as a
    `stages.preprocess --input`."""
    input_camera: dict
    """The input view's camera (`OrbitCamera` fields)."""
    gt: ViewSet
    """Ground-truth views × frames; frame i shows the same instant as input frame `gt.source_indices[i]`."""
    fps: float
    prompt: str | None
    train_dir: str | None = None
    """Multi-view training clips (4DM training), when rendered."""
    clip_metrics: dict[str, float] = {}
    """Curation measurements (motion, out-of-frame fraction, ...)."""


class SkippedMetric(BaseModel):
    """Why a metric has no value: its weights are missing. Never a zero in its place."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str
    """Human-readable cause, e.g. `weights not found`."""
    wanted: str
    """The file or folder the metric needed."""


class ViewPair(BaseModel):
    """One predicted view and the ground-truth view it was scored against (paired by camera)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prediction_view: int
    ground_truth_view: int
    azimuth_deg: float
    """The prediction camera's azimuth (the ground truth's agrees within the configured tolerance)."""
    elevation_deg: float


class EvalManifest(Manifest):
    """Written by stages.eval; read by `python -m stages.eval.aggregate` (and people, through report.html)."""

    schema_id: Literal["fourd.eval/v1"] = "fourd.eval/v1"
    stage: Literal["eval"] = "eval"
    prediction_stage: str
    """The stage whose views were scored (`distill`, or `mvgen` for its anchor videos)."""
    metrics: dict[str, float]
    """Same content as metrics.json: `{metric: value}` for every metric that was computed."""
    skipped: dict[str, SkippedMetric] = {}
    """Metrics that could not be computed, with the reason and the file they wanted."""
    view_pairs: list[ViewPair]
    """Prediction view ↔ ground-truth view, in prediction view order."""
    source_indices: list[int]
    """Input-video frame of each scored frame, in time order (prediction and GT frames are paired on it)."""
    protocol: dict[str, str | int | float]
    """What the numbers depend on: resolutions, clip length, networks, library versions."""
    psnr_capped_frames: int = 0
    """Frames whose PSNR hit the cap because prediction and ground truth were identical (MSE 0)."""
    metrics_file: str = "metrics.json"
    per_frame_file: str = "per_frame.csv"
    report_file: str = "report.html"
    grid_file: str = "grid.png"
    features_file: str | None = None
    """`i3d_features.safetensors` (`prediction`, `ground_truth`: V × 400 float64) when FVD was computed; the
    aggregate pools them over subjects."""


MANIFEST_CLASSES: dict[str, type[Manifest]] = {
    cls.model_fields["schema_id"].default: cls
    for cls in (PreprocessManifest, MvgenManifest, DistillManifest, RenderManifest, EvalManifest)
}


def load_any_manifest(directory: Path) -> Manifest:
    """Load a manifest whatever stage wrote it, dispatching on its `schema_id`.

    Raises:
        StageError: as `Manifest.load`, or an unknown schema.
    """
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise StageError(f"{directory} has no {MANIFEST_FILE}: not a finished stage output")
    try:
        schema = json.loads(path.read_text(encoding="utf-8")).get("schema_id")
    except (json.JSONDecodeError, AttributeError) as err:
        raise StageError(f"{path}: not a manifest ({err})") from None
    if schema not in MANIFEST_CLASSES:
        raise StageError(f"{path}: unknown schema_id {schema!r}; known: {sorted(MANIFEST_CLASSES)}")
    return MANIFEST_CLASSES[schema].load(directory)
