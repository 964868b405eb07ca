"""torch.compile sees SLA's Triton kernels as the custom ops sla_kernel_glue::sla_fwd/sla_bwd (their
settings packed as one int[]), and the compiled forward and gradients equal eager ones. CPU: the
kernels run under the Triton interpreter in a subprocess (TRITON_INTERPRET=1 must be set before
triton is imported); aot_eager-style compilers record the forward and backward graphs."""

import pytest

from .script_json import run_json_script

pytest.importorskip("triton")

_SCRIPT = """
import os; os.environ["TRITON_INTERPRET"] = "1"
import json
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from sla_kernel_glue import SLAConfig
from sla_kernel_glue.triton_backend import sla_triton

ops = {"forward": set(), "backward": set()}

def recorder(kind):
    def compiler(gm, example_inputs):
        ops[kind].update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)
    return compiler

cfg = SLAConfig(topk=0.25, blkq=16, blkk=16, linear_scope="marginal")
gen = torch.Generator().manual_seed(0)
q, k, v, g = (torch.randn((1, 2, 64, 16), generator=gen).half() for _ in range(4))

def step(fn):
    x = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*x)
    (out * g).sum().backward()
    return [out.detach()] + [t.grad for t in x]

def attention(q, k, v):
    out = sla_triton(q, k, v, config=cfg)
    return out.o_sparse + out.o_linear

backend = aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward"))
eager = step(attention)
compiled = step(torch.compile(attention, backend=backend))
print(json.dumps({
    "equal": [bool(torch.equal(a, b)) for a, b in zip(eager, compiled)],
    "forward_ops": sorted(ops["forward"]),
    "backward_ops": sorted(ops["backward"]),
}))
"""


@pytest.fixture(scope="module")
def result():
    return run_json_script("-c", _SCRIPT)


@pytest.mark.slow
def test_compiled_graphs_hold_the_custom_ops(result):
    assert "sla_kernel_glue.sla_fwd.default" in result["forward_ops"]
    assert "sla_kernel_glue.sla_bwd.default" in result["backward_ops"]


@pytest.mark.slow
def test_compiled_output_and_gradients_equal_eager(result):
    assert result["equal"] == [True, True, True, True]  # output, dq, dk, dv
