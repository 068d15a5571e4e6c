"""The one dtype vocabulary of the configs: ``float32``, ``bfloat16``, ``float16`` (torch's own names).

Every dtype setting (``encode.dtype``, ``model.dtype``) is one of :data:`DTYPE_NAMES`; code turns a name into
a ``torch.dtype`` only through :func:`torch_dtype`.
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_NAMES = tuple(DTYPES)


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; any other name than :data:`DTYPE_NAMES` is a ValueError."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}") from None
