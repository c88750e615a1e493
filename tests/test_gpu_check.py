"""The GPU acceptance script runs end to end in its small shape on CPU (its numbers need a GPU)."""

from __future__ import annotations

import json

from conftest import REPO


def test_gpu_check_small_shape_reports_every_check(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu_check import CONFIG, main

    import esft.methods.es.trainer

    # the script unties the shaping of tied members for its timings (esft.methods.es.trainer.member_weights):
    # undo it after
    monkeypatch.setattr(esft.methods.es.trainer, "member_weights", esft.methods.es.trainer.member_weights)

    shipped = json.loads(CONFIG.read_text())
    assert (shipped["hidden_size"], shipped["num_hidden_layers"], shipped["vocab_size"]) == (2560, 36, 151936)
    result = main(["--shape", "small", "--device", "cpu"])
    assert json.loads(capsys.readouterr().out) == result
    assert [m["mode"] for m in result["modes"]] == ["inplace", "batched", "lowrank"]
    for m in result["modes"]:
        assert set(m) == {"mode", "seconds", "pure_seconds", "ratio_to_pure", "iterations_with_varied_fitness",
                          "peak_bytes", "plan_bytes", "peak_over_plan"}
        assert m["plan_bytes"] > 4 * result["parameters"]
        assert m["peak_bytes"] is None  # CPU: no device allocator to read
    assert result["perturb_restore"] == {"tensors": 24, "tensors_moved_by_member": 24, "restored_bit_for_bit": True}
    # bf16 spacing near 0.02 is 2^-13 ≈ 1.2e-4: a 1e-5 step moves only the entries it rounds up to the next value
    matrix, gain = result["bf16_rounding"]["matrix_std_0.02"], result["bf16_rounding"]["norm_gain_1.0"]
    assert 0.05 < matrix["entries_changed"] < 0.5 and 0.05 < matrix["update_kept"] < 0.5
    assert gain == {"entries_changed": 0.0, "update_kept": 0.0}  # spacing 2^-7 at 1.0: the update vanishes
