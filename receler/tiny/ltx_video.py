"""A tiny LTX-Video pipeline with random weights, laid out like LTX-Video 2B, built offline.

Render it with a short text length::

    pipe = LTXPipeline.from_pretrained(folder)
    video = pipe(
        "a red car",
        max_sequence_length=TEXT_LEN,                # 128 for the real model
        guidance_scale=3.0,                          # classifier-free guidance (> 1 runs the negative prompt)
        height=32, width=32,                         # multiples of 32, as for the real model
        num_frames=9,                                # 8k + 1, as for the real model
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),  # CPU generator, for reproducibility
        output_type="np",
    ).frames

The tiny VAE compresses 8 x 8 pixels and 4 frames into a latent token (the real one 32 x 32 and 8), so that a
9 x 32 x 32 test video has 3 x 4 x 4 latent tokens instead of two.
"""

import logging

import torch
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel
from transformers import T5Config, T5EncoderModel

from ..families.ltx_video import SCHEDULER
from .tokenizers import build_t5_tokenizer, tiny_t5_config

logger = logging.getLogger(__name__)

TEXT_LEN = 16  # max_sequence_length to render with (128 for the real model)


def build_tiny_ltx_video(seed: int = 0, num_layers: int = 2, heads: int = 2, head_dim: int = 16,
                         text_dim: int = 32, latent_channels: int = 8) -> LTXPipeline:
    """An LTX-Video pipeline small enough to render 9 frames at 32x32 in well under a second on CPU."""
    torch.manual_seed(seed)
    tokenizer = build_t5_tokenizer(model_max_length=TEXT_LEN)
    text_encoder = T5EncoderModel(T5Config(**tiny_t5_config(len(tokenizer), text_dim)))
    transformer = LTXVideoTransformer3DModel(
        in_channels=latent_channels,
        out_channels=latent_channels,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        cross_attention_dim=heads * head_dim,
        num_layers=num_layers,
        caption_channels=text_dim,
    )
    scaling = (True, True, False, False)  # two 2x downsamplings in space and time, after a 2x2 patchify
    vae = AutoencoderKLLTXVideo(
        latent_channels=latent_channels,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=scaling,
        decoder_spatio_temporal_scaling=scaling,
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        patch_size=2,
        patch_size_t=1,
    )
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # as from_pretrained leaves them, so the in-memory pipeline renders the same
    logger.debug("built a tiny LTX-Video pipeline (seed %d)", seed)
    return pipe
