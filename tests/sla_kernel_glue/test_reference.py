import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from sla_kernel_glue import SLAConfig, SparseLinearAttention, route, sla_reference
from sla_kernel_glue.functional import sla_branches

from .oracle import oracle_masks, oracle_sla

TORCH_QUARTER = SLAConfig(topk=0.25, blkq=16, blkk=16, backend="torch")


def _qkv(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(3)]


SHAPES = [
    # (B, H, N, d, blkq, blkk, topk)
    (1, 2, 64, 16, 16, 16, 0.25),
    (2, 1, 50, 8, 16, 8, 0.3),  # ragged N for both block sizes
    (1, 1, 5, 4, 16, 16, 0.5),  # N smaller than one block
    (1, 2, 96, 8, 32, 16, 0.1),  # topk below one block: k clamps to 1
    (1, 1, 40, 8, 8, 8, 1.0),  # everything critical
]


@pytest.mark.parametrize("b,h,n,d,bq,bk,topk", SHAPES)
@pytest.mark.parametrize("fmap", ["softmax", "elu", "relu"])
@pytest.mark.parametrize("scope", ["all", "marginal"])
def test_matches_dense_block_mask_oracle(b, h, n, d, bq, bk, topk, fmap, scope):
    q, k, v = _qkv((b, h, n, d))
    cfg = SLAConfig(topk=topk, blkq=bq, blkk=bk, feature_map=fmap, linear_scope=scope)
    out = sla_reference(q, k, v, config=cfg)
    o_s, o_l = oracle_sla(q, k, v, topk, bq, bk, fmap, linear_scope=scope)
    torch.testing.assert_close(out.o_sparse, o_s, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.o_linear, o_l, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scope", ["marginal", "all", "none"])
def test_negligible_blocks_and_linear_scope(scope):
    q, k, v = _qkv((2, 2, 70, 8))
    cfg = SLAConfig(topk=0.25, blkq=16, blkk=8, kl=0.3, linear_scope=scope)
    out = sla_reference(q, k, v, config=cfg)
    critical, negligible = oracle_masks(q, k, 0.25, 16, 8, 0.3)
    assert torch.equal(out.routing.critical, critical)
    assert torch.equal(out.routing.negligible, negligible)
    assert negligible.any() and not (negligible & critical).any()
    o_s, o_l = oracle_sla(q, k, v, 0.25, 16, 8, kl=0.3, linear_scope=scope)
    torch.testing.assert_close(out.o_sparse, o_s)
    torch.testing.assert_close(out.o_linear, o_l)
    assert (out.o_linear.abs().max() == 0) == (scope == "none")


def test_chunking_does_not_change_the_result():
    q, k, v = _qkv((1, 2, 200, 8))
    cfg = SLAConfig(topk=0.2, blkq=16, blkk=16)
    whole = sla_reference(q, k, v, config=cfg, chunk_blocks=100)
    pieces = sla_reference(q, k, v, config=cfg, chunk_blocks=3)
    torch.testing.assert_close(whole.o_sparse, pieces.o_sparse, rtol=0, atol=1e-12)
    torch.testing.assert_close(whole.o_linear, pieces.o_linear, rtol=0, atol=1e-12)


def test_at_least_one_critical_block_and_no_nan():
    q, k, v = _qkv((1, 1, 256, 8))
    cfg = SLAConfig(topk=1e-6, blkq=64, blkk=64)
    out = sla_reference(q, k, v, config=cfg)
    assert out.routing.n_critical == 1 and out.density == 0.25
    assert torch.isfinite(out.o_sparse).all() and torch.isfinite(out.o_linear).all()


@pytest.mark.parametrize("n", [64, 77])
def test_topk_one_with_zero_proj_l_equals_dense_sdpa(n):
    q, k, v = _qkv((2, 3, n, 16))
    sla = SparseLinearAttention(16, SLAConfig(topk=1.0, blkq=16, blkk=16, backend="torch")).double()
    out = sla(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.slow
def test_gradcheck_q_k_v_and_proj_l():
    q, k, v = (t.requires_grad_() for t in _qkv((1, 2, 24, 4), seed=3))
    sla = SparseLinearAttention(4, SLAConfig(topk=0.34, blkq=8, blkk=8, backend="torch"))
    sla.double()  # proj_l stays float32 by design; gradcheck needs float64 weights
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    cfg = sla.config
    routing = route(q, k, cfg)  # fixed routing: the router is not differentiable

    def fn(q, k, v, w, bias):
        outs = sla_reference(q, k, v, config=cfg, routing=routing, chunk_blocks=1)
        return outs.o_sparse + outs.o_linear @ w.T + bias

    assert torch.autograd.gradcheck(fn, (q, k, v, w, bias), eps=1e-6, atol=1e-5)


def test_gradients_reach_proj_l_through_the_module():
    q, k, v = (t.float().requires_grad_() for t in _qkv((1, 2, 40, 8)))
    sla = SparseLinearAttention(8, SLAConfig(topk=0.25, blkq=8, blkk=8, backend="torch"))
    sla(q, k, v).square().sum().backward()
    assert sla.proj_l.weight.grad is not None and sla.proj_l.weight.grad.abs().sum() > 0
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    q, k, v = _qkv((1, 2, 48, 8), dtype=torch.float32)
    sla = SparseLinearAttention(8, SLAConfig(topk=0.5, blkq=16, blkk=16, backend="torch"))
    torch.nn.init.normal_(sla.proj_l.weight)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    out = sla(q, k, v)
    assert out.dtype == dtype
    assert sla.proj_l.weight.dtype == torch.float32
    # proj_l computes in the inputs' dtype from its float32 weights (as autocast's linears do),
    # not on float32 copies of both branches.
    outs, _ = sla_branches(q, k, v, config=sla.config)
    w, b = (p.to(dtype) for p in (sla.proj_l.weight, sla.proj_l.bias))
    torch.testing.assert_close(
        out, outs.o_sparse.to(dtype) + F.linear(outs.o_linear.to(dtype), w, b), rtol=0, atol=0
    )
    # Same (rounded) inputs in float32: the same routing; the two differ by rounding only.
    full = sla(q.float(), k.float(), v.float())
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    torch.testing.assert_close(out.float(), full, rtol=tol, atol=tol)
    assert not torch.equal(out, full.to(dtype))  # it is not a float32 computation rounded once


def test_return_sparsity_and_shape_errors():
    q, k, v = _qkv((1, 1, 128, 8), dtype=torch.float32)
    sla = SparseLinearAttention(8, TORCH_QUARTER)
    out, density = sla(q, k, v, return_sparsity=True)
    assert out.shape == q.shape and density == 2 / 8
    with pytest.raises(ValueError, match="self-attention"):
        sla(q, k[:, :, :64], v[:, :, :64])
    with pytest.raises(ValueError, match=r"head dim of q \(8\) must equal head_dim \(4\)"):
        SparseLinearAttention(4, SLAConfig(topk=0.25))(q, k, v)


def test_the_module_holds_the_config_it_is_given():
    config = SLAConfig(topk=0.1, feature_map="elu", blkq=128)
    sla = SparseLinearAttention(64, config)
    assert sla.config is config  # passed down as it is, not rebuilt from its fields
    assert torch.count_nonzero(sla.proj_l.weight) == 0 and sla.proj_l.weight.dtype == torch.float32
    scheduled = SLAConfig.from_dict(
        {"topk_schedule": {"start": 1.0, "end": 0.1, "warmup_steps": 4}}
    )
    assert SparseLinearAttention(64, scheduled).config == SLAConfig(topk=0.1)  # at the end
    for loose in ({"topk": 0.1}, "{'topk': 0.1}", 0.1):
        with pytest.raises(TypeError, match="config must be an SLAConfig, got"):
            SparseLinearAttention(64, loose)


def test_cast_to_bf16_keeps_proj_l_float32_exactly():
    sla = SparseLinearAttention(8, SLAConfig(topk=0.25))
    torch.nn.init.normal_(sla.proj_l.weight)
    before = sla.proj_l.weight.detach().clone()
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), sla).to(torch.bfloat16)
    assert model[0].weight.dtype == torch.bfloat16
    assert sla.proj_l.weight.dtype == torch.float32
    assert torch.equal(sla.proj_l.weight, before)


def test_sparse_only_module_freezes_proj_l_and_returns_the_sparse_branch():
    from sla_kernel_glue import SparseLinearAttention

    q, k, v = (t.float().requires_grad_() for t in _qkv((1, 2, 64, 8)))
    attn = SparseLinearAttention(8, TORCH_QUARTER.replace(linear_scope="none"))
    assert not any(p.requires_grad for p in attn.proj_l.parameters())
    proj_calls = []
    attn.proj_l.register_forward_hook(lambda *_: proj_calls.append(1))
    out = attn(q, k, v)
    ref = sla_reference(q.detach(), k.detach(), v.detach(), config=attn.config)
    torch.testing.assert_close(out, ref.o_sparse)
    assert proj_calls == []  # o_linear is 0 and proj_l frozen at 0: not computed at all
    out.sum().backward()
    assert q.grad is not None and attn.proj_l.weight.grad is None
    # The same weights with the linear branch on give a different output once proj_l is non-zero.
    full = SparseLinearAttention(8, TORCH_QUARTER)
    torch.nn.init.eye_(full.proj_l.weight)
    assert not torch.allclose(full(q, k, v), out)
