"""The world benchmark runs end to end on the bundled model with a reduced prompt set and tiny budgets,
and writes every field of every row (the numbers themselves are the benchmark's, not the test's)."""

import json

import pytest

from receler.world.model import WORLD_MODEL_DIR

ROW_FIELDS = {"guidance", "target_rate_clean", "target_rate_erased", "other_accuracy_clean", "other_accuracy_erased",
              "other_psnr"}


@pytest.mark.skipif(not (WORLD_MODEL_DIR / "model_index.json").exists(), reason="the bundled world model is missing")
def test_quick_benchmark_writes_every_row_and_field(tmp_path):
    from receler.world.benchmark import ALL_ROWS, main

    report = main([str(tmp_path), "--quick", "--train_steps", "6", "--attack_steps", "1,2", "--steps", "10"])
    saved = json.loads((tmp_path / "world_benchmark.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert set(saved["rows"]) == set(ALL_ROWS)
    for name, row in saved["rows"].items():
        assert ROW_FIELDS <= set(row), name
        for key in ("target_rate_clean", "target_rate_erased", "other_accuracy_clean", "other_accuracy_erased"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
    for name in ("full_attacked", "adversarial_attacked"):
        row = saved["rows"][name]
        assert set(row["target_rate_attacked_by_steps"]) == {"1", "2"}
        assert row["target_rate_attacked"] == row["target_rate_attacked_by_steps"]["2"]
        assert 0.0 <= row["target_rate_attacked"] <= 1.0
    assert saved["rows"]["negative_prompt"]["guidance"] > 1
    assert saved["num_prompts"] == 14
    # The clean renders are the bundled model's: at guidance 1 it draws the prompted colour.
    assert saved["rows"]["full"]["target_rate_clean"] >= 0.75
