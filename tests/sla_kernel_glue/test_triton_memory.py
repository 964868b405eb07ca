"""What SLA's Triton op keeps for its backward: no (B*H, N, d) tensor beyond q, k, v, o_s, o_l.

No N^2 memory: phi(K) and phi(Q)/den are recomputed inside the kernels, not stored, so the saved
tensors are q, k, v, o_s, o_l plus O(N) row statistics, the block indices and O(d^2)
states per head. Also: a backward through o_sparse alone skips the linear branch instead of
running it on a zero tensor, with the same gradients. The kernels run under the Triton
interpreter in a subprocess (TRITON_INTERPRET=1 must be set before triton is imported).
"""

import pytest

from .script_json import run_json_script

pytest.importorskip("triton")

B, H, N, D = 1, 2, 256, 16
SETTINGS = dict(topk=0.25, blkq=16, blkk=16, kl=0.125)  # with negligible blocks: indices for both

_SCRIPT = f"""
import os; os.environ["TRITON_INTERPRET"] = "1"
import json
import torch
from sla_kernel_glue import SLAConfig
from sla_kernel_glue.triton_backend import sla_triton

cfg = SLAConfig(**{SETTINGS!r})
gen = torch.Generator().manual_seed(0)
q, k, v, g_s, g_l = (torch.randn(({B}, {H}, {N}, {D}), generator=gen).half() for _ in range(5))
saved = []

def pack(t):
    saved.append({{"shape": list(t.shape), "bytes": t.numel() * t.element_size()}})
    return t

def grads(g_sparse, g_linear):
    x = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = sla_triton(*x, config=cfg)
    pairs = [(o, g) for o, g in ((out.o_sparse, g_sparse), (out.o_linear, g_linear)) if g is not None]
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    return [t.grad for t in x]

with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    x = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = sla_triton(*x, config=cfg)
sparse_only = grads(g_s, None)
zero_linear = grads(g_s, torch.zeros_like(g_l))
print(json.dumps({{
    "saved": saved,
    "sparse_only_equal": [bool(torch.equal(a, b)) for a, b in zip(sparse_only, zero_linear)],
    "finite": [bool(torch.isfinite(a).all()) for a in sparse_only],
}}))
"""


@pytest.fixture(scope="module")
def result():
    return run_json_script("-c", _SCRIPT)


def test_backward_saves_no_full_size_tensor_beyond_inputs_and_outputs(result):
    saved = result["saved"]
    full = [s for s in saved if s["shape"] == [B * H, N, D]]
    assert len(full) == 5, f"expected q, k, v, o_s, o_l only; saved {saved}"
    full_bytes = 5 * B * H * N * D * 2  # float16
    t_m = t_n = N // 16
    stats = 2 * B * H * N * 4  # lse, den: float32 per row
    index = 2 * B * H * t_m * t_n * 4  # critical + negligible indices: int32, < T_n per row each
    states = 3 * B * H * D * D * 4  # H hi, H lo, Z: O(d^2) per head
    total = sum(s["bytes"] for s in saved)
    assert total <= full_bytes + stats + index + states, saved


def test_backward_through_o_sparse_alone_matches_a_zero_linear_gradient(result):
    assert all(result["finite"])
    assert result["sparse_only_equal"] == [True, True, True]
