"""router "learned" and mix "alpha" (learned_router.py): the settings, today's output at the
identity / alpha 1, and the reference's forward and gradients against a dense float64 oracle."""

import math

import pytest
import torch

from sla_kernel_glue import SLAConfig
from sla_kernel_glue.functional import ROUTER_GRADIENT_REASON, sla_attention
from sla_kernel_glue.learned_router import learned_route
from sla_kernel_glue.module import SparseLinearAttention

from .oracle import phi


def test_defaults_keep_todays_dict_and_bad_values_are_one_line():
    assert SLAConfig().to_dict() == SLAConfig(router="fixed", mix="add").to_dict()
    assert "router" not in SLAConfig().to_dict() and "mix" not in SLAConfig().to_dict()
    learned = SLAConfig.from_dict({"router": "learned", "mix": "alpha"})
    assert learned.to_dict()["router"] == "learned" and learned.learned
    assert SLAConfig.from_dict(learned.to_dict()) == learned
    for values, match in (
        ({"router": "smart"}, r"router \('smart'\) must be one of fixed, learned"),
        ({"mix": "sum"}, r"mix \('sum'\) must be one of add, alpha"),
        ({"mix": "alpha", "linear_scope": "none"}, "linear_scope 'none' has no linear branch"),
    ):
        with pytest.raises(ValueError, match=match) as exc:
            SLAConfig.from_dict(values)
        assert "\n" not in str(exc.value)


def inputs(b=1, h=2, n=100, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((b, h, n, d), generator=g, dtype=dtype) for _ in range(3)]


def layer(config, seed=1, randomize=True):
    torch.manual_seed(seed)
    m = SparseLinearAttention(16, config)
    if randomize:
        with torch.no_grad():
            m.proj_l.weight.normal_(0, 0.3)
            m.proj_l.bias.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("scope", ["all", "marginal"])
@pytest.mark.parametrize("grad", [False, True])
def test_identity_router_is_todays_output_bitwise(scope, grad):
    # The same code path (the reference, backend torch) with and without the learned router: x I
    # is exact and the gate is 0 in value, so the selection and the output are bit for bit the same.
    base = SLAConfig(topk=0.3, blkq=16, blkk=16, kl=0.1, linear_scope=scope, backend="torch")
    q, k, v = (t.requires_grad_(grad) for t in inputs())
    fixed, learned = layer(base), layer(base.replace(router="learned"))
    learned.load_state_dict(fixed.state_dict(), strict=False)
    with torch.set_grad_enabled(grad):
        assert torch.equal(learned(q, k, v), fixed(q, k, v))


def test_alpha_one_with_fresh_proj_l_is_todays_output_bitwise():
    base = SLAConfig(topk=0.3, blkq=16, blkk=16, backend="torch")
    q, k, v = inputs()
    fixed = layer(base, randomize=False)
    mixed = layer(base.replace(mix="alpha", router="learned"), randomize=False)
    assert torch.equal(mixed(q, k, v), fixed(q, k, v))
    # with a trained proj_l, alpha 1 keeps the sparse branch alone: o_sparse
    with torch.no_grad():
        mixed.proj_l.weight.normal_()
    out = mixed(q, k, v)
    sparse_only = layer(base.replace(linear_scope="none"), randomize=False)
    assert torch.equal(out, sparse_only(q, k, v))


def oracle_learned(q, k, v, m, config):
    """Dense float64 SLA with the learned router's hard top-k, its straight-through soft top-k gate
    (added to the critical tokens' logits, subtracted from the marginal linear weights) and the
    alpha mix, token by token, written from learned_router.py's docstring."""
    b, h, n, d = q.shape
    bq, bk = config.blkq, config.blkk
    t_m, t_n = math.ceil(n / bq), math.ceil(n / bk)
    ks = k - k.mean(dim=-2, keepdim=True)
    pq = torch.stack([q[:, :, i * bq : (i + 1) * bq].mean(2) for i in range(t_m)], 2)
    pk = torch.stack([ks[:, :, j * bk : (j + 1) * bk].mean(2) for j in range(t_n)], 2)
    wq, wk = (w.detach().double().requires_grad_() for w in (m.router_q.weight, m.router_k.weight))
    s = (pq.detach() @ wq.T) @ (pk.detach() @ wk.T).transpose(-1, -2)
    kc = max(1, math.floor(config.topk * t_n + 1e-9))
    ranked = s.detach().sort(-1, descending=True).values
    temp = s.detach().std(-1, keepdim=True, correction=0)
    tau = (ranked[..., kc - 1 : kc] + ranked[..., kc : kc + 1]) / 2
    soft = torch.sigmoid((s - tau) / temp)
    gate = soft - soft.detach()
    critical = torch.zeros_like(s, dtype=torch.bool).scatter_(
        -1, s.detach().argsort(-1, descending=True)[..., :kc], True
    )
    qb, kb = torch.arange(n) // bq, torch.arange(n) // bk
    tok = lambda x: x[:, :, qb][:, :, :, kb]  # noqa: E731 - (T_m, T_n) blocks to (N, N) tokens
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(d) + tok(gate)
    o_s = torch.softmax(logits.masked_fill(~tok(critical), float("-inf")), -1) @ v
    marginal = (~critical).double() - gate if config.linear_scope == "marginal" else 1.0
    a = (phi(q, "softmax") @ phi(k, "softmax").transpose(-1, -2)) * tok(marginal + 0 * s)
    o_l = (a @ v) / (a.sum(-1, keepdim=True) + 1e-6)
    alpha = m.alpha.detach().double().requires_grad_()
    w, bias = m.proj_l.weight.double(), m.proj_l.bias.double()
    out = alpha * o_s + (1 - alpha) * (o_l @ w.T + bias)
    return out, (wq, wk, alpha)


@pytest.mark.parametrize("scope", ["all", "marginal"])
def test_reference_forward_and_gradients_match_the_dense_oracle(scope):
    config = SLAConfig(
        topk=0.5,
        blkq=16,
        blkk=16,
        linear_scope=scope,
        backend="torch",
        router="learned",
        mix="alpha",
    )
    m = layer(config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # away from the init, where every gradient is in play
        m.router_q.weight.add_(0.3 * torch.randn(16, 16, generator=g))
        m.router_k.weight.add_(0.3 * torch.randn(16, 16, generator=g))
        m.alpha.uniform_(0.3, 0.9, generator=g)
    q, k, v = (t.requires_grad_() for t in inputs(n=96, dtype=torch.float64))
    grad_out = torch.randn(q.shape, generator=g, dtype=torch.float64)
    out = m(q, k, v)
    out.backward(grad_out)
    ours = [m.router_q.weight.grad, m.router_k.weight.grad, m.alpha.grad, q.grad, k.grad, v.grad]
    qo, ko, vo = (t.detach().clone().requires_grad_() for t in (q, k, v))
    expected, leaves = oracle_learned(qo, ko, vo, m, config)
    expected.backward(grad_out)
    exact = [t.grad for t in (*leaves, qo, ko, vo)]
    # float64 throughout (float32 parameters, exact in float64): only summation order differs
    assert torch.allclose(out, expected, rtol=1e-9, atol=1e-9)
    for name, a, e in zip(["Wq", "Wk", "alpha", "dq", "dk", "dv"], ours, exact, strict=True):
        assert e.abs().max() > 0, name
        assert torch.allclose(a.double(), e, rtol=1e-6, atol=1e-6 * e.abs().max()), name


def test_router_trains_only_through_the_reference_and_selects_like_the_fixed_router_at_init(
    caplog,
):
    config = SLAConfig(topk=0.25, blkq=16, blkk=16, router="learned")
    m = layer(config)
    q, k, v = inputs()
    with caplog.at_level("WARNING"):
        _, info = sla_attention(
            q, k, v, config=config, proj_l_weight=m.proj_l.weight,
            router_weights=(m.router_q.weight, m.router_k.weight), return_info=True,
        )  # fmt: skip
    assert info.backend == "torch"  # CPU anyway; the reason is logged once per process
    routing = learned_route(q, k, config, m.router_q.weight, m.router_k.weight)
    assert routing.gate is not None and not routing.gate.any()
    with torch.no_grad():
        hard = learned_route(q, k, config, m.router_q.weight, m.router_k.weight)
    assert hard.gate is None and torch.equal(hard.indices, routing.indices)
    assert ROUTER_GRADIENT_REASON.startswith("the learned router trains")


def test_sla_attention_refuses_missing_or_misshapen_learned_parts():
    q, k, v = inputs()
    w = torch.zeros(16, 16)
    learned = SLAConfig(topk=0.3, blkq=16, blkk=16, router="learned", mix="alpha")
    cases = (
        (learned, None, torch.ones(16), "router_weights must be given for router 'learned'"),
        (learned, (w, w), None, "alpha must be given for mix 'alpha'"),
        (SLAConfig(), (w, w), None, "router_weights must be None for router 'fixed'"),
        (learned, (w, torch.zeros(8, 8)), torch.ones(16), r"router k weight \(8, 8\) must be"),
        (learned, (w, w), torch.ones(8), r"alpha weight \(8,\) must be \(16,\) for head dim 16"),
    )
    for config, weights, alpha, match in cases:
        with pytest.raises(ValueError, match=match):
            sla_attention(
                q, k, v, config=config, proj_l_weight=w, router_weights=weights, alpha=alpha
            )
