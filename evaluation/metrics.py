"""Preservation metrics between a clean and an erased video, and the CLIP score.

* PSNR per frame over all pixels and the 3 RGB channels, ``10 log10(MAX^2 / MSE)`` with ``MAX = 255``;
  identical frames (MSE = 0) count as :data:`IDENTICAL_PSNR` = 100 dB (docs/design.md, Conventions).
* SSIM per frame (Wang et al. 2004): an 11x11 Gaussian window (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``,
  ``L = 255``, computed **per RGB channel** and averaged over the channels; the SSIM map is averaged
  over the "valid" region only (the window never leaves the frame). Frames smaller than 11 pixels use
  the largest odd window that fits. Identical frames give exactly 1.0.
* Video values are the mean over frames; a set's value is the mean over videos.
* CLIP score: ``max(100 * cos(image_embedding, text_embedding), 0)`` per frame, averaged over frames.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from receler.errors import UserError

logger = logging.getLogger(__name__)

IDENTICAL_PSNR = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


class MetricError(ValueError):
    """Two videos that cannot be compared (different frame sizes)."""


# --------------------------------------------------------------------------------------------------
# PSNR / SSIM


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB between two frames of the same shape; identical frames give :data:`IDENTICAL_PSNR`."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise MetricError(f"PSNR needs frames of one shape, got {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return IDENTICAL_PSNR
    return 10.0 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian of odd length ``size`` (the 2-D window is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _valid_filter(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable correlation of a 2-D float64 image with ``window``, keeping only fully covered pixels."""
    half = len(window) // 2
    out = cv2.sepFilter2D(image, cv2.CV_64F, window, window, borderType=cv2.BORDER_REFLECT)
    return out[half : image.shape[0] - half, half : image.shape[1] - half]


def ssim_channel(x: np.ndarray, y: np.ndarray, data_range: float = 255.0, win_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> float:
    """Mean SSIM of two 2-D images (one channel)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    size = min(win_size, x.shape[0], x.shape[1])
    if size % 2 == 0:
        size -= 1
    window = gaussian_window(size, sigma)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x = _valid_filter(x, window)
    mu_y = _valid_filter(y, window)
    var_x = _valid_filter(x * x, window) - mu_x * mu_x
    var_y = _valid_filter(y * y, window) - mu_y * mu_y
    cov = _valid_filter(x * y, window) - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return float(np.mean(numerator / denominator))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of two ``[H, W]`` or ``[H, W, C]`` frames: per channel, averaged over channels."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise MetricError(f"SSIM needs frames of one shape, got {a.shape} and {b.shape}")
    if np.array_equal(a, b):
        return 1.0
    if a.ndim == 2:
        return ssim_channel(a, b, data_range)
    return float(np.mean([ssim_channel(a[..., c], b[..., c], data_range) for c in range(a.shape[-1])]))


def _paired_frames(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape[1:] != b.shape[1:]:
        raise MetricError(f"the videos have different frame sizes ({a.shape[2]}x{a.shape[1]} and {b.shape[2]}x{b.shape[1]})")
    if len(a) != len(b):
        count = min(len(a), len(b))
        logger.warning("Videos have %d and %d frames; comparing the first %d.", len(a), len(b), count)
        a, b = a[:count], b[:count]
    return a, b


def video_psnr_ssim(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-frame PSNR and SSIM of two ``[F, H, W, 3]`` videos, and their means over frames."""
    a, b = _paired_frames(np.asarray(a), np.asarray(b))
    psnrs = [psnr(x, y) for x, y in zip(a, b)]
    ssims = [ssim(x, y) for x, y in zip(a, b)]
    return {
        "frames_compared": len(psnrs),
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "psnr_per_frame": psnrs,
        "ssim_per_frame": ssims,
    }


def mean_or_none(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------------------------------
# CLIP score


def clip_score_from_embeddings(image_embeds, text_embed) -> float:
    """``mean_f max(100 * cos(image_f, text), 0)`` from embeddings ``[F, D]`` and ``[D]`` (torch or numpy)."""
    image = np.asarray(image_embeds, dtype=np.float64)
    text = np.asarray(text_embed, dtype=np.float64).reshape(-1)
    cos = image @ text / (np.linalg.norm(image, axis=1) * np.linalg.norm(text))
    return float(np.mean(np.maximum(100.0 * cos, 0.0)))


class ClipScorer:
    """CLIP score with a local CLIP in transformers format (``CLIPModel`` + processor files); never downloads."""

    def __init__(self, model_path, device: str = "cpu", batch_size: int = 16):
        import torch
        from transformers import CLIPModel

        path = Path(model_path)
        if not path.is_dir():
            raise UserError(
                f"--clip_model_path '{path}' is not a folder. Pass a local CLIP saved in transformers format "
                "(config.json, the weights, tokenizer files and preprocessor_config.json), e.g. a downloaded "
                "openai/clip-vit-large-patch14 folder."
            )
        try:
            self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
            self.tokenizer, self.image_processor = _load_clip_processors(path)
        except (OSError, ValueError) as err:
            raise UserError(
                f"Cannot load a CLIP model from '{path}' ({str(err).splitlines()[0]}). The folder must hold a "
                "CLIPModel saved with save_pretrained (config.json + weights) plus its tokenizer and "
                "preprocessor_config.json."
            ) from None
        self.torch = torch
        self.device = device
        self.batch_size = batch_size
        self.max_length = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))

    def text_embedding(self, text: str) -> np.ndarray:
        torch = self.torch
        tokens = self.tokenizer([text], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            out = self.model.text_model(**tokens)
            embed = self.model.text_projection(out.pooler_output)
        return embed[0].float().cpu().numpy()

    def image_embeddings(self, frames) -> np.ndarray:
        torch = self.torch
        frames = np.asarray(frames)
        chunks = []
        for start in range(0, len(frames), self.batch_size):
            batch = [frame for frame in frames[start : start + self.batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.no_grad():
                out = self.model.vision_model(pixel_values=pixels.to(self.model.dtype))
                chunks.append(self.model.visual_projection(out.pooler_output).float().cpu().numpy())
        return np.concatenate(chunks)

    def score(self, frames, text: str) -> float:
        """CLIP score of RGB ``uint8`` frames ``[F, H, W, 3]`` against ``text`` (mean over frames)."""
        return clip_score_from_embeddings(self.image_embeddings(frames), self.text_embedding(text))


def _load_clip_processors(path: Path):
    """Tokenizer and image processor from a local folder (a saved CLIPProcessor or the two parts)."""
    from transformers import AutoTokenizer, CLIPImageProcessor

    try:
        from transformers import CLIPProcessor

        processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
        return processor.tokenizer, processor.image_processor
    except (OSError, ValueError, TypeError) as err:
        logger.debug("CLIPProcessor.from_pretrained(%s) failed (%s); loading tokenizer and image processor apart", path, err)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    image_processor = CLIPImageProcessor.from_pretrained(str(path), local_files_only=True)
    return tokenizer, image_processor
