"""The learned router's selection and the alpha mix through SLA's Triton kernels (interpreter, on
CPU) against float64: learned_interp_cases.py. Tolerance as test_triton_interpreter.py's: the
kernel's max error against float64 at most twice the float16 reference's, plus 2^-9 of the scale.
"""

import math

import pytest

from .learned_interp_cases import CASES, NAMES
from .script_json import run_json_script

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def results():
    return run_json_script("-m", "tests.sla_kernel_glue.learned_interp_cases")


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_learned_selection_and_alpha_mix_match_float64(results, case):
    r = results[case]
    assert r["same_blocks_fp64"] and r["same_blocks_fp32"], "the kernels got other blocks"
    assert r["identity_is_fixed"]
    for name in NAMES:
        e = r[name]
        assert e["finite"] and e["scale"] > 0, (case, name, e)
        same = e["reference"] if math.isfinite(e["reference"]) else 0.0
        bound = 2 * same + 2**-9 * e["scale"]
        assert e["kernel"] <= bound, f"{case} {name}: error {e['kernel']:.3g} > bound {bound:.3g}"
