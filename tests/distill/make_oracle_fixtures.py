"""Write the oracle-mvgen fixtures of tests/distill/test_oracle.py from render-stage artifacts.

Each shared animated asset is rendered by the render stage (8 frames spanning one clip, 64², the 4 GT views), then
kept here as `fixtures/oracle_<name>.npz`: `rgb` (4, 8, S, S, 3) uint8 on white and `alpha` (4, 8, S, S) uint8, both
area-downsampled to S = 32. Regenerate with
the render venv (`make render-env`), from the repository root:

    for spec in "Fox Survey 3.4166666666666665" "Flamingo flamingo_flyA_ 1.4" "Parrot parrot_A_ 1.2" \\
                "RobotExpressive Dance 3.3333333333333335" "Alpaca_animated Walk 1.4583333333333333"; do
      set -- $spec; name=$(echo $1 | tr A-Z a-z)
      .venv-render/bin/python -m stages.render --config configs/render.yaml --size-px 64 --num-frames 8 \\
          --fps "$(python3 -c "print(7 / $3 * (1 + 1e-6))")" --input ../shared/assets/$1.glb --clip $2 \\
          --output out/oracle_renders/$name --subject $name
    done
    .venv/bin/python tests/distill/make_oracle_fixtures.py out/oracle_renders/*
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from stages.common.artifacts import RenderManifest  # noqa: E402
from stages.common.image_io import composite_on_white, read_rgba  # noqa: E402

SIZE_PX = 32


def shrink(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((SIZE_PX, SIZE_PX), Image.Resampling.BOX))


def main(directories: list[str]) -> None:
    for directory in map(Path, directories):
        manifest = RenderManifest.load(directory)
        gt = manifest.gt
        rgb, alpha = [], []
        for v in range(4):
            frames = [read_rgba(gt.frame_path(directory, v, f)) for f in range(gt.num_frames)]
            rgb.append([shrink(composite_on_white(im)) for im in frames])
            alpha.append([shrink(im[..., 3]) for im in frames])
        out = REPO / "tests/distill/fixtures" / f"oracle_{manifest.subject}.npz"
        np.savez_compressed(out, rgb=np.asarray(rgb, dtype=np.uint8), alpha=np.asarray(alpha, dtype=np.uint8))
        print(out, out.stat().st_size)


if __name__ == "__main__":
    main(sys.argv[1:])
