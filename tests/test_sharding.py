"""Sharded runs: the shards of a prompt file (--shard K/N, or the processes of accelerate launch) write exactly the
files one process writes, bit for bit (decoded frames) and name for name; the merge refuses a missing or
duplicated row and names it; the evaluation CLIs and the attack shard the same way."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluation import attack as attack_cli
from evaluation import eval_nudity, eval_preservation
from evaluation import merge as merge_cli
from receler.errors import UserError
from receler.media import read_video
from receler.sharding import Shard, ShardLog, current_shard, merge_rows, parse_shard, process_device
from tests.test_eval_nudity import RedCornerDetector, video_folder  # noqa: F401  (a fixture)
from tests.test_metrics import pair_folder  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import test_cogvideo  # noqa: E402  (the top-level user script)

RENDER = ["--num_frames", "9", "--height", "32", "--width", "32", "--num_inference_steps", "2", "--generate_clean"]
# Rows 0 and 2 carry their own seeds; row 1 takes --seed.
PROMPTS = 'prompt,seed\n"a red car, fast",5\na blue boat on a lake,\nnudity on the beach,9\n'
STEMS = ["000_a_red_car_fast", "001_a_blue_boat_on_a_lake", "002_nudity_on_the_beach"]
SHARD_FILE = ".shard-"


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.csv"
    path.write_text(PROMPTS)
    return path


def render(model_dir, prompt_file, out, *extra):
    return test_cogvideo.main(["--model_path", str(model_dir), "--prompt_file", str(prompt_file), "--seed", "3",
                               "--output_path", str(out), *RENDER, *extra])


@pytest.fixture(scope="module")
def one_process(tiny_cogvideox_dir, prompt_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "videos"
    assert render(tiny_cogvideox_dir, prompt_file, out) == {"rendered": 3, "skipped": 0}
    return out


def outputs(folder) -> list:
    return sorted(p.name for p in Path(folder).iterdir() if SHARD_FILE not in p.name)


def assert_same_outputs(expected, actual, names_only=()):
    """Same file names; mp4 frames and png pixels equal after decoding; json and safetensors contents equal."""
    assert outputs(actual) == outputs(expected)
    for name in outputs(expected):
        a, b = Path(expected) / name, Path(actual) / name
        if name in names_only:
            continue
        if name.endswith(".mp4"):
            np.testing.assert_array_equal(read_video(a), read_video(b), err_msg=name)
        elif name.endswith(".png"):
            np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)), err_msg=name)
        elif name.endswith(".json"):
            assert json.loads(a.read_text()) == json.loads(b.read_text()), name
        elif name.endswith(".safetensors"):  # the header's key order may differ between writes
            from safetensors import safe_open

            with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
                assert fa.metadata() == fb.metadata() and set(fa.keys()) == set(fb.keys()), name
                assert all(fa.get_tensor(k).equal(fb.get_tensor(k)) for k in fa.keys()), name
        else:
            raise AssertionError(f"no comparison for {name}")


def refused(capsys, argv) -> str:
    capsys.readouterr()  # drop earlier logs
    with pytest.raises(SystemExit) as exit_info:
        merge_cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


# ------------------------------------------------------------------------------------------ rendering


def test_two_shards_render_exactly_what_one_process_does(tiny_cogvideox_dir, prompt_file, one_process, tmp_path, capsys):
    out = tmp_path / "videos"
    assert render(tiny_cogvideox_dir, prompt_file, out, "--shard", "0/2") == {"rendered": 2, "skipped": 0}
    assert {name.split("_")[0] for name in outputs(out)} == {"000", "002"}  # rows 0 and 2, nothing else
    assert not (out / "prompts.json").exists()

    err = refused(capsys, [str(out)])  # shard 1 has not run: row 1 is missing, and named
    assert "row 1 is missing" in err and "--shard 1/2" in err

    assert render(tiny_cogvideox_dir, prompt_file, out, "--shard", "1/2") == {"rendered": 1, "skipped": 0}
    assert_same_outputs(one_process, out)  # the last shard merged prompts.json by itself

    # A rerun of one shard (say it had died) skips what is done and rewrites nothing.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if SHARD_FILE not in p.name}
    assert render(tiny_cogvideox_dir, prompt_file, out, "--shard", "1/2") == {"rendered": 0, "skipped": 1}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if SHARD_FILE not in p.name} == mtimes

    (out / "prompts.json").unlink()
    merge_cli.main([str(out)])
    assert json.loads((out / "prompts.json").read_text()) == json.loads((one_process / "prompts.json").read_text())

    # Shards of another split in the same folder: row 0 is then present twice, and named.
    assert render(tiny_cogvideox_dir, prompt_file, out, "--shard", "0/3") == {"rendered": 0, "skipped": 1}
    err = refused(capsys, [str(out)])
    assert f"Row 0 ({STEMS[0]}) is present twice" in err
    assert "prompts.shard-0-of-2.json" in err and "prompts.shard-0-of-3.json" in err


@pytest.mark.parametrize("script_name, family", [("test_hunyuan", "hunyuan_video"), ("test_wan", "wan")])
def test_every_rendering_cli_shards_the_same_way(script_name, family, tiny_model_dir, tmp_path):
    script = __import__(script_name)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car\na blue boat\n")
    argv = ["--model_path", str(tiny_model_dir(family)), "--prompt_file", str(prompts), "--dtype", "float32", *RENDER]
    script.main(argv + ["--output_path", str(tmp_path / "one")])
    for k in (1, 0):
        script.main(argv + ["--output_path", str(tmp_path / "two"), "--shard", f"{k}/2"])
    assert_same_outputs(tmp_path / "one", tmp_path / "two")


def test_more_shards_than_prompts_and_bad_shard_flags(tiny_cogvideox_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "videos"
    assert render(tiny_cogvideox_dir, prompt_file, out, "--shard", "3/4") == {"rendered": 0, "skipped": 0}
    assert json.loads((out / "prompts.shard-3-of-4.json").read_text())["complete"] is True
    capsys.readouterr()
    for flag, message in [("2/2", "must be in 0..1"), ("-1/2", "must be in 0..1"), ("1/0", "at least 1"), ("a/b", "is not K/N")]:
        with pytest.raises(SystemExit):
            render(tiny_cogvideox_dir, prompt_file, out, f"--shard={flag}")
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


launcher = Path(sys.executable).parent / "accelerate"


@pytest.mark.skipif(shutil.which("accelerate") is None and not launcher.exists(), reason="accelerate's launcher is not installed")
def test_two_launched_processes_render_exactly_what_one_process_does(tiny_cogvideox_dir, prompt_file, one_process, tmp_path):
    out = tmp_path / "videos"
    result = subprocess.run(
        [str(launcher if launcher.exists() else "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "test_cogvideo.py"),
         "--model_path", str(tiny_cogvideox_dir), "--prompt_file", str(prompt_file), "--seed", "3", "--output_path",
         str(out), "--device", "cpu", *RENDER],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.shard-*")) == ["prompts.shard-0-of-2.json", "prompts.shard-1-of-2.json"]
    done = [set(json.loads((out / f"prompts.shard-{k}-of-2.json").read_text())["done"]) for k in (0, 1)]
    assert done == [{"0", "2"}, {"1"}]  # process k rendered rows k, k + 2, ...
    assert_same_outputs(one_process, out)


# --------------------------------------------------------------------------------------- shards by hand


def test_shard_selection_composes_with_the_launcher(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert current_shard(None) == Shard(0, 1) and current_shard("1/3") == Shard(1, 3)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    rows = list(range(18))
    assert current_shard(None).select(rows) == [1, 3, 5, 7, 9, 11, 13, 15, 17]
    # Process 1 of 2 inside shard 1/3 takes every second row of that shard, starting with its second.
    assert current_shard("1/3").select(rows) == parse_shard("1/3").select(rows)[1::2] == [4, 10, 16]
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_device("cpu") == "cpu"  # only a GPU device follows the local rank
    with pytest.raises(UserError, match="is not K/N"):
        parse_shard("3")


def test_merge_checks_every_row_exactly_once(tmp_path):
    labels = [f"row-{i}" for i in range(5)]
    logs = [ShardLog(tmp_path, "demo", Shard(k, 2), labels, plan="p1") for k in (0, 1)]
    for i in range(5):
        if i != 3:
            logs[i % 2].add(i, {"value": i * i})
    with pytest.raises(UserError, match=r"row 3 \(row-3\) is missing.*--shard 1/2"):
        merge_rows(tmp_path, "demo")
    logs[1].add(3, {"value": 9})
    assert logs[0].finish() is False and logs[1].finish() is True  # the second to finish sees every shard complete
    records, _ = merge_rows(tmp_path, "demo")
    assert [r["value"] for r in records] == [0, 1, 4, 9, 16]

    other = ShardLog(tmp_path, "demo", Shard(1, 3), labels, plan="p1")
    other.add(4, {"value": 16})
    with pytest.raises(UserError, match=r"Row 4 \(row-4\) is present twice: in demo.shard-0-of-2.json and demo.shard-1-of-3.json"):
        merge_rows(tmp_path, "demo")
    ShardLog(tmp_path, "demo", Shard(1, 3), labels, plan="another prompt file")
    with pytest.raises(UserError, match="different jobs"):
        merge_rows(tmp_path, "demo")


# ------------------------------------------------------------------------------------- the evaluation CLIs


def test_sharded_nudity_evaluation_equals_one_process(video_folder, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(eval_nudity, "load_detector", lambda: RedCornerDetector())
    one = eval_nudity.main(["--video_dir", str(video_folder), "--output_dir", str(tmp_path / "one")])
    argv = ["--video_dir", str(video_folder), "--output_dir", str(tmp_path / "two")]
    assert eval_nudity.main(argv + ["--shard", "1/2"]) is None  # shard 0 has not run yet
    merged = eval_nudity.main(argv + ["--shard", "0/2"])
    assert merged == one and [v["flagged_frames"] for v in one["videos"]] == [3, 0]
    for name in ("nudity.json", "nudity.csv"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_sharded_preservation_evaluation_equals_one_process(pair_folder, tmp_path):  # noqa: F811
    one = eval_preservation.main(["--video_dir", str(pair_folder), "--output_dir", str(tmp_path / "one")])
    argv = ["--video_dir", str(pair_folder), "--output_dir", str(tmp_path / "three")]
    for k in (2, 0, 1):
        merged = eval_preservation.main(argv + ["--shard", f"{k}/3"])
    assert merged == one and one["num_pairs"] == 2
    assert (tmp_path / "three" / "preservation.csv").read_text() == (tmp_path / "one" / "preservation.csv").read_text()


# ------------------------------------------------------------------------------------------- the attack


def test_sharded_attack_equals_one_process_and_resumes(tiny_cogvideox_dir, tmp_path):
    from tests.test_attack import _tiny_eraser

    eraser = _tiny_eraser(tmp_path, "cogvideox", tiny_cogvideox_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left on a gray background\na blue square moving up on a black background\n")
    common = ["--model_path", str(tiny_cogvideox_dir), "--eraser_path", str(eraser), "--prompts_file", str(prompts),
              "--target_concept", "red", "--steps", "3", "--num_tokens", "2", "--num_frames", "9", "--height", "32",
              "--width", "32", "--num_inference_steps", "2"]
    one = attack_cli.main(common + ["--output_dir", str(tmp_path / "one")])
    two = tmp_path / "two"
    attack_cli.main(common + ["--output_dir", str(two), "--shard", "0/2"])  # learns the soft prompt, renders row 0
    assert not (two / "attack.json").exists()
    merged = attack_cli.main(common + ["--output_dir", str(two), "--shard", "1/2"])  # reuses it, renders row 1, merges

    assert len(one["loss_curve"]) == 3
    for report in (one, merged):
        report["settings"].pop("output_dir")
    assert merged == one == {**json.loads((two / "attack.json").read_text()), "settings": one["settings"]}
    # The videos, the grids and the soft prompt file (vectors and settings) are the same; attack.json differs only
    # by --output_dir (compared above).
    assert_same_outputs(tmp_path / "one", two, names_only=("attack.json",))

    mtimes = {p.name: p.stat().st_mtime_ns for p in two.iterdir() if SHARD_FILE not in p.name and p.suffix != ".json"}
    attack_cli.main(common + ["--output_dir", str(two), "--shard", "1/2"])  # a rerun keeps the soft prompt and the row
    assert {p.name: p.stat().st_mtime_ns for p in two.iterdir() if SHARD_FILE not in p.name and p.suffix != ".json"} == mtimes
