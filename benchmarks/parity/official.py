"""Import the official 4Diffusion modules (aejion/4Diffusion) from a checkout outside the repository.

The harness never copies official code: it imports the official files under their own dotted names from
`--official-src`. What the official package graph needs but the compared pieces never run is replaced in
`sys.modules` before the import, and each replacement is named in `STUBS` (the parity report lists them):

- `threestudio` and its sub-packages get bare package modules whose `__path__` is the official folder, so the
  official files import, but the official `__init__`s (which import the whole system: data modules, renderers,
  tcnn geometry, pytorch_lightning's trainer) are not run; `threestudio.register/find/info` are re-created.
- `xformers`: a CUDA-only wheel. The official spatial attention calls `xformers.ops.memory_efficient_attention`;
  the stand-in computes the same softmax(q·kᵀ/√d)·v with PyTorch (fp32, no dropout, no bias).
- `tinycudann` (imported by `threestudio.utils.misc`, used by its geometry, never by the guidance) and `igl`
  (imported by `threestudio.utils.ops` for mesh export): empty modules.
- `torchvision._meta_registrations`: PyPI's torchvision wheel is a CUDA build whose C++ ops cannot load into the
  CPU torch; that module only registers meta kernels for those ops. The compared pieces use torchvision's PIL
  transforms and `models.vgg16`, which are pure Python.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from pathlib import Path

import torch

__all__ = ["OfficialUnavailable", "Official", "load_official", "prepare_torchvision", "STUBS"]

STUBS: dict[str, str] = {}
"""Module name → why it is a stand-in (filled by `load_official`)."""

_REQUIRED = ("torchvision", "einops", "open_clip", "omegaconf", "pytorch_lightning", "jaxtyping")


class OfficialUnavailable(RuntimeError):
    """The official source or one of its real dependencies is missing (the message says which)."""


def _package(name: str, path: Path | None) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path is not None else []  # type: ignore[attr-defined]
    sys.modules[name] = module
    return module


def _stub(name: str, why: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module
    STUBS[name] = why
    return module


def _memory_efficient_attention(q, k, v, attn_bias=None, op=None):  # noqa: ANN001, ANN202 (xformers' signature)
    if attn_bias is not None:
        raise NotImplementedError("the official code never passes attn_bias")
    weight = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return weight @ v


def _unavailable(module: str):  # noqa: ANN202
    def attribute(name: str):  # noqa: ANN202
        if name.startswith("__"):
            raise AttributeError(name)

        def fail(*args: object, **kwargs: object) -> None:
            raise RuntimeError(f"{module}.{name} is a stand-in: the compared pieces never call it")

        return fail

    return attribute


def prepare_torchvision() -> None:
    """Make an installed but CUDA-built torchvision importable beside the CPU torch (module docstring); a no-op
    when torchvision is absent or imports as it is. Call it before anything imports transformers' image
    processors, which import torchvision when it is installed."""
    try:
        importlib.import_module("torchvision")
    except ImportError:
        return
    except RuntimeError as err:  # a CUDA torchvision wheel beside the CPU torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        _stub(
            "torchvision._meta_registrations",
            f"torchvision's C++ ops do not load into this torch ({str(err).splitlines()[0]}); only their meta "
            "kernels are skipped, the PIL transforms and models used here are pure Python",
        )
        importlib.import_module("torchvision")


class Official(types.SimpleNamespace):
    """The official modules the comparisons use (attributes named after the official files)."""


def load_official(src: Path) -> Official:
    """Import the official modules from the checkout `src` (idempotent).

    Raises:
        OfficialUnavailable: `src` is not a 4Diffusion checkout, or a real dependency is not installed.
    """
    src = Path(src).resolve()
    root = src / "threestudio"
    imagedream = root / "models" / "imagedream" / "imagedream"
    if not (imagedream / "ldm" / "interface.py").is_file():
        raise OfficialUnavailable(f"{src} is not a checkout of aejion/4Diffusion (no {imagedream}/ldm)")
    missing = []
    for name in _REQUIRED:
        try:
            if name == "torchvision":
                prepare_torchvision()
                importlib.import_module("torchvision")
            else:
                importlib.import_module(name)
        except ImportError as err:
            missing.append(f"{name} ({err})")
    if missing:
        raise OfficialUnavailable("the official code needs " + ", ".join(missing))
    if "threestudio" not in sys.modules or getattr(sys.modules["threestudio"], "__path__", [None])[0] != str(root):
        for name in [n for n in sys.modules if n == "threestudio" or n.startswith("threestudio.")]:
            del sys.modules[name]
        registry: dict[str, object] = {}

        def register(name: str):  # noqa: ANN202
            def decorator(cls):  # noqa: ANN001, ANN202
                registry[name] = cls
                return cls

            return decorator

        top = _package("threestudio", root)
        top.__dict__.update(
            register=register,
            find=registry.__getitem__,
            info=lambda *a, **k: None,
            debug=lambda *a, **k: None,
            warn=lambda *a, **k: None,
            __modules__=registry,
        )
        for sub in (
            "data",
            "models",
            "utils",
            "models.guidance",
            "models.prompt_processors",
            "models.imagedream",
            "models.imagedream.imagedream",
        ):
            _package(f"threestudio.{sub}", root.joinpath(*sub.split(".")))
        if importlib.util.find_spec("xformers") is None:
            _stub("xformers", "CUDA-only wheel; the stand-in attention does the same math in PyTorch")
            _stub("xformers.ops", "see xformers", memory_efficient_attention=_memory_efficient_attention)
            sys.modules["xformers"].ops = sys.modules["xformers.ops"]  # type: ignore[attr-defined]
        for name, why in (
            ("tinycudann", "imported by threestudio.utils.misc, used only by the hash-grid geometry"),
            ("igl", "imported by threestudio.utils.ops, used only by mesh export"),
        ):
            if importlib.util.find_spec(name) is None:
                _stub(name, why, __getattr__=_unavailable(name))
    pkg = "threestudio.models.imagedream.imagedream.ldm"
    modules = {
        "autoencoder": f"{pkg}.models.autoencoder",
        "openaimodel": f"{pkg}.modules.diffusionmodules.openaimodel",
        "adaptors": f"{pkg}.modules.diffusionmodules.adaptors",
        "encoders": f"{pkg}.modules.encoders.modules",
        "interface": f"{pkg}.interface",
        "ldm_util": f"{pkg}.util",
        "camera_utils": "threestudio.models.imagedream.imagedream.camera_utils",
        "guidance": "threestudio.models.guidance.multiview_video_diffusion_guidance",
        "prompt_base": "threestudio.models.prompt_processors.base",
        "prompt_sd": "threestudio.models.prompt_processors.stable_diffusion_prompt_processor",
        "loss_utils": "threestudio.utils.loss_utils",
        "ops": "threestudio.utils.ops",
        "misc": "threestudio.utils.misc",
        "lpips_modules": "threestudio.lpipsPyTorch.modules.lpips",
    }
    try:
        loaded = {key: importlib.import_module(name) for key, name in modules.items()}
    except ImportError as err:
        raise OfficialUnavailable(f"importing the official modules failed: {err}") from err
    return Official(src=src, **loaded)
