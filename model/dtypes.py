"""The one dtype vocabulary of the configs (``profiles.schema.Dtype``: ``float32``, ``bfloat16``,
``float16``, torch's own names) as torch dtypes.

Every dtype setting (``encode.dtype``, ``model.dtype``) is one of :data:`DTYPE_NAMES`; code turns a name into
a ``torch.dtype`` only through :func:`torch_dtype`.
"""

from __future__ import annotations

from typing import get_args

import torch

from profiles.schema import Dtype

DTYPE_NAMES: tuple[str, ...] = get_args(Dtype)
# the config names are torch's own attribute names, so the map is derived, never restated
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; any other name than :data:`DTYPE_NAMES` is a ValueError."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}") from None
