"""apply_sla on plain PyTorch modules that call F.scaled_dot_product_attention: SDPA redirected
only inside the injected layers' forward, every dense fallback counted, exact removal."""

import threading

import pytest
import torch
from torch import nn
from torch.nn import functional

from sla_kernel_glue import SLAConfig, apply_sla
from sla_kernel_glue.sdpa_redirect import redirect_installed

TORCH_SDPA = torch._C._nn.scaled_dot_product_attention
DENSE_EQUIVALENT = SLAConfig(topk=1.0, blkq=16, blkk=16, backend="torch")
SPARSE = SLAConfig(topk=0.25, blkq=16, blkk=16, backend="torch")


class SelfAttention(nn.Module):
    """Multi-head self-attention calling torch SDPA, the way plain model code does."""

    def __init__(self, dim: int = 32, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
        o = functional.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, n, -1))


class TinyNet(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SelfAttention(dim) for _ in range(depth))
        self.mlp = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.mlp(x)


class ProbeAttention(nn.Module):
    """Calls SDPA on given q, k, v with given keyword arguments (diffusers' calling style)."""

    head_dim = 8

    def forward(self, q, k, v, **kwargs):
        return functional.scaled_dot_product_attention(query=q, key=k, value=v, **kwargs)


class NoSdpaAttention(nn.Module):
    head_dim = 8

    def forward(self, x):
        return x * 2


def make_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def x_input(seed: int = 1, n: int = 64) -> torch.Tensor:
    return torch.randn(2, n, 32, generator=torch.Generator().manual_seed(seed))


def qkv(b=1, h=2, n=32, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


def test_default_targets_inject_every_attention_layer_with_its_own_module():
    net = make_net()
    with apply_sla(net, SPARSE) as handle:
        assert sorted(handle.layers) == ["blocks.0", "blocks.1"]
        assert (
            handle.layers["blocks.0"].proj_l.weight is not handle.layers["blocks.1"].proj_l.weight
        )
        assert all(sla.head_dim == 16 for sla in handle.layers.values())
        assert "blocks.1.sla.proj_l.weight" in net.state_dict()


def test_every_layer_gets_the_config_object_itself_and_loose_settings_are_refused():
    net = make_net()
    with apply_sla(net, SPARSE) as handle:
        assert handle.config is SPARSE
        assert all(sla.config is SPARSE for sla in handle.layers.values())  # not rebuilt
    for loose in (SPARSE.to_dict(), "{'topk': 0.25}"):
        with pytest.raises(TypeError, match="config must be an SLAConfig, got"):
            apply_sla(net, loose)
    assert not hasattr(net.blocks[0], "sla")  # refused before anything was injected


def test_topk_one_equals_dense_and_sparse_differs():
    net, x = make_net(), x_input()
    with torch.no_grad():
        dense = net(x)
        with apply_sla(net, DENSE_EQUIVALENT) as handle:
            same = net(x)
            assert handle.sla_calls() == 2 and handle.total_fallbacks() == 0
        with apply_sla(net, SPARSE):
            sparse = net(x)
    torch.testing.assert_close(same, dense, rtol=1e-5, atol=1e-5)
    assert (sparse - dense).abs().max() > 1e-4


def test_training_step_changes_proj_l_in_every_layer():
    net = make_net()
    handle = apply_sla(net, SPARSE)
    before = {p: s.proj_l.weight.detach().clone() for p, s in handle.layers.items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net(x_input()).square().mean().backward()
    opt.step()
    assert all(not torch.equal(s.proj_l.weight, before[p]) for p, s in handle.layers.items())
    handle.remove()


def test_remove_restores_hooks_modules_and_outputs_exactly():
    net, x = make_net(), x_input()
    with torch.no_grad():
        dense = net(x)
    keys = list(net.state_dict())
    with apply_sla(net, SPARSE) as handle:
        with torch.no_grad():
            for sla in handle.layers.values():
                sla.proj_l.weight.normal_()
            net(x)
    for block in net.blocks:
        assert not block._forward_hooks and not block._forward_pre_hooks
        assert not block._forward_hooks_always_called and not hasattr(block, "sla")
    assert list(net.state_dict()) == keys
    assert functional.scaled_dot_product_attention is TORCH_SDPA
    with torch.no_grad():
        assert torch.equal(net(x), dense)


def test_other_model_and_bare_sdpa_calls_keep_dense_attention():
    net, other = make_net(0), make_net(1)  # `other` plays the VAE / text encoder
    x = x_input()
    q, k, v = qkv()
    with torch.no_grad():
        other_dense, bare_dense = other(x), TORCH_SDPA(q, k, v)
        with apply_sla(net, SPARSE, targets=["blocks.0", "blocks.1"]) as handle:
            net(x)
            calls = handle.sla_calls()
            assert torch.equal(other(x), other_dense)
            assert torch.equal(functional.scaled_dot_product_attention(q, k, v), bare_dense)
            assert handle.sla_calls() == calls == 2


def test_another_thread_keeps_dense_attention_while_a_layer_runs():
    net = make_net()
    q, k, v = qkv(n=64, d=16)
    expected = TORCH_SDPA(q, k, v)
    inside, done, seen = threading.Event(), threading.Event(), {}

    def other_thread():
        inside.wait(timeout=30)
        seen["installed"] = redirect_installed()
        seen["out"] = functional.scaled_dot_product_attention(q, k, v)
        done.set()

    def wait_in_layer(_module, _args):  # runs inside blocks.0's SLA scope
        inside.set()
        done.wait(timeout=30)

    with apply_sla(net, SPARSE) as handle:
        net.blocks[0].qkv.register_forward_pre_hook(wait_in_layer)
        worker = threading.Thread(target=other_thread)
        worker.start()
        with torch.no_grad():
            net(x_input())
        worker.join(timeout=30)
        assert handle.sla_calls() == 2
    assert seen["installed"] is True
    assert torch.equal(seen["out"], expected)


@pytest.mark.parametrize(
    "reason,shapes,kwargs",
    [
        ("mask", {}, {"attn_mask": torch.ones(32, 32, dtype=torch.bool)}),
        ("causal", {}, {"is_causal": True}),
        ("dropout", {}, {"dropout_p": 0.5}),
        ("scale", {}, {"scale": 0.5}),
        ("cross_attention", {"nk": 16}, {}),
        ("gqa", {"hk": 1}, {"enable_gqa": True}),
        ("head_dim", {"d": 4}, {}),
    ],
)
def test_unsupported_calls_stay_dense_and_are_counted(reason, shapes, kwargs):
    d, nk, hk = shapes.get("d", 8), shapes.get("nk", 32), shapes.get("hk", 2)
    q = qkv(d=d)[0]
    k, v = qkv(h=hk, n=nk, d=d, seed=1)[:2]
    probe = nn.Sequential(ProbeAttention())
    with apply_sla(probe, SPARSE) as handle:
        torch.manual_seed(0)
        out = probe[0](q, k, v, **kwargs)
        assert handle.fallback_counts() == {"0": {reason: 1}}
        assert handle.sla_calls() == 0
    torch.manual_seed(0)
    assert torch.equal(out, TORCH_SDPA(q, k, v, **kwargs))


def test_keyword_call_with_the_default_scale_goes_to_sla():
    q, k, v = qkv()
    probe = nn.Sequential(ProbeAttention())
    with apply_sla(probe, SPARSE) as handle:
        out = probe[0](q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=8**-0.5)
        assert handle.sla_calls() == 1 and handle.total_fallbacks() == 0
        torch.testing.assert_close(out, handle.layers["0"](q, k, v))


def test_layer_that_never_calls_sdpa_is_counted():
    model = nn.Sequential(NoSdpaAttention())
    with apply_sla(model, SPARSE) as handle:
        model(torch.ones(2))
        assert handle.fallback_counts() == {"0": {"no_sdpa_call": 1}}


def test_exception_inside_a_layer_closes_the_scope():
    net = make_net()
    with apply_sla(net, SPARSE):
        with pytest.raises(RuntimeError, match="boom"):
            net.blocks[0].out.register_forward_pre_hook(
                lambda *_: (_ for _ in ()).throw(RuntimeError("boom"))
            )
            net(x_input())
        assert not redirect_installed()
        assert functional.scaled_dot_product_attention is TORCH_SDPA


def test_targets_by_class_or_predicate_and_head_dim_errors():
    net = make_net()
    with apply_sla(net, SPARSE, targets=SelfAttention) as handle:
        assert sorted(handle.layers) == ["blocks.0", "blocks.1"]
    with apply_sla(net, SPARSE, targets=lambda path, _m: path == "blocks.1") as handle:
        assert list(handle.layers) == ["blocks.1"]
    with pytest.raises(ValueError, match="head dim of layer 'mlp'"):
        apply_sla(net, SPARSE, targets=["mlp"])
    with apply_sla(net, SPARSE, targets=["mlp"], head_dim=32) as handle:
        assert handle.layers["mlp"].head_dim == 32
    with pytest.raises(ValueError, match="found no attention layers"):
        apply_sla(nn.Linear(2, 2), SPARSE)


def test_a_deep_copy_with_sla_in_it_is_refused_not_silently_shared():
    import copy

    net = make_net()
    with apply_sla(net, SPARSE):
        clone = copy.deepcopy(net)
        with pytest.raises(RuntimeError, match="a copy of an SLA model"):
            clone(x_input())


def test_ddp_sees_the_sla_parameters_and_state_unwraps_it(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from sla_kernel_glue import load_sla_state, save_sla_state

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        net = make_net()
        handle = apply_sla(net, SPARSE)
        ddp = DistributedDataParallel(net)
        ddp_params = {id(p) for p in ddp.parameters()}
        assert all(id(s.proj_l.weight) in ddp_params for s in handle.layers.values())
        ddp(x_input()).square().mean().backward()
        assert all(s.proj_l.weight.grad.abs().sum() > 0 for s in handle.layers.values())
        path = save_sla_state(ddp, tmp_path / "ckpt")  # keys are the unwrapped module paths
        assert sorted(torch.load(path, weights_only=True)["layers"]) == ["blocks.0", "blocks.1"]
        assert load_sla_state(ddp, tmp_path / "ckpt") is True
        handle.remove()
        with pytest.raises(ValueError, match="before DistributedDataParallel wraps it"):
            apply_sla(ddp, SPARSE)
    finally:
        dist.destroy_process_group()
