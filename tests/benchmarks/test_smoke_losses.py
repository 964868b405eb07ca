"""benchmarks.smoke_losses' comparison: exact, keyed by config, blind to Tune's random prefix."""

from __future__ import annotations

import json

from benchmarks import smoke_losses


def _write(path, losses):
    path.write_text(json.dumps(losses))
    return path


def test_compare_is_exact_and_ignores_the_random_trial_prefix(tmp_path, capsys):
    one = {"2f185_00000 topk=0.5": {"train/loss": [[1, (0.5).hex()]], "val/loss": []}}
    same = {"aa01c_00000 topk=0.5": {"train/loss": [[1, (0.5).hex()]], "val/loss": []}}
    nudged = {"aa01c_00000 topk=0.5": {"train/loss": [[1, (0.5 + 2**-52).hex()]], "val/loss": []}}
    a = _write(tmp_path / "a.json", one)
    assert smoke_losses.compare(a, _write(tmp_path / "b.json", same)) == 0
    assert "identical: 1 trials, 1 loss values" in capsys.readouterr().out
    assert smoke_losses.compare(a, _write(tmp_path / "c.json", nudged)) == 1
    assert "00000 topk=0.5 train/loss differs" in capsys.readouterr().out


def test_stable_name_keeps_index_and_config():
    assert smoke_losses.stable_name("2f185_00002 control (full attention)") == (
        "00002 control (full attention)"
    )
    assert smoke_losses.stable_name("00002 control") == "00002 control"
