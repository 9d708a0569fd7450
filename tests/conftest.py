"""Fixtures shared by several test files."""
import pytest
import torch

from mmduet2.config import preset
from mmduet2.model import MMDuet2


@pytest.fixture(scope="module")
def model():
    """A random toy-preset model whose weights are pushed well past the 0.02 init, so positions and masks visibly
    change the logits (the cache tests compare logits of different ways of feeding the same tokens)."""
    torch.manual_seed(0)
    m = MMDuet2(preset("toy")).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m
