"""Guard of the optimisation: losses or parameters that stop being finite end the run with a clear error."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from stages.common.errors import StageError

__all__ = ["check_finite"]

_HINT = "nothing was written; lower the learning rates (optimizer.*) or check the loss weights"


def check_finite(step: int, metrics: dict[str, Tensor | float], field: nn.Module) -> None:
    """Raise if a loss term of this step or a parameter of `field` is NaN or infinite, naming the step and the term.

    One device read per step: the loss terms and one flag per parameter, stacked. A NaN parameter does not always
    show in the losses (samples whose density is NaN fall below the alpha threshold and render as empty space), so
    the parameters are checked too.

    Raises:
        StageError: the first non-finite loss term (and the first non-finite parameter, if any).
    """
    names = [k for k, v in metrics.items() if k.startswith("loss/") and isinstance(v, Tensor)]
    named = list(field.named_parameters())
    flags = [metrics[k].detach().float().reshape(()) for k in names]
    flags += [p.detach().isfinite().all().float() for _, p in named]
    read = torch.stack(flags).tolist() if flags else []
    values = dict(zip(names, read[: len(names)], strict=True))
    values.update({k: float(v) for k, v in metrics.items() if k.startswith("loss/") and not isinstance(v, Tensor)})
    params = [n for (n, _), good in zip(named, read[len(names) :], strict=True) if not good]
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        term = next((k for k in bad if k != "loss/total"), bad[0])
        where = f"; parameter {params[0]!r} is NaN or infinite too" if params else ""
        raise StageError(f"step {step}: loss term {term!r} is {values[term]}{where}; {_HINT}")
    if params:
        more = f" (and {len(params) - 1} more)" if len(params) > 1 else ""
        raise StageError(f"step {step}: parameter {params[0]!r}{more} became NaN or infinite; {_HINT}")
