"""A tiny CogVideoX pipeline with random weights, configured like CogVideoX-2b, built offline."""

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
)
from transformers import T5Config, T5EncoderModel

from ..families.cogvideox import SCHEDULER_2B  # noqa: F401  (also imported from here by the world model's trainer)
from .tokenizers import build_t5_tokenizer, tiny_t5_config

TEXT_LEN = 16  # max_text_seq_length of the tiny transformer (226 in the real models)


def build_tiny_cogvideox(
    seed: int = 0,
    scheduler: str = "ddim",
    rotary: bool = False,
    num_layers: int = 2,
    heads: int = 2,
    head_dim: int = 16,
    text_dim: int = 32,
) -> CogVideoXPipeline:
    """A CogVideoX pipeline small enough to render 9 frames at 32x32 in a fraction of a second on CPU.

    ``rotary=False`` is the 2b layout (sincos positions, prompt length must equal the transformer's
    ``max_text_seq_length``); ``rotary=True`` is the 5b layout. ``head_dim`` must be a multiple of 16
    for rotary embeddings.
    """
    torch.manual_seed(seed)
    tokenizer = build_t5_tokenizer(model_max_length=TEXT_LEN)
    text_encoder = T5EncoderModel(T5Config(**tiny_t5_config(len(tokenizer), text_dim)))
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        time_embed_dim=32,
        text_embed_dim=text_dim,
        num_layers=num_layers,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LEN,
        use_rotary_positional_embeddings=rotary,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        sample_height=32,
        sample_width=32,
    )
    if scheduler == "ddim":
        sched = CogVideoXDDIMScheduler(**SCHEDULER_2B)
    elif scheduler == "dpm":
        sched = CogVideoXDPMScheduler(**{**SCHEDULER_2B, "snr_shift_scale": 1.0})
    else:
        raise ValueError(f"scheduler must be 'ddim' or 'dpm', got {scheduler!r}")
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=sched
    )
    for module in (text_encoder, vae, transformer):
        module.eval()  # as from_pretrained returns them: no dropout
    return pipe
