"""Issue 17: a careless command never loses or silently corrupts a user's work.

One test per case of the issue (the case number is in each test's docstring). Each runs the real CLI
in-process (``main(argv)``) next to an earlier training run and asserts the exit code, the message, and that
no file of the earlier run changed (SHA-256 of every file before and after). Faults the machine cannot make
on demand are injected at the call that would fail: a full disk as ``ENOSPC`` from the write, a read-only
folder as ``EROFS`` from ``os.open`` (tests run as root here, where permissions do not stop writes), a kill
between two files as an interruption of the second write. ``ulimit -f`` and Ctrl-C are real.
"""

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from receler import checkpoint as checkpoint_module
from receler.auto_generate_preserved_concepts import main as preserved_main
from receler.checkpoint import CheckpointError, load_erasers, read_eraser_folder, save_eraser_folder
from receler.erasers.wrapper import attach_erasers
from receler.estimate_memory import main as estimate_main
from receler.families import get_family
from receler.tiny import build_tiny_pipeline, save_tiny_pipeline
from receler.train_unlearning_prompt_only import main as train_main

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import test_cogvideo  # noqa: E402  (the top-level inference script)

PROMPTS = [("a photo of nudity on the beach", "a photo of a dressed woman on the beach"),
           ("nudity in a park at night", "a dressed man in a park at night")]
LR = 1e-2


def write_prompts(path, rows=PROMPTS):
    path.write_text("prompt,preserve_prompt\n" + "".join(f'"{p}","{q}"\n' for p, q in rows))
    return path


def train_argv(model_dir, prompts, out, *extra):
    """The earlier run's flags (4 updates, a checkpoint every 2), then ``extra`` (later flags win)."""
    return ["--model_path", str(model_dir), "--target_concept", "nudity", "--prompts_file", str(prompts),
            "--output_dir", str(out), "--num_inference_steps", "3", "--eraser_rank", "4", "--learning_rate", str(LR),
            "--num_frames", "9", "--height", "32", "--width", "32", "--max_steps", "4", "--save_every", "2", *extra]


def snapshot(folder) -> dict:
    """``{relative path: SHA-256}`` of every file under ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(main, argv, capsys) -> tuple:
    """Run a CLI that must fail: ``(exit code, stderr)``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def one_message(err: str) -> str:
    """The CLI's message line (``error: ...``); there must be exactly one, and no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(("error: ", "interrupted: "))]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, tiny_cogvideox_dir):
    """An earlier, finished training run: eraser, args.json, train_log.jsonl, loss.png, checkpoints step_2, step_4."""
    root = tmp_path_factory.mktemp("earlier")
    prompts = write_prompts(root / "prompts.csv")
    train_main(train_argv(tiny_cogvideox_dir, prompts, root / "run"))
    return root / "run", prompts


@pytest.fixture
def run_dir(earlier, tmp_path):
    """A private copy of the earlier run that a test may point commands at."""
    return Path(shutil.copytree(earlier[0], tmp_path / "run"))


@pytest.fixture
def prompts(earlier):
    return earlier[1]


# --------------------------------------------------------------------------- 1. another run's output folder


@pytest.mark.parametrize("kind", ["eraser_folder", "notes_folder"])
def test_output_dir_holding_files_is_refused(kind, run_dir, prompts, tiny_cogvideox_dir, tmp_path, capsys):
    """Case 1: --output_dir at another run's eraser folder (or someone's notes) overwrote it without a word."""
    folder = run_dir
    if kind == "notes_folder":
        folder = tmp_path / "notes"
        folder.mkdir()
        (folder / "notes.txt").write_text("my notes\n")
    before = snapshot(folder)
    code, err = refused(train_main, train_argv(tiny_cogvideox_dir, prompts, folder), capsys)
    message = one_message(err)
    assert code == 2 and "already holds files" in message
    assert "--resume_from" in message and "--overwrite" in message
    assert snapshot(folder) == before


def test_overwrite_moves_the_earlier_run_aside(run_dir, prompts, tiny_cogvideox_dir, capsys):
    """Case 1, the way out: --overwrite starts over and keeps every old file, moved beside the folder."""
    before = snapshot(run_dir)
    entries = len(list(run_dir.iterdir()))
    summary = train_main(train_argv(tiny_cogvideox_dir, prompts, run_dir, "--overwrite", "--max_steps", "3",
                                    "--save_every", "0"))
    assert summary == {"updates": 3, "stopped": "max_steps"}
    (aside,) = run_dir.parent.glob("run.old-*")
    assert snapshot(aside) == before, "every file of the earlier run is kept, unchanged"
    assert f"moved {entries} entries of {run_dir} to {aside}" in capsys.readouterr().err
    # No checkpoint of the earlier run is left beside the new run's (there are none: --save_every 0 ...
    assert sorted((run_dir / "checkpoints").iterdir()) == [run_dir / "checkpoints" / "step_3"]  # ... but the last)
    assert [json.loads(r)["step"] for r in (run_dir / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert not (run_dir / ".receler-train.lock").exists()


# --------------------------------------------------------------------------------------- 2. two runs at once


def test_second_training_into_a_folder_in_use_is_refused(run_dir, prompts, tiny_cogvideox_dir, capsys):
    """Case 2: two trainings into one --output_dir both 'succeeded'; one run's results were gone."""
    holder = subprocess.Popen(  # another process holds the folder, as a running training does
        [sys.executable, "-c", "import sys; from receler.run_folder import RunLock; RunLock(sys.argv[1]).acquire(); "
         "print('locked', flush=True); sys.stdin.read()", str(run_dir)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        before = snapshot(run_dir)
        # --overwrite: even the flag that would accept a used folder cannot take it from a live run
        code, err = refused(train_main, train_argv(tiny_cogvideox_dir, prompts, run_dir, "--overwrite"), capsys)
        message = one_message(err)
        assert code == 2 and f"in use by another training (pid {holder.pid}" in message
        assert snapshot(run_dir) == before
    finally:
        holder.kill()  # killed: its lock stays behind, stale
        holder.wait()
    assert (run_dir / ".receler-train.lock").exists()
    train_main(train_argv(tiny_cogvideox_dir, prompts, run_dir, "--overwrite", "--max_steps", "1"))
    assert f"was left by a training that no longer runs (pid {holder.pid}" in capsys.readouterr().err
    assert not (run_dir / ".receler-train.lock").exists()


# ------------------------------------------------------------------------------------- 3. non-finite erasers


def _render_argv(model_dir, eraser, out):
    return ["--model_path", str(model_dir), "--eraser_path", str(eraser), "--prompt", "nudity on the beach",
            "--output_path", str(out / "video.mp4"), "--num_frames", "9", "--height", "32", "--width", "32",
            "--num_inference_steps", "2"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_eraser_is_refused_naming_the_tensor(value, run_dir, tiny_cogvideox_dir, tmp_path, capsys):
    """Case 3: an eraser with NaN/Inf weights loaded silently and rendered black videos that score as clean."""
    tensors = load_file(str(run_dir / "eraser_weights.safetensors"))
    tensors["transformer_blocks.1.attn1.adapter.up.weight"][3, 1] = value
    save_file(tensors, str(run_dir / "eraser_weights.safetensors"))
    (run_dir / "eraser_manifest.json").unlink()  # as a user would hand it over: no manifest to catch the edit
    before = snapshot(run_dir)
    code, err = refused(test_cogvideo.main, _render_argv(tiny_cogvideox_dir, run_dir, tmp_path / "videos"), capsys)
    message = one_message(err)
    assert code == 2 and "tensor 'transformer_blocks.1.attn1.adapter.up.weight' holds 1 non-finite value" in message
    assert snapshot(run_dir) == before and not (tmp_path / "videos").exists()


def test_non_finite_erasers_are_never_saved(run_dir):
    """Case 3, the writing side: diverged weights are refused before any file is replaced."""
    family = get_family("cogvideox")
    pipe = build_tiny_pipeline("cogvideox", seed=0)
    erasers = attach_erasers(pipe.transformer, family.layout, 4)
    with torch.no_grad():
        next(iter(erasers.values())).down.bias[0] = float("nan")
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match=r"tensor 'transformer_blocks.0.attn1.adapter.down.bias' holds 1 non-finite"):
        save_eraser_folder(run_dir, pipe.transformer, family.layout)
    assert snapshot(run_dir) == before


# ------------------------------------------------------------------------------------------------ 4. Ctrl-C


def test_ctrl_c_exits_130_and_a_set_e_script_stops(earlier, tiny_cogvideox_dir, tmp_path):
    """Case 4: Ctrl-C ended training with exit 0, so `set -e` scripts went on with an unfinished eraser.

    A real SIGINT to the script's process group (what a terminal's Ctrl-C sends), in a subprocess."""
    run, prompts = earlier
    before = snapshot(run)
    out = tmp_path / "resumed"
    argv = train_argv(tiny_cogvideox_dir, prompts, out, "--resume_from", str(run / "checkpoints" / "step_2"),
                      "--max_steps", "200", "--num_epochs", "100", "--save_every", "0")
    script = (f"set -e\n{sys.executable} receler/train_unlearning_prompt_only.py "
              + " ".join(f"'{a}'" for a in argv) + "\necho RENDERING-THE-UNFINISHED-ERASER\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, text=True)
    try:
        deadline = time.monotonic() + 240
        log = out / "train_log.jsonl"
        while not (log.exists() and log.read_text().strip()):  # the first update after the resume is done
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "RENDERING-THE-UNFINISHED-ERASER" not in stdout
    message = one_message(stderr)
    updates = json.loads(log.read_text().splitlines()[-1])["step"]
    assert message.startswith(f"interrupted: training stopped after {updates} updates (Ctrl-C)")
    saved = out / "checkpoints" / f"step_{updates}"
    assert f"--resume_from {saved}" in message and (saved / "training_state.pt").is_file()
    assert torch.equal(load_file(str(saved / "eraser_weights.safetensors"))["transformer_blocks.0.attn1.adapter.up.bias"],
                       load_file(str(out / "eraser_weights.safetensors"))["transformer_blocks.0.attn1.adapter.up.bias"])
    assert snapshot(run) == before


def test_every_training_script_stops_on_the_first_failure():
    """Case 4, the scripts' side: each shell script that trains runs under `set -e` (so exit 130 stops it)."""
    scripts = [p for p in (REPO / "scripts").glob("*.sh") if "train_unlearning_prompt_only.py" in p.read_text()]
    assert len(scripts) >= 6
    for script in scripts:
        assert "set -euo pipefail" in script.read_text().splitlines()[:12], script.name


# ------------------------------------------------------------------------------ 5. resume with other settings

CHANGES = {
    "learning_rate": (["--learning_rate", "5e-3"], "learning_rate 0.01 -> 0.005"),
    "num_inference_steps": (["--num_inference_steps", "4"], "num_inference_steps 3 -> 4"),
    "eta": (["--eta", "3"], "eta 7.0 -> 3.0"),
    "alpha": (["--alpha", "0.5"], "alpha 1.0 -> 0.5"),
    "beta": (["--beta", "0.5"], "beta 1.0 -> 0.5"),
    "seed": (["--seed", "7"], "seed 42 -> 7"),
    "size": (["--height", "48"], "height 32 -> 48"),
    "frames": (["--num_frames", "13"], "num_frames 9 -> 13"),
    "mask_mode": (["--mask_mode", "average"], 'mask_mode "per_layer" -> "average"'),
    "mask_normalize": (["--mask_normalize", "video"], 'mask_normalize "frame" -> "video"'),
    "mask_fallback": (["--mask_fallback", "none"], 'mask_fallback "concept" -> "none"'),
    "start_guidance": (["--start_guidance", "3"], "start_guidance 1.0 -> 3.0"),
    "anchor_prompt": (["--anchor_prompt", "a person"], 'anchor_prompt null -> "a person"'),
    "anchor_weight": (["--anchor_weight", "0.5"], "anchor_weight 1.0 -> 0.5"),
    "batch_size": (["--batch_size", "2"], "batch_size 1 -> 2"),
    "prompts": ("prompts", "prompt_rows"),
    "model": ("model", "model"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_resume_with_changed_settings_is_refused(change, run_dir, prompts, tiny_cogvideox_dir, tmp_path, capsys):
    """Case 5: --resume_from with another learning rate, step count or prompts was accepted without a word."""
    flags, needle = CHANGES[change]
    model = tiny_cogvideox_dir
    if flags == "prompts":
        prompts, flags = write_prompts(tmp_path / "edited.csv", [PROMPTS[0], ("nudity at night", "a man at night")]), []
    elif flags == "model":  # the same family and size, another transformer (rotary positions): after it loads
        model, flags = save_tiny_pipeline("cogvideox", tmp_path / "rotary", seed=0, rotary=True), []
    before = snapshot(run_dir)
    argv = train_argv(model, prompts, run_dir, "--resume_from", str(run_dir / "checkpoints" / "step_2"), *flags)
    code, err = refused(train_main, argv, capsys)
    message = one_message(err)
    assert code == 2 and "was trained with other settings than this run" in message
    assert needle in message and "--allow_changed_args" in message
    assert snapshot(run_dir) == before


def test_allow_changed_args_records_the_change_and_trains_with_it(run_dir, prompts, tiny_cogvideox_dir, capsys):
    """Case 5, the way out: the change is logged and recorded, and the optimizer uses the new learning rate."""
    checkpoint = run_dir / "checkpoints" / "step_2"
    kept = snapshot(checkpoint)
    later = snapshot(run_dir / "checkpoints" / "step_4")
    train_main(train_argv(tiny_cogvideox_dir, prompts, run_dir, "--resume_from", str(checkpoint),
                          "--learning_rate", "5e-3", "--allow_changed_args", "--save_every", "0"))
    err = capsys.readouterr().err
    assert "--allow_changed_args: resuming" in err and "learning_rate 0.01 -> 0.005" in err
    args = json.loads((run_dir / "args.json").read_text())
    assert args["resumed_from"] == {"checkpoint": str(checkpoint),
                                    "changed_settings": {"learning_rate": {"checkpoint": LR, "now": 5e-3}}}
    rows = [json.loads(r) for r in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"]) for r in rows] == [(1, LR), (2, LR), (3, 5e-3), (4, 5e-3)]
    assert snapshot(checkpoint) == kept
    # the abandoned continuation's checkpoint is moved aside, not mixed with (or taken for) the new step_4
    (aside,) = run_dir.parent.glob("run.old-*")
    assert snapshot(aside / "checkpoints" / "step_4") == later


# ---------------------------------------------------------------- 6. the eraser folder is written as a unit


def _new_weights_on(run_dir):
    """A transformer carrying the earlier run's erasers, moved: saving it replaces every file."""
    family = get_family("cogvideox")
    pipe = build_tiny_pipeline("cogvideox", seed=0)
    load_erasers(pipe.transformer, family.layout, run_dir)
    with torch.no_grad():
        for name, module in pipe.transformer.named_modules():
            if name.endswith(".adapter"):
                module.up.bias.add_(1.0)
    return pipe.transformer, family.layout


@pytest.mark.parametrize("killed_at", [1, 2, 3, 4])
def test_a_save_killed_between_the_files_loads_old_or_new_never_a_mix(killed_at, run_dir, tiny_cogvideox_dir,
                                                                       tmp_path, monkeypatch, capsys, caplog):
    """Case 6: .safetensors, .pt and config were three separate writes; a kill between them left weights of two
    saves (the original release's scripts read the .pt). The process dies before the 1st, 2nd or 3rd file of a
    save, or (4) after the three files, before the manifest that closes the save."""
    names = ("eraser_weights.safetensors", "eraser_weights.pt", "eraser_config.json")
    old = {n: (run_dir / n).read_bytes() for n in names}
    key = "transformer_blocks.0.attn1.adapter"
    old_up = load_file(str(run_dir / "eraser_weights.safetensors"))[f"{key}.up.bias"]
    transformer, layout = _new_weights_on(run_dir)
    real_bytes, real_json, calls = checkpoint_module.atomic_write_bytes, checkpoint_module.atomic_write_json, []

    def killed(path, data):
        calls.append(Path(path).name)
        if len(calls) == killed_at:
            raise KeyboardInterrupt  # the process dies here: this file and those after it are not written
        real_bytes(path, data)

    def manifest(path, obj):
        if killed_at == 4 and obj.get("complete"):
            raise KeyboardInterrupt
        real_json(path, obj)

    monkeypatch.setattr(checkpoint_module, "atomic_write_bytes", killed)
    monkeypatch.setattr(checkpoint_module, "atomic_write_json", manifest)
    with pytest.raises(KeyboardInterrupt):
        save_eraser_folder(run_dir, transformer, layout)
    monkeypatch.undo()
    written = names[: killed_at - 1]
    for name, data in old.items():  # each file is whole: the old one, or (written before the kill) the new one
        assert ((run_dir / name).read_bytes() == data) == (name not in written), name
    assert not list(run_dir.glob(".*.tmp"))
    capsys.readouterr()

    if killed_at == 3:  # both weight files new, the config old: no weights and config of one save are left
        before = snapshot(run_dir)
        code, err = refused(test_cogvideo.main, _render_argv(tiny_cogvideox_dir, run_dir, tmp_path / "v"), capsys)
        assert code == 2 and "a save into it was interrupted and left weights and config of two" in one_message(err)
        assert snapshot(run_dir) == before
        return
    _, state, weights = read_eraser_folder(run_dir)
    up = state[key]["up.bias"]
    if killed_at == 4:  # every file of the new save is in place: the new eraser
        assert torch.equal(up, old_up + 1.0) and weights.name == "eraser_weights.safetensors"
        assert "loading the new eraser" in caplog.text
        return
    assert torch.equal(up, old_up), "the old eraser, whole"
    assert weights.name == ("eraser_weights.safetensors" if killed_at == 1 else "eraser_weights.pt")
    assert "interrupted; loading the previous eraser" in caplog.text
    # the original release's reader (the .pt and the config) sees the old eraser too
    assert torch.equal(torch.load(run_dir / "eraser_weights.pt", weights_only=True)[key]["up.bias"], old_up)


def test_a_checkpoint_killed_while_saving_is_never_loadable(run_dir, prompts, tiny_cogvideox_dir, monkeypatch, capsys):
    """Case 6: a kill during a checkpoint left a partial step_N/ that inference loaded, and a .tmp file."""
    import receler.trainer as trainer_module

    before = snapshot(run_dir / "checkpoints" / "step_2")
    real = trainer_module.save_eraser_folder

    def dies_after_the_weights(folder, *args, extra_files=None, **kwargs):
        real(folder, *args, **kwargs)  # the eraser files are written, the training state never is
        (run_dir / ".eraser_weights.pt.x1y2.tmp").write_bytes(b"half")  # and a write cut short elsewhere
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "save_eraser_folder", dies_after_the_weights)
    with pytest.raises(KeyboardInterrupt):  # resumed from step_2 into its own folder, killed saving step_3
        train_main(train_argv(tiny_cogvideox_dir, prompts, run_dir, "--resume_from",
                              str(run_dir / "checkpoints" / "step_2"), "--save_every", "1"))
    monkeypatch.undo()
    assert not (run_dir / "checkpoints" / "step_3").exists(), "an unfinished checkpoint never bears a step name"
    assert (run_dir / "checkpoints" / ".step_3.partial" / "eraser_weights.pt").exists()
    assert snapshot(run_dir / "checkpoints" / "step_2") == before
    capsys.readouterr()

    # The next run removes the debris (and resumes from the intact step_2).
    train_main(train_argv(tiny_cogvideox_dir, prompts, run_dir, "--resume_from", str(run_dir / "checkpoints" / "step_2"),
                          "--save_every", "0", "--max_steps", "3"))
    assert "removed 2 unfinished file(s) of an interrupted run" in capsys.readouterr().err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_2", "step_3"]
    assert not [p for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert snapshot(run_dir / "checkpoints" / "step_2") == before


# ---------------------------------------------------------------- file system: read-only, full disk, ulimit


def test_read_only_output_folder_is_one_message(run_dir, prompts, tiny_cogvideox_dir, monkeypatch, capsys):
    """Case 7: a read-only output folder ended in a traceback."""
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(run_dir)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    before = snapshot(run_dir)
    monkeypatch.setattr(os, "open", read_only)
    code, err = refused(train_main, train_argv(tiny_cogvideox_dir, prompts, run_dir, "--overwrite"), capsys)
    monkeypatch.undo()
    message = one_message(err)
    assert code == 2 and message.startswith(f"error: cannot write {run_dir}: Read-only file system")
    assert snapshot(run_dir) == before


def test_full_disk_while_drawing_the_plot_is_a_warning(run_dir, prompts, tiny_cogvideox_dir, tmp_path, monkeypatch,
                                                       capsys):
    """Case 8: a full disk while drawing the optional loss.png stopped the training."""
    import matplotlib.figure

    def disk_full(self, fname, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(fname))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    before = snapshot(run_dir)
    out = tmp_path / "new"
    summary = train_main(train_argv(tiny_cogvideox_dir, prompts, out, "--resume_from",
                                    str(run_dir / "checkpoints" / "step_2")))
    assert summary == {"updates": 4, "stopped": "max_steps"}
    err = capsys.readouterr().err
    assert f"could not draw {out / 'loss.png'}" in err and "No space left on device" in err
    assert (out / "eraser_weights.safetensors").exists() and not (out / "loss.png").exists()
    assert snapshot(run_dir) == before


def test_full_disk_while_saving_a_checkpoint_is_one_message(run_dir, prompts, tiny_cogvideox_dir, monkeypatch, capsys):
    """Case 8: a full disk while writing a checkpoint: one message naming the file; nothing earlier is lost."""
    import receler.io_utils as io_utils

    real = io_utils.atomic_write

    def disk_full(path, write):
        if Path(path).name == "eraser_weights.pt" and "step_3" in str(path):
            def fill(tmp):
                Path(tmp).write_bytes(b"\0" * 100)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, fill)
        return real(path, write)

    monkeypatch.setattr(io_utils, "atomic_write", disk_full)
    saved = {k: v for k, v in snapshot(run_dir).items() if not k.startswith("checkpoints/step_4")}
    code, err = refused(train_main, train_argv(tiny_cogvideox_dir, prompts, run_dir, "--resume_from",
                                               str(run_dir / "checkpoints" / "step_2"), "--save_every", "1"), capsys)
    message = one_message(err)
    partial = run_dir / "checkpoints" / ".step_3.partial" / "eraser_weights.pt"
    assert code == 2 and message.startswith(f"error: cannot write {partial}: No space left on device. The disk is full")
    after = snapshot(run_dir)
    # the eraser, the config and every checkpoint of the run so far are intact (a resume rewrites args.json and
    # trims train_log.jsonl to the checkpoint; the abandoned step_4 is moved aside)
    assert {k: after[k] for k in saved if k not in ("args.json", "train_log.jsonl")} == \
        {k: v for k, v in saved.items() if k not in ("args.json", "train_log.jsonl")}
    assert not (run_dir / "checkpoints" / "step_3").exists()


def test_file_size_limit_is_one_message(earlier, prompts, tiny_cogvideox_dir, tmp_path, capsys):
    """Case 9: `ulimit -f` (a file size limit; the kernel refuses the write with EFBIG) ended in a traceback.
    A real limit, set on this process for the run: the 44 KB training state is over it, everything else under."""
    run, _ = earlier
    before = snapshot(run)
    out = tmp_path / "limited"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        code, err = refused(train_main, train_argv(tiny_cogvideox_dir, prompts, out, "--resume_from",
                                                   str(run / "checkpoints" / "step_2"), "--save_every", "1"), capsys)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = one_message(err)
    assert code == 2
    assert message.startswith(f"error: cannot write {out / 'checkpoints' / '.step_3.partial' / 'training_state.pt'}: "
                              f"File too large. The file exceeds the file size limit of this shell (ulimit -f)")
    assert snapshot(run) == before and not (out / "checkpoints" / "step_3").exists()


def test_output_dir_that_is_a_file_is_one_message(run_dir, prompts, tiny_cogvideox_dir, capsys):
    """Case 10: --output_dir naming a file ended in a traceback."""
    before = snapshot(run_dir)
    code, err = refused(train_main, train_argv(tiny_cogvideox_dir, prompts, run_dir / "args.json"), capsys)
    assert code == 2 and f"--output_dir {run_dir / 'args.json'} is a file, not a folder" in one_message(err)
    assert snapshot(run_dir) == before


# ------------------------------------------------------------------------------------ bad numeric flags


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--learning_rate", "-1"], "--learning_rate must be a finite number > 0 (got -1.0)"),     # case 11
        (["--log_every", "0"], "--log_every must be at least 1 (got 0)"),                         # case 12
        (["--save_every", "-1"], "--save_every must be 0 (save only at the end) or a number"),    # case 13
        (["--width", "0"], "--width must be at least 1 (got 0); leave it out for the model's own"),  # case 18
        (["--learning_rate", "nan"], "--learning_rate must be a finite number > 0 (got nan)"),
        (["--eta", "-3"], "--eta must be a finite number >= 0 (got -3.0)"),
        (["--max_grad_norm", "0"], "--max_grad_norm must be > 0 (got 0.0); pass inf"),
        (["--mask_threshold", "1.5"], "--mask_threshold must be in [0, 1]"),
        (["--num_frames", "-9"], "--num_frames must be at least 1 (got -9)"),
    ],
    ids=["learning_rate_negative", "log_every_zero", "save_every_negative", "width_zero", "learning_rate_nan",
         "eta_negative", "max_grad_norm_zero", "mask_threshold_above_1", "num_frames_negative"],
)
def test_bad_training_numbers_are_refused_before_anything_runs(flags, needle, run_dir, prompts, tiny_cogvideox_dir,
                                                               capsys):
    """Cases 11-13, 18: --learning_rate -1 (a traceback), --log_every 0 (ZeroDivisionError after the first
    update), --save_every -1 (saved every update), --width 0 (silently the model's width)."""
    before = snapshot(run_dir)
    code, err = refused(train_main, train_argv(tiny_cogvideox_dir, prompts, run_dir, "--overwrite", *flags), capsys)
    assert code == 2 and needle in one_message(err)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("flags, needle", [
    (["--width", "0"], "--width must be at least 1 (got 0)"),
    (["--height", "-32"], "--height must be at least 1 (got -32)"),
    (["--guidance_scale", "nan"], "--guidance_scale must be a finite number >= 0 (got nan)"),
    (["--fps", "nan"], "--fps must be positive (got nan)"),
], ids=["width_zero", "height_negative", "guidance_nan", "fps_nan"])
def test_bad_inference_numbers_are_refused(flags, needle, run_dir, tiny_cogvideox_dir, tmp_path, capsys):
    """Case 18 in inference: --width 0 rendered at the model's width without a word."""
    before = snapshot(run_dir)
    code, err = refused(test_cogvideo.main, _render_argv(tiny_cogvideox_dir, run_dir, tmp_path / "v") + flags, capsys)
    assert code == 2 and needle in one_message(err)
    assert snapshot(run_dir) == before and not (tmp_path / "v").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--steps", "-5"], "--steps must be at least 1 (got -5)"),
    (["--num_tokens", "0"], "--num_tokens must be at least 1 (got 0)"),
    (["--width", "0"], "--width must be at least 1 (got 0)"),
    (["--lr", "0"], "--lr must be a finite number > 0 (got 0.0)"),
], ids=["steps_negative", "num_tokens_zero", "width_zero", "lr_zero"])
def test_bad_attack_numbers_are_refused(flags, needle, run_dir, tiny_cogvideox_dir, tmp_path, capsys):
    """The same checks in the attack."""
    from evaluation.attack import main as attack_main

    before = snapshot(run_dir)
    argv = ["--model_path", str(tiny_cogvideox_dir), "--eraser_path", str(run_dir), "--target_concept", "nudity",
            "--prompt", "nudity on the beach", "--output_dir", str(tmp_path / "attack"), *flags]
    code, err = refused(attack_main, argv, capsys)
    assert code == 2 and needle in one_message(err)
    assert snapshot(run_dir) == before and not (tmp_path / "attack").exists()


# ------------------------------------------------------------------------- broken files handed to the tools


def test_eraser_config_that_is_a_json_list_is_one_message(run_dir, tiny_cogvideox_dir, tmp_path, capsys):
    """Case 14: an eraser_config.json holding a JSON list ended in a traceback."""
    (run_dir / "eraser_config.json").write_text('["adapter", 4]\n')
    (run_dir / "eraser_manifest.json").unlink()
    before = snapshot(run_dir)
    code, err = refused(test_cogvideo.main, _render_argv(tiny_cogvideox_dir, run_dir, tmp_path / "v"), capsys)
    assert code == 2 and "eraser_config.json must hold a JSON object" in one_message(err)
    assert snapshot(run_dir) == before


class _Payload:
    """Unpickling this would create a marker file: proof that the checkpoint ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("manifest", ["kept", "removed"])
def test_pickled_training_state_is_refused_without_running_it(manifest, run_dir, prompts, tiny_cogvideox_dir,
                                                              tmp_path, capsys):
    """Case 15: a pickled training_state.pt was refused, but as a traceback. With the checkpoint's manifest the
    replaced file is caught by its hash; without one (an older checkpoint), by the safe loader."""
    marker = tmp_path / "code_ran"
    checkpoint = run_dir / "checkpoints" / "step_2"
    torch.save({"position": _Payload(str(marker))}, checkpoint / "training_state.pt")
    if manifest == "removed":
        (checkpoint / "eraser_manifest.json").unlink()
    before = snapshot(run_dir)
    code, err = refused(train_main, train_argv(tiny_cogvideox_dir, prompts, run_dir, "--resume_from", str(checkpoint)),
                        capsys)
    message = one_message(err)
    assert code == 2 and not marker.exists()
    assert ("is not the file saved with the rest" if manifest == "kept" else "refused to load") in message
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_eraser_with_extra_keys_is_refused_in_both_formats(fmt, run_dir, tiny_cogvideox_dir, tmp_path, capsys):
    """Case 22: a .pt eraser with extra keys was accepted where the same in safetensors was refused."""
    (run_dir / "eraser_manifest.json").unlink()
    if fmt == "pt":
        state = torch.load(run_dir / "eraser_weights.pt", weights_only=True)
        state["transformer_blocks.0.attn1.adapter"]["gate.weight"] = torch.ones(3)
        torch.save(state, run_dir / "eraser_weights.pt")
        (run_dir / "eraser_weights.safetensors").unlink()
    else:
        flat = load_file(str(run_dir / "eraser_weights.safetensors"))
        flat["transformer_blocks.0.attn1.adapter.gate.weight"] = torch.ones(3)
        save_file(flat, str(run_dir / "eraser_weights.safetensors"))
    before = snapshot(run_dir)
    code, err = refused(test_cogvideo.main, _render_argv(tiny_cogvideox_dir, run_dir, tmp_path / "v"), capsys)
    assert code == 2 and "transformer_blocks.0.attn1.adapter.gate.weight" in one_message(err)
    assert snapshot(run_dir) == before


# -------------------------------------------------------------------------------------------- LLM endpoint


class TrickleLLM:
    """An endpoint that answers 200 and then sends its body one byte every 0.25 s (40 bytes: 10 s)."""

    def __init__(self):
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "40")
                self.end_headers()
                for byte in b'{"choices": [{"message": {"content": ""}}' [:40]:
                    if server.stop.wait(0.25):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *args: None  # the client hung up: expected
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def earlier_concepts(tmp_path):
    """An earlier run's preserved concepts file, which a failed run must leave alone."""
    path = tmp_path / "preserved.txt"
    path.write_text("person\nbeach\n")
    return path


def test_llm_endpoint_that_trickles_is_bounded_by_timeout(earlier_concepts, capsys):
    """Case 16: an endpoint sending a byte a second held the client past --timeout (it bounded each read)."""
    before = snapshot(earlier_concepts.parent)
    with TrickleLLM() as llm:
        start = time.monotonic()
        code, err = refused(preserved_main, ["--target_concept", "nudity", "--method", "llm", "--llm_base_url", llm.url,
                                             "--timeout", "1", "--output_file", str(earlier_concepts)], capsys)
        elapsed = time.monotonic() - start
    assert code == 2 and "did not answer within 1 s (--timeout)" in one_message(err)
    assert elapsed < 3.0, f"--timeout 1 must bound the whole request (took {elapsed:.1f} s)"
    assert snapshot(earlier_concepts.parent) == before


@pytest.mark.parametrize("url", ["localhost:8000/v1", "http://[::1/v1", "http://localhost:80a/v1", "ftp://host/v1"])
def test_malformed_llm_url_is_one_message(url, earlier_concepts, capsys):
    """Case 17: a malformed --llm_base_url ended in a traceback."""
    before = snapshot(earlier_concepts.parent)
    code, err = refused(preserved_main, ["--target_concept", "nudity", "--method", "llm", "--llm_base_url", url,
                                         "--output_file", str(earlier_concepts)], capsys)
    message = one_message(err)
    assert code == 2 and f"--llm_base_url {url!r} is not" in message
    assert snapshot(earlier_concepts.parent) == before


# --------------------------------------------------------------------------------------------- the estimator


@pytest.mark.parametrize("flags, needle", [
    (["--batch_size", "-2"], "--batch_size must be at least 1 (got -2)"),                          # case 19
    (["--eraser_rank", "-128"], "--eraser_rank must be at least 1 (got -128)"),                    # case 19
    (["--checkpoint_blocks", "-3"], "--checkpoint_blocks must be at least 0 (got -3)"),            # case 19
    (["--recommend", "--gpu_memory", "nan"], "--gpu_memory must be a finite number > 0 (got nan)"),  # case 20
    (["--width", "0"], "--width must be at least 1 (got 0)"),
], ids=["batch_size", "eraser_rank", "checkpoint_blocks", "gpu_memory_nan", "width_zero"])
def test_estimator_refuses_impossible_numbers(flags, needle, tmp_path, capsys):
    """Cases 19-20: the estimator accepted negative batch sizes, ranks and block counts and NaN GPU memory, and
    printed negative GiB."""
    earlier_json = tmp_path / "estimate.json"
    estimate_main(["--preset", "tiny", "--device", "cpu", "--json", str(earlier_json)])
    capsys.readouterr()
    before = snapshot(tmp_path)
    code, err = refused(estimate_main, ["--preset", "tiny", "--device", "cpu", "--json", str(earlier_json), *flags], capsys)
    assert code == 2 and needle in one_message(err)
    assert snapshot(tmp_path) == before


def test_estimator_json_pointing_at_a_folder_is_one_message(tmp_path, capsys):
    """Case 21: --json naming a folder ended in a traceback."""
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "old.json").write_text("{}\n")
    before = snapshot(tmp_path)
    code, err = refused(estimate_main, ["--preset", "tiny", "--device", "cpu", "--json", str(folder)], capsys)
    assert code == 2 and f"--json {folder} is a folder" in one_message(err)
    assert snapshot(tmp_path) == before
