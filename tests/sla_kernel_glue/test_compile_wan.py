"""SLA inside torch.compile'd Wan blocks (orchestrator.recipe.compile): SLA still runs, the result
matches eager, repeated steps do not recompile, and only the attention call runs eagerly."""

import pytest
import torch

from orchestrator.recipe.compile import compile_blocks, compile_settings, uncompile_blocks
from sla_kernel_glue import apply_sla

from .test_injection_wan import SPARSE, randomize_proj_l, tiny_wan, wan_inputs

pytestmark = pytest.mark.slow  # Inductor compiles C++ on the CPU: about a minute


def _step(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(**inputs).sample
    out.square().mean().backward()
    grad = model.blocks[0].attn1.to_q.weight.grad.detach().clone()
    return out.detach(), grad


def test_compiled_blocks_run_sla_match_eager_and_do_not_recompile():
    from torch._dynamo.utils import counters

    model = tiny_wan().train()
    inputs = wan_inputs()
    handle = apply_sla(model, SPARSE)
    randomize_proj_l(handle)
    eager_out, eager_grad = _step(model, inputs)
    calls_eager = handle.sla_calls()
    torch._dynamo.reset()
    counters.clear()
    try:
        with compile_settings():
            assert compile_blocks(model) == 2
            compiled_out, compiled_grad = _step(model, inputs)
            frames_after_first = counters["stats"]["unique_graphs"]
            for _ in range(2):
                _step(model, inputs)
            frames_after_three = counters["stats"]["unique_graphs"]
            calls_total = handle.sla_calls()
    finally:
        uncompile_blocks(model)
        handle.remove()
        torch._dynamo.reset()
    assert frames_after_first > 0  # the blocks really were compiled
    assert frames_after_three == frames_after_first  # no recompilation on later steps
    assert calls_eager == 2  # one SLA call per self-attention layer per forward
    assert calls_total == calls_eager + 3 * 2  # compiled steps still run SLA in both layers
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-5)


def test_sla_layers_projections_are_compiled_only_attention_is_eager():
    """Every linear layer of a block (q, k, v, out of both attentions, the FFN) is in a compiled
    graph with SLA injected, as without it; SLA still computes both self-attention calls."""
    import collections

    graphs: list[collections.Counter] = []

    def recording_backend(gm, example_inputs):
        nodes = (n for n in gm.graph.nodes if n.op == "call_function")
        graphs.append(collections.Counter(str(n.target) for n in nodes))
        return gm.forward

    model = tiny_wan().train()
    handle = apply_sla(model, SPARSE)
    torch._dynamo.reset()
    try:
        compile_blocks(model, backend=recording_backend)
        model(**wan_inputs()).sample.sum().backward()
        calls = handle.sla_calls()
    finally:
        uncompile_blocks(model)
        handle.remove()
        torch._dynamo.reset()
    linears = sum(n for g in graphs for op, n in g.items() if "linear" in op)
    per_block = sum(isinstance(m, torch.nn.Linear) for m in model.blocks[0].modules())
    assert per_block == 10
    assert linears == per_block  # both blocks share one set of graphs; none of them eager
    assert calls == 2


def test_compile_blocks_refuses_a_model_without_repeated_blocks():
    with pytest.raises(ValueError, match="no repeated blocks"):
        compile_blocks(torch.nn.Linear(2, 2))
