"""SLA's Triton kernels on CPU under the Triton interpreter, against the float64 reference.

The kernels run in a subprocess (triton_interp_cases.py) because TRITON_INTERPRET=1 must be set
before triton is imported. Tolerance (style.md): the kernel's max error against float64 is at most
twice the error of the reference computed in the same precision (float16), plus a floor of
2^-9 of the output's scale (a few float16 rounding steps: the kernel stores float16). Where the
float16 reference itself is not finite (no marginal block: its linear-branch gradient divides by
eps^2 and overflows float16), the floor alone is the bound.
"""

import math
import subprocess
import sys

import pytest

from .kernel_errors import NAMES
from .script_json import run_json_script
from .triton_interp_cases import CASES

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def interp_results():
    return run_json_script("-m", "tests.sla_kernel_glue.triton_interp_cases")


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_reference_within_tolerance(interp_results, case):
    r = interp_results[case]
    assert r["same_blocks"], "Triton router chose other blocks than router.route"
    assert set(r["dtypes"]) == {"torch.float16"}
    for name in NAMES:
        e = r[name]
        assert e["finite"], f"{case} {name} has non-finite values"
        same = e["reference"] if math.isfinite(e["reference"]) else 0.0
        bound = 2 * same + 2**-9 * e["scale"]
        assert e["kernel"] <= bound, f"{case} {name}: error {e['kernel']:.3g} > bound {bound:.3g}"


def test_all_critical_gives_zero_linear_branch(interp_results):
    # No marginal block: o_linear must be exactly 0, not (total - total) / eps.
    r = interp_results["all_critical"]["o_linear"]
    assert r["scale"] == 0.0 and r["kernel"] == 0.0


@pytest.mark.slow
def test_interpreter_refuses_bf16_compute():
    code = (
        "import os; os.environ['TRITON_INTERPRET'] = '1'\n"
        "import torch\n"
        "from sla_kernel_glue import SLAConfig\n"
        "from sla_kernel_glue.triton_backend import sla_triton\n"
        "q = torch.randn(1, 1, 32, 16)\n"
        "try:\n"
        "    sla_triton(q, q, q, config=SLAConfig(blkq=16, blkk=16), use_bf16=True)\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "bfloat16 matmuls are wrong under TRITON_INTERPRET=1" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_paired_tiles_phik_buffer_and_one_pass_dkdv_match_the_single_block_loop():
    # Each LaunchConfig the GPU may autotune to computes the same sums in another order; the
    # marginal dK/dV in one pass rounds the sparse branch's dK, dV once instead of twice.
    results = run_json_script("-m", "tests.sla_kernel_glue.triton_interp_cases", "--launch")
    for case, r in results.items():
        for variant in ("pair", "phik", "fused_dkdv"):
            assert r[variant] <= 2**-9 * r["scale"], (case, variant, r)


@pytest.mark.slow
def test_wide_score_rows_are_selected_like_router_route():
    # Past TRITON_TOPK_MAX_BLOCKS key blocks the selection is torch.topk's: the same blocks.
    code = (
        "import os; os.environ['TRITON_INTERPRET'] = '1'\n"
        "import torch\n"
        "from sla_kernel_glue import SLAConfig, route\n"
        "from sla_kernel_glue.triton_router import TRITON_TOPK_MAX_BLOCKS, route_for_kernels\n"
        "cfg = SLAConfig(topk=0.01, blkq=64, blkk=16)\n"
        "n = 16 * TRITON_TOPK_MAX_BLOCKS + 5\n"
        "q, k = torch.randn(2, 1, 1, n, 16)\n"
        "r, idx = route_for_kernels(q, k, cfg)\n"
        "a = route(q, k, cfg)\n"
        "print(torch.equal(a.indices, r.indices), torch.equal(idx.long(), a.indices[0]),\n"
        "      torch.equal(a.critical, r.critical))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["True", "True", "True"], proc.stderr[-2000:]
