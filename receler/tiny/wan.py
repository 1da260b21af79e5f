"""A tiny Wan 2.1 pipeline with random weights, configured like Wan2.1-T2V-1.3B, built offline.

Render it with a short text length::

    pipe = WanPipeline.from_pretrained(folder)
    video = pipe(
        "a red car",
        max_sequence_length=TEXT_LEN,                # any length works (cross-attention); 512 is only slower
        guidance_scale=5.0,                          # classifier-free guidance (> 1 runs the negative prompt)
        height=32, width=32,                         # multiples of 16 (8x VAE times the 2x2 patch)
        num_frames=9,                                # 4k + 1; the pipeline rounds other counts with a warning
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),  # CPU generator, for reproducibility
        output_type="np",
    ).frames
"""

import logging

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from ..families.wan import SCHEDULER
from .tokenizers import build_t5_tokenizer, tiny_t5_config

logger = logging.getLogger(__name__)

TEXT_LEN = 16  # max_sequence_length to render with (512 for the real model)

# The first 4 of the real VAE's 16 per-channel latent statistics: the pipeline un-normalizes latents with
# them before decoding, and values other than 0 / 1 keep that step visible in tests.
LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075]
LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558]


def build_tiny_wan(
    seed: int = 0,
    num_layers: int = 2,
    heads: int = 2,
    head_dim: int = 16,
    text_dim: int = 32,
) -> WanPipeline:
    """A Wan pipeline small enough to render 9 frames at 32x32 in well under a second on CPU.

    Wan's rotary embedding splits ``head_dim`` into frames / height / width parts (8 / 4 / 4 for 16).
    """
    torch.manual_seed(seed)
    tokenizer = build_t5_tokenizer(model_max_length=TEXT_LEN)
    text_encoder = UMT5EncoderModel(UMT5Config(**tiny_t5_config(len(tokenizer), text_dim)))
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        text_dim=text_dim,
        freq_dim=32,
        ffn_dim=2 * heads * head_dim,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
    )
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],  # 3 spatial halvings (8x), 2 temporal ones (4x)
        latents_mean=LATENTS_MEAN,
        latents_std=LATENTS_STD,
    )
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=UniPCMultistepScheduler(**SCHEDULER),
    )
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # as from_pretrained leaves them, so the in-memory pipeline renders the same
    logger.debug("built a tiny Wan pipeline (seed %d)", seed)
    return pipe
