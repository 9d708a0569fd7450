"""LoRA: frozen base, only A/B train, merge equals the unmerged forward and restores the plain key names."""
import torch
import torch.nn as nn

from mmduet2.lora import LoRALinear, apply_lora, merge_lora


def lora_parameters(model):
    """The trainable LoRA parameters (every lora_A and lora_B) of `model`."""
    return [p for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")]


class Block(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.q_proj, self.k_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d, bias=False), nn.Linear(d, d)
        self.up_proj, self.down_proj = nn.Linear(d, 2 * d, bias=False), nn.Linear(2 * d, d, bias=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.o_proj(torch.tanh(self.q_proj(x)) * self.k_proj(x))
        return self.norm(x + self.down_proj(torch.relu(self.up_proj(x))))


class Toy(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.visual = Block(d)                       # carries q_proj too, but is excluded by default
        self.model = nn.Sequential(Block(d), Block(d))
        self.lm_head = nn.Linear(d, 11, bias=False)  # not a target

    def forward(self, x):
        return self.lm_head(self.model(self.visual(x)))


def make():
    torch.manual_seed(0)
    model = Toy()
    names = apply_lora(model, rank=4, alpha=8)
    for p in lora_parameters(model):  # B starts at zero; give it values so the adapter does something
        nn.init.normal_(p, std=0.3)
    return model, names


def test_apply_wraps_only_targets_and_freezes_the_rest():
    torch.manual_seed(0)
    ref = Toy()
    model, names = make()
    assert names == [f"model.{i}.{n}" for i in (0, 1) for n in ("q_proj", "k_proj", "o_proj", "up_proj",
                                                                 "down_proj")]
    assert isinstance(model.model[0].q_proj, LoRALinear) and isinstance(model.visual.q_proj, nn.Linear)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{x}" for m in names for x in "AB"}
    assert len(lora_parameters(model)) == 20
    # base keys keep their names; the wrapper only adds lora_A / lora_B
    keys = set(model.state_dict())
    assert set(ref.state_dict()) <= keys and keys - set(ref.state_dict()) == trainable
    a = model.model[0].q_proj
    assert a.lora_A.shape == (4, 8) and a.lora_B.shape == (8, 4) and a.scale == 2.0


def test_fresh_adapter_is_the_base_model():
    torch.manual_seed(0)
    ref = Toy()
    torch.manual_seed(0)
    model = Toy()
    apply_lora(model, rank=4, alpha=8)
    assert all((p == 0).all() for n, p in model.named_parameters() if n.endswith("lora_B"))
    # kaiming-uniform with a = sqrt(5) (nn.Linear's and peft's init) draws A from U(-1/sqrt(in), 1/sqrt(in))
    for n, p in model.named_parameters():
        if n.endswith("lora_A"):
            bound = p.shape[1] ** -0.5
            assert p.abs().max() <= bound and p.abs().max() > bound / 2, n
    x = torch.randn(3, 8)
    torch.testing.assert_close(model(x), ref(x), atol=0, rtol=0)


def test_training_step_changes_only_adapters():
    model, _ = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2, weight_decay=0.01)
    model(torch.randn(5, 8)).square().mean().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    opt.step()
    after = model.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == ("lora_" in k), k


def test_merge_equals_unmerged_and_restores_keys():
    torch.manual_seed(0)
    plain_keys = list(Toy().state_dict())
    model, names = make()
    x = torch.randn(7, 8)
    with torch.no_grad():
        want = model(x)
        merge_lora(model)
        got = model(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert list(model.state_dict()) == plain_keys
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    # the merged weight is W + (alpha / r) B A, and the base model's strict load accepts the state dict
    Toy().load_state_dict(model.state_dict(), strict=True)


def test_weight_formula_by_hand():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    w0 = lin.weight.detach().clone()
    lora = LoRALinear(lin, rank=2, alpha=6)
    with torch.no_grad():
        lora.lora_A.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
        lora.lora_B.copy_(torch.tensor([[1.0, 1.0], [0.0, -1.0]]))
    # B @ A = [[1, 1, 2], [0, -1, 0]], scale = 6 / 2 = 3
    w = w0 + 3 * torch.tensor([[1.0, 1.0, 2.0], [0.0, -1.0, 0.0]])
    torch.testing.assert_close(lora.merged_weight(), w)
    x = torch.randn(4, 3)
    torch.testing.assert_close(lora(x), x @ w.T + lin.bias, atol=1e-6, rtol=0)  # the unmerged forward, too
