"""model.dtypes: the one dtype vocabulary of the configs."""

import typing

import pytest
import torch

from model.dtypes import DTYPE_NAMES, torch_dtype
from profiles import schema


def test_names_map_to_torch_dtypes():
    assert DTYPE_NAMES == ("float32", "bfloat16", "float16")
    assert [torch_dtype(n) for n in DTYPE_NAMES] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(ValueError, match="'bf16' is not one of float32, bfloat16, float16"):
        torch_dtype("bf16")


def test_every_dtype_setting_uses_the_vocabulary():
    fields = {
        (cls.__name__, name): hint
        for cls in vars(schema).values()
        if isinstance(cls, type) and hasattr(cls, "__dataclass_fields__")
        for name, hint in typing.get_type_hints(cls).items()
        if name.endswith("dtype")
    }
    assert {("EncodeConfig", "dtype"), ("ModelSection", "dtype")} <= set(fields)
    assert all(hint == schema.Dtype for hint in fields.values()), fields
