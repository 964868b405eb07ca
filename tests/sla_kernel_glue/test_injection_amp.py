"""Mixed precision with injected SLA: proj_l stays float32 under bf16 autocast, an fp16 GradScaler
step, and a bf16-cast model (CPU)."""

import torch

from sla_kernel_glue import apply_sla

from .test_injection_plain import SPARSE, make_net, x_input
from .test_injection_wan import tiny_wan, wan_inputs


def assert_proj_l_float32(handle) -> None:
    for path, sla in handle.layers.items():
        for name, p in sla.proj_l.named_parameters():
            assert p.dtype == torch.float32, (path, name, p.dtype)
            if p.grad is not None:
                assert p.grad.dtype == torch.float32, (path, name, p.grad.dtype)


def test_bf16_autocast_training_step_on_wan_keeps_proj_l_float32():
    model = tiny_wan().train()
    handle = apply_sla(model, SPARSE.replace(topk=0.5))
    before = {p: s.proj_l.weight.detach().clone() for p, s in handle.layers.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**wan_inputs()).sample
    assert out.dtype == torch.bfloat16  # autocast really ran the model in bf16
    out.float().square().mean().backward()
    assert_proj_l_float32(handle)
    opt.step()
    assert_proj_l_float32(handle)
    assert all(not torch.equal(s.proj_l.weight, before[p]) for p, s in handle.layers.items())
    # the layer's compute dtype is what sla_attention.pt records
    assert set(handle.layer_dtypes().values()) == {torch.bfloat16}
    handle.remove()


def test_fp16_autocast_with_grad_scaler_step():
    net = make_net()
    handle = apply_sla(net, SPARSE)
    before = {p: s.proj_l.weight.detach().clone() for p, s in handle.layers.items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with torch.autocast("cpu", dtype=torch.float16):
        out = net(x_input())
    assert out.dtype == torch.float16
    scaler.scale(out.float().square().mean()).backward()
    assert_proj_l_float32(handle)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**10  # no inf/nan: the step was taken, not skipped
    assert_proj_l_float32(handle)
    for path, sla in handle.layers.items():
        assert torch.isfinite(sla.proj_l.weight).all()
        assert not torch.equal(sla.proj_l.weight, before[path])
    handle.remove()


def test_bf16_cast_model_keeps_proj_l_float32_and_runs():
    net = make_net()
    handle = apply_sla(net, SPARSE)
    net.to(torch.bfloat16)
    assert net.mlp.weight.dtype == torch.bfloat16
    assert_proj_l_float32(handle)
    assert handle.layer_dtypes() == {p: torch.bfloat16 for p in handle.layers}
    out = net(x_input().to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert_proj_l_float32(handle)
    assert handle.sla_calls() == 2
    handle.remove()
