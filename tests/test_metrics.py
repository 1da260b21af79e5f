"""Preservation metrics: PSNR/SSIM against their formulas, CLIP score on a tiny offline CLIP, the CLI."""

import json
import math

import numpy as np
import pytest

from evaluation import eval_preservation
from evaluation.metrics import (
    IDENTICAL_PSNR,
    ClipScorer,
    clip_score_from_embeddings,
    gaussian_window,
    psnr,
    ssim,
    video_psnr_ssim,
)
from receler.errors import UserError
from receler.media import write_video

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


# --------------------------------------------------------------------------------------------------
# PSNR / SSIM


def test_psnr_from_mse_formula():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 40  # one of 48 values off by 40
    b[1, 2, 1] = 20
    mse = (40**2 + 20**2) / 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    assert psnr(a, np.full_like(a, 10)) == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr(b, b) == IDENTICAL_PSNR == 100.0


def test_ssim_of_constant_images_follows_the_formula():
    # Constant frames: both variances and the covariance are 0, so SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1).
    for m1, m2 in [(100, 120), (0, 255), (30, 31)]:
        a = np.full((16, 16, 3), m1, np.uint8)
        b = np.full((16, 16, 3), m2, np.uint8)
        expected = (2 * m1 * m2 + C1) / (m1**2 + m2**2 + C1)
        assert ssim(a, b) == pytest.approx(expected, rel=1e-9)


def brute_force_ssim(x, y, win=11, sigma=1.5):
    """SSIM of one channel by direct summation over every fully covered window position."""
    g = np.exp(-((np.arange(win) - win // 2) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    values = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            px, py = x[i : i + win, j : j + win], y[i : i + win, j : j + win]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
    return float(np.mean(values))


def test_ssim_matches_direct_summation():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (14, 13, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    expected = np.mean([brute_force_ssim(a[..., c], b[..., c]) for c in range(3)])
    assert ssim(a, b) == pytest.approx(expected, abs=1e-9)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
    assert -1.0 <= ssim(a, 255 - a) < ssim(a, b) < 1.0


def test_ssim_identical_and_tiny_frames():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)  # smaller than the 11x11 window
    assert ssim(a, a) == 1.0
    assert ssim(a.astype(np.float64), a.astype(np.float64).copy()) == 1.0
    b = a.copy()
    b[0, 0] = 255 - b[0, 0]
    assert 0.0 < ssim(a, b) < 1.0
    assert gaussian_window(7).sum() == pytest.approx(1.0)


def test_identical_videos_give_100_db_and_1():
    rng = np.random.default_rng(2)
    video = rng.integers(0, 256, (5, 24, 32, 3), dtype=np.uint8)
    numbers = video_psnr_ssim(video, video.copy())
    assert numbers["psnr"] == 100.0 and numbers["ssim"] == 1.0
    assert numbers["frames_compared"] == 5


def test_video_means_over_frames():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    b = a.copy()
    b[1] = 10  # frame 0 identical (100 dB), frame 1 MSE 100
    numbers = video_psnr_ssim(a, b)
    assert numbers["psnr"] == pytest.approx((100 + 10 * math.log10(255**2 / 100)) / 2)
    assert numbers["ssim"] == pytest.approx((1 + C1 / (100 + C1)) / 2)


def test_clip_score_formula_on_hand_vectors():
    image = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    text = np.array([2.0, 0.0])
    # cosines: 1, 0, -1 (clipped to 0), 1/sqrt(2)
    expected = (100 + 0 + 0 + 100 / math.sqrt(2)) / 4
    assert clip_score_from_embeddings(image, text) == pytest.approx(expected)


# --------------------------------------------------------------------------------------------------
# CLIP on a tiny model built offline


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(str(folder))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


def test_clip_score_equals_cosine_of_the_models_embeddings(tiny_clip):
    import torch
    from transformers import CLIPProcessor

    scorer = ClipScorer(tiny_clip, batch_size=2)
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    text = "a cat on a mat"
    score = scorer.score(frames, text)
    assert 0.0 <= score <= 100.0

    processor = CLIPProcessor.from_pretrained(str(tiny_clip))
    inputs = processor(text=[text], images=list(frames), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = scorer.model(**inputs)
    img = out.image_embeds.double().numpy()
    txt = out.text_embeds[0].double().numpy()
    cos = img @ txt / (np.linalg.norm(img, axis=1) * np.linalg.norm(txt))
    expected = float(np.mean(np.maximum(100 * cos, 0)))
    assert score == pytest.approx(expected, abs=1e-3)


def test_clip_model_path_errors(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        ClipScorer(tmp_path / "missing")
    with pytest.raises(UserError, match="Cannot load a CLIP model"):
        ClipScorer(tmp_path)


# --------------------------------------------------------------------------------------------------
# the CLI


@pytest.fixture
def pair_folder(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    y, x = np.mgrid[0:48, 0:64]
    base = np.stack([x * 3, y * 4, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
    video = np.stack([np.roll(base, f, axis=1) for f in range(5)])
    write_video(video, folder / "000_same_clean.mp4")
    (folder / "000_same_erased.mp4").write_bytes((folder / "000_same_clean.mp4").read_bytes())
    write_video(video, folder / "001_changed_clean.mp4")
    write_video(255 - video, folder / "001_changed_erased.mp4")
    write_video(video, folder / "002_lonely_clean.mp4")
    (folder / "003_broken_clean.mp4").write_bytes(b"not a video")
    write_video(video, folder / "003_broken_erased.mp4")
    return folder


def test_cli_psnr_ssim(pair_folder, tmp_path):
    out = tmp_path / "out"
    result = eval_preservation.main(["--video_dir", str(pair_folder), "--output_dir", str(out)])
    pairs = {p["stem"]: p for p in result["pairs"]}
    assert set(pairs) == {"000_same", "001_changed"}
    assert pairs["000_same"]["psnr"] == 100.0 and pairs["000_same"]["ssim"] == 1.0
    assert pairs["001_changed"]["psnr"] < 20 and pairs["001_changed"]["ssim"] < 0.5
    assert result["psnr"] == pytest.approx((100.0 + pairs["001_changed"]["psnr"]) / 2)
    assert result["clip_score"] is None
    assert {s["stem"] for s in result["skipped"]} == {"002_lonely", "003_broken"}
    data = json.loads((out / "preservation.json").read_text())
    assert data["num_pairs"] == 2 and data["protocol"]["candidate_side"] == "erased"
    lines = (out / "preservation.csv").read_text().splitlines()
    assert lines[0].startswith("stem,") and len(lines) == 3


def test_cli_clip_with_prompt_file_and_prompts_json(pair_folder, tmp_path, tiny_clip):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n")
    out = tmp_path / "out"
    result = eval_preservation.main(
        ["--video_dir", str(pair_folder), "--output_dir", str(out), "--clip_model_path", str(tiny_clip), "--prompt_file", str(prompts)]
    )
    pairs = {p["stem"]: p for p in result["pairs"]}
    assert pairs["000_same"]["prompt"] == "a red square" and pairs["001_changed"]["prompt"] == "a blue circle"
    same = pairs["000_same"]["clip_score"]
    assert same["clean"] == pytest.approx(same["erased"]) and 0 <= same["clean"] <= 100
    assert result["clip_score"]["clean"] == pytest.approx(np.mean([p["clip_score"]["clean"] for p in result["pairs"]]))

    (pair_folder / "prompts.json").write_text(json.dumps({"000_same": "a green tree"}))
    result = eval_preservation.main(["--video_dir", str(pair_folder), "--output_dir", str(out), "--clip_model_path", str(tiny_clip)])
    pairs = {p["stem"]: p for p in result["pairs"]}
    assert pairs["000_same"]["prompt"] == "a green tree" and pairs["000_same"]["clip_score"] is not None
    assert pairs["001_changed"]["clip_score"] is None  # no prompt known for it
