"""Strict loading straight into each parameter's final device and dtype (hand-built modules and state dicts)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fastvar.core.loading import build_and_load
from fastvar.errors import CheckpointError


class TwoParts(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)


def state_dict(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"body.weight": (3, 4), "body.bias": (3,), "head.weight": (2, 3), "head.bias": (2,)}
    return {k: torch.randn(*s, generator=g).to(dtype) for k, s in shapes.items()}


def body_in(dtype: torch.dtype):
    return lambda name: dtype if name.startswith("body.") else torch.float32


def test_each_parameter_takes_its_dtype_rounded_once():
    sd = state_dict(torch.float32)
    model = build_and_load(TwoParts, sd, what="toy", dtype=body_in(torch.bfloat16))
    for name, param in model.named_parameters():
        want = sd[name].to(torch.bfloat16) if name.startswith("body.") else sd[name]
        assert param.dtype == want.dtype and torch.equal(param, want), name  # the head is never rounded
        assert not param.requires_grad
    assert not model.training


def test_a_tensor_already_in_place_is_used_without_a_copy():
    sd = state_dict(torch.bfloat16)  # e.g. a bfloat16 checkpoint loaded for bfloat16 blocks
    model = build_and_load(TwoParts, sd, what="toy", dtype=body_in(torch.bfloat16))
    assert model.body.weight.data_ptr() == sd["body.weight"].data_ptr()
    assert model.head.weight.dtype == torch.float32 and torch.equal(model.head.weight, sd["head.weight"].float())
    uniform = build_and_load(TwoParts, state_dict(torch.float32), what="toy", dtype=torch.float16)
    assert {p.dtype for p in uniform.parameters()} == {torch.float16}


def test_a_wrong_key_is_still_an_error():
    sd = state_dict(torch.float32)
    sd["head.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="1 unexpected: head.extra"):
        build_and_load(TwoParts, sd, what="toy", dtype=body_in(torch.bfloat16))
