"""Errors of SLA's Triton kernels against the float64 reference, beside the error of the reference
computed in the inputs' own precision (style.md's tolerance rule); for the interpreter and GPU tests.

torch is imported inside the functions: the interpreter subprocess must set TRITON_INTERPRET before
triton (which torch's compiler imports) is first imported.
"""

from __future__ import annotations

NAMES = ["o_sparse", "o_linear", "dq", "dk", "dv"]


def branches_and_grads(fn, q, k, v, g_s, g_l):
    """fn's SLAOutputs on fresh leaf copies of q, k, v, and [o_sparse, o_linear, dq, dk, dv]."""
    import torch

    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    torch.autograd.backward([out.o_sparse, out.o_linear], [g_s.to(q.dtype), g_l.to(q.dtype)])
    return out, [out.o_sparse, out.o_linear, q.grad, k.grad, v.grad]


def kernel_errors(kernel, q, k, v, g_s, g_l, config, routing) -> dict:
    """Per name in NAMES: max abs error of ``kernel`` ("kernel") and of the reference in q's dtype
    ("reference"), both against the reference in float64 on ``routing``; the float64 result's max
    abs ("scale"); whether the kernel's values are finite. Also whether the kernel chose the
    routing's blocks ("same_blocks") and the dtypes of its outputs and gradients."""
    import torch

    from sla_kernel_glue import sla_reference

    def reference(*a):
        return sla_reference(*a, config=config, routing=routing)

    _, exact = branches_and_grads(lambda *a: reference(*(t.double() for t in a)), q, k, v, g_s, g_l)
    _, same = branches_and_grads(reference, q, k, v, g_s, g_l)
    out, kern = branches_and_grads(kernel, q, k, v, g_s, g_l)
    result = {
        "same_blocks": bool(torch.equal(out.routing.indices, routing.indices)),
        "dtypes": [str(t.dtype) for t in kern],
    }
    for name, e, s, t in zip(NAMES, exact, same, kern, strict=True):
        result[name] = {
            "kernel": (t.double() - e).abs().max().item(),
            "reference": (s.double() - e).abs().max().item(),
            "scale": e.abs().max().item(),
            "finite": bool(torch.isfinite(t).all()),
        }
    return result
