"""The world benchmark runs end to end on the bundled model with a reduced prompt set and tiny budgets, and
writes every field of every row (the numbers themselves are the benchmark's; what they mean is tested on
hand-made videos in test_world_targets.py)."""

import json

import pytest

from receler.world.model import WORLD_MODEL_DIR

pytestmark = pytest.mark.skipif(not (WORLD_MODEL_DIR / "model_index.json").exists(),
                                reason="the bundled world model is missing")

FAST = ["--quick", "--train_steps", "3", "--attack_steps", "1,2", "--steps", "4"]


def check_row(name, row, target="red"):
    for side in ("clean", "erased"):
        shown = row["target_shown"][side]
        for group in ("seen", "unseen", "two_shape", "all", "seen_gray", "seen_black"):
            assert 0.0 <= shown[group] <= 1.0, (name, side, group)
        accuracy = row["other_accuracy"][side]
        for key in ("mean", "worst", "worst_class_background", "whole_prompt"):
            assert 0.0 <= accuracy[key] <= 1.0, (name, side, key)
        assert accuracy["worst"] == min(accuracy["per_class"].values())
        assert 0.0 <= row["two_shape_other_kept"][side] <= 1.0
    substitution = row["substitution"]
    assert sum(substitution["histogram"].values()) == 8  # the quick set's 4 seen + 4 unseen target prompts
    assert 0.0 <= substitution["share"] <= 1.0
    from receler.world.targets import parse_target

    free = {"color", "shape", "direction", "background"} - set(parse_target(target).attributes)
    assert set(row["rest_of_prompt"]) == free | {"all", "area_ratio"}
    assert row["other_psnr"]["worst"] <= row["other_psnr"]["mean"]


@pytest.mark.slow
def test_quick_benchmark_writes_every_row_and_field(tmp_path):
    from receler.world.benchmark import ALL_ROWS, main

    report = main([str(tmp_path), *FAST])
    saved = json.loads((tmp_path / "world_benchmark.json").read_text())
    assert saved == json.loads(json.dumps(report))
    run = saved["runs"]["red/seed42"]
    assert set(run["rows"]) == set(ALL_ROWS)
    for name, row in run["rows"].items():
        check_row(name, row)
    for name in ("full_attacked", "adversarial_attacked"):
        row = run["rows"][name]
        assert set(row["target_shown_attacked_by_steps"]) == {"1", "2"}
        assert row["target_shown_attacked"] == row["target_shown_attacked_by_steps"]["2"]
    assert run["rows"]["negative_prompt"]["guidance"] > 1 and run["rows"]["safree_official"]["guidance"] > 1
    assert run["rows"]["safree"]["guidance"] == 1
    assert set(saved["summary"]) == set(ALL_ROWS)
    assert (tmp_path / "world_benchmark.md").read_text().count("| red | 42 |") == len(ALL_ROWS)
    # The clean renders are the bundled model's: at guidance 1 it draws the prompted colour.
    assert run["rows"]["full"]["target_shown"]["clean"]["seen"] >= 0.75


@pytest.mark.slow
def test_several_targets_resume_and_summarise(tmp_path):
    from receler.world.benchmark import main

    argv = [str(tmp_path), *FAST, "--targets", "triangle,left", "--seeds", "0"]
    # Two shards (as two array jobs or launched processes would run them): the first saves its run and leaves
    # the tables; the second, finishing last, finds every run saved and writes them.
    assert main([*argv, "--shard", "0/2"]) == {}
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["triangle_seed0.json"]
    assert not (tmp_path / "world_benchmark.json").exists()
    first = main([*argv, "--shard", "1/2"])
    assert set(first["runs"]) == {"triangle/seed0", "left/seed0"}
    assert json.loads((tmp_path / "world_benchmark.json").read_text())["runs"] == first["runs"]
    assert first["runs"]["left/seed0"]["target_kind"] == "direction"
    for run in first["runs"].values():
        assert set(run["rows"]) == {"full"}
        check_row(run["target"], run["rows"]["full"], run["target"])
    summary = first["summary"]["full"]
    drops = [r["rows"]["full"]["other_psnr"]["mean"] for r in first["runs"].values()]
    assert summary["psnr_mean"]["mean"] == pytest.approx(sum(drops) / 2)
    assert summary["psnr_mean"]["worst"] == min(drops)
    # A rerun without --shard (or with the same settings) reuses every saved run (no eraser is trained again).
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "erasers").rglob("eraser_weights.safetensors")}
    again = main(argv)
    assert again["runs"] == first["runs"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "erasers").rglob("eraser_weights.safetensors")} == before


def test_the_full_row_and_official_safree_write_every_field(tmp_path):
    from receler.world.benchmark import main

    report = main([str(tmp_path), "--quick", "--train_steps", "2", "--steps", "4", "--rows", "full,safree_official"])
    run = report["runs"]["red/seed42"]
    for name, row in run["rows"].items():
        check_row(name, row)
    assert run["rows"]["safree_official"]["guidance"] == 4.0
    assert run["rows"]["full"]["train_seconds"] > 0


def test_an_anchored_eraser_is_judged_by_following_its_anchor(tmp_path):
    from receler.world.benchmark import check_goals, main, summarize

    report = main([str(tmp_path), "--quick", "--train_steps", "2", "--steps", "4", "--rows", "full", "--anchors"])
    row = report["runs"]["red/seed42"]["rows"]["full"]
    check_row("full", row)
    follow = row["substitution"]["anchor_follow"]
    assert 0.0 <= follow <= 1.0
    goals = check_goals(summarize(report["runs"])["full"])
    assert goals["anchor_follow"] == (follow >= 0.80) and "substitute_share" not in goals
    assert "follows anchor" in (tmp_path / "world_benchmark.md").read_text()


def test_goals_judge_the_worst_run_and_anchors_replace_the_substitute_goal():
    from receler.world.benchmark import check_goals

    def metrics(**worst):
        return {name: {"mean": value, "worst": value, "n": 1} for name, value in worst.items()}

    plain = check_goals(metrics(substitute_share=0.6, psnr_mean=25.0, area_ratio=1.3, shown_seen=0.10))
    assert plain == {"substitute_share": False, "psnr_mean": True, "area_ratio": False, "shown_seen": True}
    anchored = check_goals(metrics(substitute_share=0.9, anchor_follow=0.8))
    assert anchored == {"anchor_follow": True}


def test_the_summary_counts_the_runs_that_meet_each_goal():
    from receler.world.benchmark import summarize, summary_table

    def run(psnr, area):
        cells = {"per_class_background": {"green/gray": 1.0}}
        return {"rows": {"full": {"other_psnr": {"mean": psnr, "worst": psnr - 1.0},
                                  "rest_of_prompt": {"area_ratio": area},
                                  "other_accuracy": {"clean": cells, "erased": cells}}}}

    # PSNR 26 and 25 meet >= 25 dB, 24 does not; areas 1.0 and 0.8 are inside 0.8-1.25, 2.0 is not.
    runs = {"a": run(26.0, 1.0), "b": run(25.0, 2.0), "c": run(24.0, 0.8)}
    summary = summarize(runs)["full"]
    assert summary["psnr_mean"] == {"mean": 25.0, "worst": 24.0, "n": 3, "passing": 2}
    assert summary["area_ratio"]["worst"] == 2.0 and summary["area_ratio"]["passing"] == 2
    assert summary["psnr_worst"]["passing"] == 3  # 25, 24 and 23 dB all meet >= 22 dB
    assert "25.0 (24.0) ✗ 2/3" in summary_table(summarize(runs))


def test_bad_targets_are_refused_before_anything_loads(tmp_path, capsys):
    from receler.world.benchmark import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--targets", "red,pink"])
    assert exit_info.value.code == 2
    assert "pink" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--targets", "red,blue", "--anchor_to", "blue"])  # blue cannot stand in for blue
    assert "--anchor_to 'blue' is a concept being erased" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_runs_each_setting_once_and_tabulates_the_goals(tmp_path):
    from receler.world.sweep import main

    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"base": "", "eta1": "--eta 1"}))
    argv = [str(tmp_path / "sweep"), "--settings", str(settings), "--workers", "2",
            "--benchmark_flags", "--quick --train_steps 2 --steps 3"]
    result = main(argv)
    assert set(result) == {"base", "eta1"}
    for name, row in result.items():
        assert row["runs"] == 1 and row["train_seconds"] > 0
        assert set(row["goals"]) <= {"shown_seen", "shown_unseen", "shown_two_shape", "substitute_share", "rest_shape",
                                     "rest_direction", "rest_background", "area_ratio", "other_acc_worst_drop",
                                     "psnr_mean", "psnr_worst"}
    saved = json.loads((tmp_path / "sweep" / "eta1" / "runs" / "red_seed0.json").read_text())
    assert saved["settings"]["eta"] == 1.0
    text = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "| base |" in text and "| eta1 |" in text
    # The clean renders were made once and shared; a second sweep trains nothing again.
    assert len(list((tmp_path / "sweep" / "clean_cache").glob("*.npz"))) == 1
    weights = sorted((tmp_path / "sweep").rglob("eraser_weights.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in weights]
    assert main(argv).keys() == result.keys()
    assert [p.stat().st_mtime_ns for p in weights] == stamps


def test_sweep_settings_are_checked(tmp_path):
    from receler.errors import UserError
    from receler.world.sweep import read_settings

    bad = tmp_path / "bad.json"
    for text in ("[1, 2]", "{}", '{"a": 3}', '{"../x": ""}', "not json"):
        bad.write_text(text)
        with pytest.raises(UserError):
            read_settings(bad)


@pytest.mark.slow
def test_several_concepts_one_eraser_and_a_stack(tmp_path):
    from receler.world.benchmark import main

    report = main([str(tmp_path), "--quick", "--train_steps", "2", "--steps", "3", "--targets", "red+green"])
    rows = report["runs"]["red+green/seed42"]["rows"]
    assert set(rows) == {"multi", "stacked"}
    for name, row in rows.items():
        assert set(row["components"]) == {"red", "green"}
        assert row["train_seconds"] > 0
    # The stack is two erasers trained apart; the multi-concept eraser one, trained on both concepts' prompts.
    stacked = sorted(p.parent.parent.name for p in (tmp_path / "erasers").rglob("stacked/*/eraser/eraser_config.json"))
    assert stacked == ["green", "red"]
    config = json.loads(next((tmp_path / "erasers").rglob("multi/eraser/eraser_config.json")).read_text())
    assert config["concepts"] == ["red", "green"]
    assert "| red+green | 42 | multi |" in (tmp_path / "world_benchmark.md").read_text()
