"""apply_sla on a real (tiny) diffusers WanTransformer3DModel: per-layer SLA, dense parity, training,
exact removal, counted cross-attention fallbacks."""

import pytest
import torch
from diffusers import WanTransformer3DModel
from torch.nn import functional

from sla_kernel_glue import SLAConfig, SparseLinearAttention, apply_sla
from sla_kernel_glue.diffusers_processors import SLAProcessor
from sla_kernel_glue.sdpa_redirect import redirect_installed

SELF_LAYERS = ["blocks.0.attn1", "blocks.1.attn1"]
CROSS_LAYERS = ["blocks.0.attn2", "blocks.1.attn2"]
# 2 frames x (8/2) x (8/2) = 32 tokens = 2 blocks of 16: topk 0.5 leaves one marginal block per row
DENSE_EQUIVALENT = SLAConfig(topk=1.0, blkq=16, blkk=16, backend="torch")
SPARSE = SLAConfig(topk=0.5, blkq=16, blkk=16, backend="torch")


def tiny_wan(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()


def wan_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, 4, 2, 8, 8, generator=g),  # (B, C, F, H, W)
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 6, 32, generator=g),  # (B, text tokens, text_dim)
    }


def run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


def randomize_proj_l(handle, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sla in handle.layers.values():
            sla.proj_l.weight.copy_(torch.randn(sla.proj_l.weight.shape, generator=g) * 0.5)
            sla.proj_l.bias.copy_(torch.randn(sla.proj_l.bias.shape, generator=g) * 0.1)


def test_each_self_attention_layer_gets_its_own_registered_sla_module():
    model = tiny_wan()
    handle = apply_sla(model, SPARSE)
    assert sorted(handle.layers) == SELF_LAYERS
    projs = [sla.proj_l.weight for sla in handle.layers.values()]
    assert len({id(p) for p in projs}) == len(SELF_LAYERS)
    param_ids = {id(p) for p in model.parameters()}
    keys = set(model.state_dict())
    for path, sla in handle.layers.items():
        assert isinstance(sla, SparseLinearAttention)
        assert model.get_submodule(path).sla is sla
        assert sla.head_dim == 16 and sla.config == SPARSE
        assert id(sla.proj_l.weight) in param_ids and id(sla.proj_l.bias) in param_ids
        assert {f"{path}.sla.proj_l.weight", f"{path}.sla.proj_l.bias"} <= keys
    for path in CROSS_LAYERS:  # cross-attention: no SLA module, a counting wrapper only
        assert not hasattr(model.get_submodule(path), "sla")
        assert isinstance(model.get_submodule(path).processor, SLAProcessor)
    handle.remove()


def test_topk_one_and_zero_proj_l_equals_dense_model():
    model = tiny_wan()
    inputs = wan_inputs()
    dense = run(model, inputs)
    with apply_sla(model, DENSE_EQUIVALENT) as handle:
        out = run(model, inputs)
        assert handle.sla_calls() == len(SELF_LAYERS)
        assert handle.fallback_counts() == {p: {"cross_attention": 1} for p in CROSS_LAYERS}
        assert handle.total_fallbacks() == len(CROSS_LAYERS)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


def test_sparse_sla_changes_the_output():
    model = tiny_wan()
    inputs = wan_inputs()
    dense = run(model, inputs)
    with apply_sla(model, SPARSE):
        out = run(model, inputs)
    assert (out - dense).abs().max() > 1e-4  # topk 0.5 really ran SLA, not dense attention


def test_training_step_changes_proj_l_in_every_layer():
    model = tiny_wan().train()
    handle = apply_sla(model, SPARSE)
    before = {p: sla.proj_l.weight.detach().clone() for p, sla in handle.layers.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model(**wan_inputs()).sample
    out.square().mean().backward()
    opt.step()
    for path, sla in handle.layers.items():
        assert sla.proj_l.weight.grad is not None and sla.proj_l.weight.grad.abs().sum() > 0
        assert not torch.equal(sla.proj_l.weight, before[path]), path
    handle.remove()


def test_remove_restores_processors_modules_and_outputs_exactly():
    model = tiny_wan()
    inputs = wan_inputs()
    dense = run(model, inputs)
    processors = {p: m.processor for p, m in model.named_modules() if hasattr(m, "processor")}
    keys = list(model.state_dict())
    handle = apply_sla(model, SPARSE)
    randomize_proj_l(handle)
    run(model, inputs)
    handle.remove()
    assert {
        p: m.processor for p, m in model.named_modules() if hasattr(m, "processor")
    } == processors
    assert list(model.state_dict()) == keys
    assert not any(hasattr(model.get_submodule(p), "sla") for p in SELF_LAYERS)
    assert functional.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
    assert torch.equal(run(model, inputs), dense)
    # and the model takes SLA again after removal
    with apply_sla(model, SPARSE) as again:
        assert sorted(again.layers) == SELF_LAYERS


def test_redirect_is_installed_only_while_a_layer_runs():
    model = tiny_wan()
    seen = []
    with apply_sla(model, SPARSE) as handle:
        layer = model.get_submodule("blocks.0.attn1")
        hook = layer.to_out[0].register_forward_hook(lambda *_: seen.append(redirect_installed()))
        assert not redirect_installed()
        run(model, wan_inputs())
        assert not redirect_installed()
        hook.remove()
    assert seen == [True] and handle.sla_calls() == 2


def test_masked_self_attention_call_stays_dense_and_is_counted():
    model = tiny_wan()
    with apply_sla(model, SPARSE) as handle:
        layer = model.get_submodule("blocks.0.attn1")
        x = torch.randn(1, 32, 32)
        mask = torch.ones(1, 1, 32, 32, dtype=torch.bool)
        layer(x, attention_mask=mask)
        assert handle.fallback_counts() == {"blocks.0.attn1": {"mask": 1}}
        assert handle.sla_calls() == 0


def test_injecting_twice_is_refused_and_targets_are_checked():
    model = tiny_wan()
    with apply_sla(model, SPARSE):
        with pytest.raises(ValueError, match="already has SLA injected"):
            apply_sla(model, SPARSE)
    with pytest.raises(ValueError, match="not a submodule path"):
        apply_sla(model, SPARSE, targets=["blocks.9.attn1"])
    with pytest.raises(ValueError, match="cross-attention"):
        apply_sla(model, SPARSE, targets=["blocks.0.attn2"])
    # a failed injection leaves nothing behind
    assert not any(hasattr(m, "sla") for m in model.modules())
    assert not any(isinstance(getattr(m, "processor", None), SLAProcessor) for m in model.modules())


def test_diffusers_attention_class_with_its_sdpa_processor_is_redirected_too():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    model = torch.nn.Sequential(Attention(query_dim=32, heads=2, dim_head=16)).eval()
    x = torch.randn(1, 32, 32)
    dense = model(x)
    with apply_sla(model, DENSE_EQUIVALENT) as handle:
        out = model(x)
        assert list(handle.layers) == ["0"] and handle.sla_calls() == 1
        assert handle.total_fallbacks() == 0
        model[0](x, encoder_hidden_states=torch.randn(1, 5, 32))
        assert handle.fallback_counts() == {"0": {"cross_attention": 1}}
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


def test_handle_dense_bypasses_sla_exactly_and_counts_nothing():
    model, inputs = tiny_wan(), wan_inputs()
    before = run(model, inputs)
    with apply_sla(model, SPARSE) as handle:
        randomize_proj_l(handle)  # SLA's output is far from dense attention's
        sparse = run(model, inputs)
        handle.reset_counts()
        with handle.dense():
            dense = run(model, inputs)
        assert handle.sla_calls() == 0 and handle.total_fallbacks() == 0
        again = run(model, inputs)  # SLA again once the block ends
        assert handle.sla_calls() == len(SELF_LAYERS)
    assert torch.equal(dense, before)  # torch's SDPA with the same arguments: bit for bit
    assert not torch.allclose(sparse, before, atol=1e-3)
    assert torch.equal(again, sparse)
