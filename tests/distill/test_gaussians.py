"""The 4D Gaussian representation (ours): the torch rasteriser's gradients and known answers, the camera convention
against the NeRF's rays, the motion model, a tiny fit that must converge, and a bit-identical resume."""

from __future__ import annotations

import math

import pytest
import torch

from stages.common.cameras import OrbitCamera, focal_length_px
from stages.common.errors import StageError
from stages.distill.anchor import AnchorTarget
from stages.distill.cameras import camera_rays
from stages.distill.gaussians import GaussianField4D, GaussianTrainer, camera_matrices, rasterize_torch
from stages.distill.gaussians.gsplat_backend import require_gsplat
from stages.distill.gaussians.init import visual_hull_init
from stages.distill.gaussians.rasterize import ALPHA_MIN
from stages.distill.schedules import LinearSchedule
from tests.distill.tiny import tiny_distill_config

CPU = torch.device("cpu")
FRONT = OrbitCamera.from_angles(0, 0.0, 0.0, 1.1, 45.0)
IDENTITY = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
WHITE = torch.ones(3)


def render(means, scales, opacities, colours, cameras, size, quats=None, background=WHITE, **kw):
    """One batch (time) of Gaussians from `cameras`: rasterize_torch's output with the batch dimension dropped."""
    viewmats, ks = camera_matrices(cameras, size)
    dtype = means.dtype
    quats = IDENTITY.to(dtype).expand(means.shape[0], 4) if quats is None else quats
    out = rasterize_torch(
        means[None],
        quats,
        scales,
        opacities,
        colours,
        viewmats.to(dtype),
        ks.to(dtype),
        size,
        background=background.to(dtype),
        **kw,
    )
    return out.rgb[0], out.alpha[0, ..., 0], out.depth[0, ..., 0]


def test_single_isotropic_gaussian_renders_the_analytic_2d_gaussian():
    size, s, o = 32, 0.03, 0.8
    colour = torch.tensor([[0.2, 0.6, 0.4]])
    rgb, alpha, depth = render(torch.zeros(1, 3), torch.full((1, 3), s), torch.tensor([o]), colour, [FRONT], size)
    # On the axis at depth 1.1 the projection is (f s / z)² I, plus the 0.3 px² dilation.
    var = (focal_length_px(45.0, size) * s / 1.1) ** 2 + 0.3
    centres = torch.arange(size) + 0.5
    r2 = (centres[:, None] - size / 2) ** 2 + (centres[None, :] - size / 2) ** 2
    expected = o * torch.exp(-0.5 * r2 / var)
    expected = torch.where(expected >= ALPHA_MIN, expected, torch.zeros_like(expected))
    torch.testing.assert_close(alpha[0], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rgb[0], expected[..., None] * colour + (1 - expected[..., None]), atol=1e-6, rtol=1e-5)
    assert depth[0, size // 2, size // 2] == pytest.approx(1.1, abs=1e-5)
    assert alpha[0].max() == pytest.approx(o * math.exp(-0.5 * 0.5 / var), rel=1e-5)  # centres ½ px off the mean


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_two_gaussians_composite_front_to_back_whatever_their_index_order(order):
    means = torch.tensor([[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0]])  # the first is nearer the front camera (+x)
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    opacities = torch.tensor([0.6, 0.9])
    scales = torch.full((2, 3), 0.05)
    rgb, alpha, depth = render(means[order], scales[order], opacities[order], colours[order], [FRONT], 16)
    a = rgb.new_tensor([0.6, 0.9]) * torch.exp(
        torch.tensor(
            [
                -0.5 * 0.5 / v
                for v in (
                    (focal_length_px(45.0, 16) * 0.05 / 0.8) ** 2 + 0.3,
                    (focal_length_px(45.0, 16) * 0.05 / 1.4) ** 2 + 0.3,
                )
            ]
        )
    )
    expected = a[0] * colours[0] + (1 - a[0]) * a[1] * colours[1] + (1 - a[0]) * (1 - a[1]) * WHITE
    torch.testing.assert_close(rgb[0, 8, 8], expected, atol=1e-6, rtol=1e-5)
    assert alpha[0, 8, 8] == pytest.approx(float(1 - (1 - a[0]) * (1 - a[1])), rel=1e-5)
    w = torch.stack([a[0], (1 - a[0]) * a[1]])
    assert depth[0, 8, 8] == pytest.approx(float((w * torch.tensor([0.8, 1.4])).sum() / w.sum()), rel=1e-5)


def test_a_gaussian_behind_the_camera_contributes_nothing():
    behind = torch.tensor([[1.6, 0.0, 0.0]])  # the camera is at x = 1.1 looking towards -x
    rgb, alpha, _ = render(behind, torch.full((1, 3), 0.2), torch.tensor([0.99]), torch.zeros(1, 3), [FRONT], 16)
    assert torch.equal(alpha, torch.zeros_like(alpha)) and torch.equal(rgb, torch.ones_like(rgb))
    rgb, alpha, _ = render(
        torch.zeros(1, 3), torch.full((1, 3), 0.2), torch.tensor([0.99]), torch.zeros(1, 3), [FRONT], 16
    )
    assert alpha.max() > 0.9  # the same Gaussian in front of it is drawn


@pytest.mark.parametrize(
    "azimuth, elevation, pixel", [(0.0, 0.0, (3, 12)), (30.0, 10.0, (5, 11)), (-135.0, 4.0, (14, 2))]
)
def test_a_gaussian_lands_on_the_pixel_whose_nerf_ray_goes_through_it(azimuth, elevation, pixel):
    """The Gaussian path and the NeRF see the same views: a world point on `camera_rays`' ray of pixel (row, col)
    rasterises at that pixel."""
    size = 16
    camera = OrbitCamera.from_angles(0, azimuth, elevation, 1.1, 45.0)
    rays = camera_rays(camera, size)
    index = pixel[0] * size + pixel[1]
    point = rays.origins[index] + 0.9 * rays.directions[index]
    _, alpha, _ = render(
        point[None], torch.full((1, 3), 0.004), torch.tensor([0.9]), torch.zeros(1, 3), [camera], size
    )
    assert divmod(int(alpha[0].argmax()), size) == pixel
    assert alpha[0].max() == pytest.approx(0.9, rel=1e-3)  # at the pixel's centre: the peak


def test_rasteriser_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(0)
    n, dtype = 3, torch.float64
    means = ((torch.rand(n, 3, generator=gen) - 0.5) * 0.2).to(dtype).requires_grad_()
    quats = torch.randn(n, 4, generator=gen).to(dtype).requires_grad_()
    scales = (0.08 + 0.04 * torch.rand(n, 3, generator=gen)).to(dtype).requires_grad_()
    opacities = (0.3 + 0.5 * torch.rand(n, generator=gen)).to(dtype).requires_grad_()
    colours = torch.rand(n, 3, generator=gen).to(dtype).requires_grad_()
    cameras = [OrbitCamera.from_angles(0, 20.0, 5.0, 1.1, 45.0)]

    def images(m, q, s, o, c):
        rgb, alpha, depth = render(m, s, o, c, cameras, 6, quats=q)
        return rgb, alpha, depth

    assert torch.autograd.gradcheck(images, (means, quats, scales, opacities, colours), eps=1e-6, atol=1e-6)


def test_motion_model_moves_the_centres_along_their_polynomial():
    field = GaussianField4D(5, motion_degree=2)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        field.means.copy_(torch.randn(5, 3, generator=gen))
        field.motion.copy_(torch.randn(5, 2, 3, generator=gen))
    times = torch.tensor([0.0, 0.25, 1.0])
    at = field.means_at(times)
    assert torch.equal(at[0], field.means.detach())  # t = 0 is the canonical scene
    for i, t in enumerate(times.tolist()):
        expected = field.means + field.motion[:, 0] * t + field.motion[:, 1] * t**2
        torch.testing.assert_close(at[i], expected)
    static = GaussianField4D(5, motion_degree=0)
    assert static.means_at(times).shape == (3, 5, 3) and not [
        n for n, _ in static.named_parameters() if n == "motion" and _.numel()
    ]


# -- the trainer on a known Gaussian scene --------------------------------------------------------------------------

TRUTH_MEANS = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.12, 0.08], [0.05, -0.1, -0.06], [-0.08, 0.0, 0.1]])
TRUTH_MOTION = torch.tensor([[0.0, 0.0, 0.08], [0.0, 0.0, 0.0], [0.0, 0.06, 0.0], [0.0, 0.0, 0.0]])
TRUTH_COLOURS = torch.tensor([[0.9, 0.3, 0.1], [0.1, 0.6, 0.9], [0.2, 0.8, 0.2], [0.9, 0.9, 0.2]])
CAMS4 = [OrbitCamera.from_angles(v, a, 0.0, 1.1, 45.0) for v, a in enumerate((0.0, 90.0, 180.0, 270.0))]
SIZE, FRAMES = 16, 2


def truth_anchor() -> AnchorTarget:
    """4 orthogonal videos of 2 frames of a known moving 4-Gaussian scene on white, with its masks."""
    videos, masks = [], []
    for t in (0.0, 1.0):
        means = TRUTH_MEANS + TRUTH_MOTION * t
        rgb, alpha, _ = render(means, torch.full((4, 3), 0.06), torch.full((4,), 0.95), TRUTH_COLOURS, CAMS4, SIZE)
        videos.append(rgb.permute(0, 3, 1, 2))  # (A, 3, H, W)
        masks.append((alpha > 0.5).float()[:, None])
    videos, masks = torch.stack(videos, 1), torch.stack(masks, 1)  # (A, F, ·, H, W)
    return AnchorTarget(
        frames=videos[0], camera=CAMS4[0], extra_frames=videos[1:], extra_cameras=CAMS4[1:], masks=masks
    )


def fit_config(num_steps: int, **gaussians):
    tiny = tiny_distill_config()
    w = tiny.loss_weights.model_copy(
        update={
            "sds": 0.0,
            "anchor_lpips": 0.0,
            "anchor_dssim": 0.0,
            "orient": LinearSchedule.constant(0.0),
            "sparsity": LinearSchedule.constant(0.0),
            "opaque": LinearSchedule.constant(0.0),
            "reconstruction_rgb": LinearSchedule.constant(1.0),
            "reconstruction_mask": LinearSchedule.constant(0.1),
        }
    )
    return tiny.model_copy(
        update={
            "num_steps": num_steps,
            "loss_weights": w,
            "field": tiny.field.model_copy(
                update={"representation": "gaussians", "bbox_radius": 0.3, "blob_radius": 0.2}
            ),
            "gaussians": tiny.gaussians.model_copy(update={"num_gaussians": 48, **gaussians}),
            "reconstruction": tiny.reconstruction.model_copy(update={"rays_per_step": 2 * SIZE * SIZE}),
            "optimizer": tiny.optimizer.model_copy(update={"final_lr_factor": 0.3}),
        }
    )


def psnr_all_views(trainer: GaussianTrainer, anchor: AnchorTarget) -> float:
    with torch.no_grad():
        rgb = trainer.images(anchor.cameras, trainer.times, SIZE).rgb  # (F, A, H, W, 3)
    target = anchor.videos().permute(1, 0, 3, 4, 2)
    return float(-10 * torch.log10((rgb - target).pow(2).mean()))


def test_a_tiny_fit_of_a_known_moving_scene_converges():
    anchor = truth_anchor()
    config = fit_config(100, means_lr=0.02, motion_lr=0.02, scales_lr=0.02, colour_lr=0.05)
    trainer = GaussianTrainer(config, anchor, guidance=None, conditioning=None, lpips=None, device=CPU)
    start = psnr_all_views(trainer, anchor)
    trainer.fit(config.num_steps)
    end = psnr_all_views(trainer, anchor)
    assert start < 25.0 and end > 30.0, (start, end)  # measured: 21.6 (the visual hull) → 34.9 dB
    assert trainer.field.motion.detach().abs().max() > 0.01  # the motion was fitted, not only the shapes


def test_the_visual_hull_starts_the_gaussians_inside_the_subject():
    anchor = truth_anchor()
    trainer = GaussianTrainer(fit_config(1), anchor, guidance=None, conditioning=None, lpips=None, device=CPU)
    means = trainer.field.means.detach()
    nearest = torch.cdist(means, TRUTH_MEANS).min(1).values
    assert float(nearest.max()) < 0.2 and means.abs().max() <= 0.3  # near the truth's blobs, inside the box


def test_a_resumed_run_continues_bit_identically(tmp_path):
    anchor = truth_anchor()
    config = fit_config(4).model_copy(update={"checkpoint_every_steps": 1})

    def make() -> GaussianTrainer:
        return GaussianTrainer(config, anchor, guidance=None, conditioning=None, lpips=None, device=CPU)

    straight = make()
    straight.fit(4)
    first = make()
    first.fit(2, checkpoint_dir=tmp_path)
    del first
    resumed = make()
    resumed.fit(4, checkpoint_dir=tmp_path)
    assert resumed.step == 4
    for (name, a), b in zip(straight.field.state_dict().items(), resumed.field.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert sa and all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert [g["lr"] for g in straight.optimizer.param_groups] == [g["lr"] for g in resumed.optimizer.param_groups]
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())


def test_the_gsplat_backend_says_what_it_needs():
    with pytest.raises(StageError, match="needs CUDA"):
        require_gsplat(CPU)


def test_without_masks_the_gaussians_start_in_the_blob_sphere():
    anchor = truth_anchor()
    start = visual_hull_init(
        500,
        masks=None,
        videos=anchor.videos(),
        cameras=anchor.cameras,
        bbox_radius=0.3,
        blob_radius=0.2,
        generator=torch.Generator().manual_seed(0),
    )
    radii = start.means.norm(dim=-1)
    assert not start.from_hull and radii.max() <= 0.2 and radii.min() < 0.1  # filled, not a shell
    empty = torch.zeros_like(anchor.masks)  # masks that cover nothing: no hull either
    again = visual_hull_init(
        500,
        masks=empty,
        videos=anchor.videos(),
        cameras=anchor.cameras,
        bbox_radius=0.3,
        blob_radius=0.2,
        generator=torch.Generator().manual_seed(0),
    )
    assert not again.from_hull and again.means.norm(dim=-1).max() <= 0.2
