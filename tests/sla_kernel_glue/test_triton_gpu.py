"""SLA's Triton kernels on a real GPU: bf16 and fp16, forward and gradients, torch.compile, and the
backend choice."""

import pytest
import torch

from sla_kernel_glue import SLAConfig, SparseLinearAttention, route

from .kernel_errors import NAMES, kernel_errors

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _qkv(shape, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(shape, generator=g, device="cuda", dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "n,d,bq,bk,topk,fmap,scope,kl",
    [
        (1000, 128, 64, 64, 0.1, "softmax", "marginal", 0.0),
        (777, 64, 128, 64, 0.25, "elu", "marginal", 0.0),
        (600, 32, 64, 32, 0.2, "relu", "all", 0.0),
        (900, 128, 128, 64, 0.1, "softmax", "marginal", 0.3),
    ],
)
def test_forward_and_gradients_match_reference(dtype, n, d, bq, bk, topk, fmap, scope, kl):
    from sla_kernel_glue.triton_backend import sla_triton

    cfg = SLAConfig(topk=topk, blkq=bq, blkk=bk, feature_map=fmap, linear_scope=scope, kl=kl)
    q, k, v = _qkv((2, 3, n, d), dtype, seed=0)
    g_s, g_l = _qkv((2, 3, n, d), dtype, seed=1)[:2]
    kernel = lambda *a: sla_triton(*a, config=cfg)  # noqa: E731
    r = kernel_errors(kernel, q, k, v, g_s, g_l, cfg, route(q, k, cfg))
    assert r["same_blocks"]
    for name in NAMES:
        e = r[name]
        assert e["kernel"] <= 2 * e["reference"] + 1e-3 * e["scale"], (name, e)


def test_module_uses_triton_and_compiles():
    q, k, v = _qkv((1, 2, 512, 64), torch.bfloat16, seed=2)
    sla = SparseLinearAttention(64, SLAConfig(topk=0.25, backend="triton")).cuda()
    torch.nn.init.normal_(sla.proj_l.weight, std=0.1)
    eager = sla(q, k, v)
    compiled = torch.compile(sla)(q, k, v)
    assert sla.backend_calls["triton"] == 2 and sla.backend_calls["torch"] == 0
    torch.testing.assert_close(compiled, eager)


def test_backend_triton_raises_and_auto_falls_back_on_gpu():
    q, k, v = _qkv((1, 1, 128, 48), torch.bfloat16, seed=3)  # head dim 48 is not a power of two
    with pytest.raises(ValueError, match="head dim 48"):
        SparseLinearAttention(48, SLAConfig(topk=0.5, backend="triton")).cuda()(q, k, v)
    auto = SparseLinearAttention(48, SLAConfig(topk=0.5, backend="auto")).cuda()
    auto(q, k, v)
    assert auto.backend_calls == {"torch": 1}


def test_compiled_wan_blocks_run_triton_sla_like_eager():
    """The training path with train.compile: Wan blocks compiled, SLA's Triton kernels eager
    inside them; forward and a weight gradient match the eager model."""
    from orchestrator.recipe.compile import compile_blocks, compile_settings, uncompile_blocks
    from sla_kernel_glue import apply_sla

    from .test_injection_wan import tiny_wan, wan_inputs

    model = tiny_wan().cuda().train()
    inputs = {k: v.cuda() for k, v in wan_inputs().items()}
    handle = apply_sla(model, SLAConfig(topk=0.5, blkq=16, blkk=16, backend="triton"))

    def step():
        model.zero_grad(set_to_none=True)
        out = model(**inputs).sample  # float32: the kernels compute in bf16, routing is stable
        out.square().mean().backward()
        return out.detach(), model.blocks[0].attn1.to_q.weight.grad.detach().clone()

    eager_out, eager_grad = step()
    torch._dynamo.reset()
    try:
        with compile_settings():
            compile_blocks(model)
            compiled_out, compiled_grad = step()
        calls = handle.sla_calls()
        backends = {path: dict(layer.backend_calls) for path, layer in handle.layers.items()}
    finally:
        uncompile_blocks(model)
        handle.remove()
        torch._dynamo.reset()
    assert calls == 4 and all(b == {"triton": 2} for b in backends.values())
    torch.testing.assert_close(compiled_out, eager_out, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=5e-2, atol=1e-3)
