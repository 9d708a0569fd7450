"""LoRA (Hu et al. 2021), written out: y = x W^T + b + (alpha / r) * dropout(x) A^T B^T.

The paper fine-tunes the full model; LoRA is an option here for fitting RL on a small GPU. `apply_lora` wraps
the decoder's attention and MLP projections (not the vision tower) and freezes everything else; `merge_lora`
folds W + (alpha / r) B A back into plain nn.Linear modules so that save_pretrained writes hub-layout keys.
Key names stay stable: a LoRALinear holds the base `weight` and `bias` itself (no `base.` prefix), and adds
only `lora_A` (r, in) and `lora_B` (out, r). Init as in the paper and peft: A kaiming-uniform, B zero, so the
wrapped model starts out equal to the base model. A and B are kept in float32 (like peft's default) even when
the base weights are bf16, since tiny RL updates vanish in bf16 parameters.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank=16, alpha=32.0, dropout=0.0):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias  # the frozen base, under its original key names
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # the same init nn.Linear (and peft) uses
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        delta = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A), self.lora_B)
        return y + (self.scale * delta).to(y.dtype)

    def merged_weight(self):
        w = self.weight.float() + self.scale * (self.lora_B.float() @ self.lora_A.float())  # (out, in)
        return w.to(self.weight.dtype)


def apply_lora(model, rank=16, alpha=32.0, targets=TARGETS, dropout=0.0, exclude=("visual.",)):
    """Freeze `model` and wrap every nn.Linear whose attribute name is in `targets` (and whose full name starts
    with none of `exclude`) in a LoRALinear. Returns the names of the wrapped modules."""
    model.requires_grad_(False)
    names = [name for name, mod in model.named_modules()
             if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets
             and not any(name.startswith(p) for p in exclude)]
    if not names:
        raise ValueError(f"apply_lora found no nn.Linear named one of {targets} outside {exclude}; check targets.")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, dropout))
    return names


def merge_lora(model):
    """Replace every LoRALinear by a plain nn.Linear holding W + (alpha / r) B A (in place; parameters keep the
    base's requires_grad, i.e. frozen). Returns the model."""
    names = [name for name, mod in model.named_modules() if isinstance(mod, LoRALinear)]
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lora = getattr(parent, attr)
        out_f, in_f = lora.weight.shape
        linear = nn.Linear(in_f, out_f, bias=lora.bias is not None, device="meta")  # no wasted random init
        linear.weight = nn.Parameter(lora.merged_weight().detach(), requires_grad=lora.weight.requires_grad)
        linear.bias = lora.bias
        setattr(parent, attr, linear)
    return model
