"""sla_attention, the public function: the module's one path, the reference plus proj_l, and its
keyword-only interface."""

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from sla_kernel_glue import (
    SLACallInfo,
    SLAConfig,
    SparseLinearAttention,
    route,
    sla_attention,
    sla_reference,
)

from .oracle import oracle_sla

CFG = SLAConfig(topk=0.25, blkq=16, blkk=16, backend="torch")


def _qkv(shape=(2, 2, 70, 8), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(3)]


def _proj(d=8, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, d, generator=g, dtype=dtype), torch.randn(d, generator=g, dtype=dtype)


@pytest.mark.parametrize("scope", ["all", "marginal", "none"])
def test_module_forward_is_sla_attention_with_its_proj_l(scope):
    q, k, v = _qkv(dtype=torch.float32)
    module = SparseLinearAttention(8, CFG.replace(linear_scope=scope))
    if scope != "none":
        with torch.no_grad():
            module.proj_l.weight.normal_()
            module.proj_l.bias.normal_()
    out, density = module(q, k, v, return_sparsity=True)
    fn_out, info = sla_attention(
        q,
        k,
        v,
        config=module.config,
        proj_l_weight=module.proj_l.weight,
        proj_l_bias=module.proj_l.bias,
        return_info=True,
    )
    assert torch.equal(out, fn_out)
    assert info == SLACallInfo(backend="torch", density=density)
    assert module.backend_calls == {"torch": 1}


@pytest.mark.parametrize("scope", ["all", "marginal"])
def test_matches_reference_and_oracle_plus_proj_l(scope):
    q, k, v = _qkv()
    w, b = _proj()
    cfg = CFG.replace(linear_scope=scope)
    out = sla_attention(q, k, v, config=cfg, proj_l_weight=w, proj_l_bias=b)
    branches = sla_reference(q, k, v, config=cfg)
    torch.testing.assert_close(out, branches.o_sparse + F.linear(branches.o_linear, w, b))
    o_s, o_l = oracle_sla(q, k, v, 0.25, 16, 16, linear_scope=scope)
    torch.testing.assert_close(out, o_s + o_l @ w.T + b, rtol=1e-10, atol=1e-10)
    without_bias = sla_attention(q, k, v, config=cfg, proj_l_weight=w)
    torch.testing.assert_close(without_bias, o_s + o_l @ w.T, rtol=1e-10, atol=1e-10)


def test_sparse_only_needs_no_projection():
    q, k, v = _qkv()
    cfg = CFG.replace(linear_scope="none")
    out, info = sla_attention(q, k, v, config=cfg, proj_l_weight=None, return_info=True)
    torch.testing.assert_close(out, sla_reference(q, k, v, config=cfg).o_sparse)
    assert info.density == route(q, k, cfg).density == 1 / 5  # N 70: T_n 5, one critical block


def test_gradients_reach_v_and_the_projection():
    # q and k fixed: the block choice is not differentiable, v and proj_l are.
    q, k, v = _qkv((1, 2, 24, 4), seed=3)
    w, b = (t.requires_grad_() for t in _proj(4, seed=4))
    cfg = SLAConfig(topk=0.34, blkq=8, blkk=8, backend="torch")

    def fn(v, w, b):
        return sla_attention(q, k, v, config=cfg, proj_l_weight=w, proj_l_bias=b)

    assert torch.autograd.gradcheck(fn, (v.requires_grad_(), w, b), eps=1e-6, atol=1e-5)


def test_arguments_after_q_k_v_are_keyword_only_and_checked():
    q, k, v = _qkv()
    w, b = _proj()
    with pytest.raises(TypeError):
        sla_attention(q, k, v, CFG, w, b)  # type: ignore[misc]
    with pytest.raises(TypeError, match="config must be an SLAConfig, got dict"):
        sla_attention(q, k, v, config={"topk": 0.25}, proj_l_weight=w)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="proj_l_weight is required for linear_scope 'all'"):
        sla_attention(q, k, v, config=CFG, proj_l_weight=None)
    with pytest.raises(ValueError, match=r"head dim of q \(8\) must equal head_dim \(4\)"):
        sla_attention(q, k, v, config=CFG, proj_l_weight=w[:4, :4])
    with pytest.raises(ValueError, match=r"proj_l_bias \(4,\) must be \(d,\) = \(8,\)"):
        sla_attention(q, k, v, config=CFG, proj_l_weight=w, proj_l_bias=b[:4])
    with pytest.raises(ValueError, match="self-attention"):
        sla_attention(q, k[:, :, :32], v[:, :, :32], config=CFG, proj_l_weight=w)
