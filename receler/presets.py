"""Full-size model configurations with random weights, for benchmarks and memory estimates (no download).

Each preset names a family, the transformer's published config, the shapes of its text conditioning and
the video size it is usually trained at. ``build_preset_pipeline`` makes a pipeline holding only the
transformer (random weights, created directly on the target device and dtype) and the scheduler: all
that training needs once prompts are encoded.
"""

import inspect
from dataclasses import dataclass, field

import torch

from .families import get_family

COGVIDEOX_2B = dict(
    num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, num_layers=30, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    temporal_compression_ratio=4, max_text_seq_length=226, use_rotary_positional_embeddings=False,
)
COGVIDEOX_5B = {**COGVIDEOX_2B, "num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True}
HUNYUAN_VIDEO = dict(
    in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
    num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
    guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56),
)
WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, rope_max_seq_len=1024,
)
WAN_14B = {**WAN_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    transformer_config: dict = field(default_factory=dict)
    num_frames: int = 49
    height: int = 480
    width: int = 720
    text_length: int = 226
    text_dim: int = 4096
    pooled_dim: int = 0          # HunyuanVideo's CLIP pooled embedding
    valid_text_tokens: int = 0   # HunyuanVideo: unmasked text tokens (the rest is padding)


PRESETS = {
    "tiny": Preset("tiny", "cogvideox", num_frames=9, height=32, width=32),  # the tiny offline CogVideoX
    "cogvideox-2b": Preset("cogvideox-2b", "cogvideox", COGVIDEOX_2B, 17, 480, 720, 226),
    "cogvideox-5b": Preset("cogvideox-5b", "cogvideox", COGVIDEOX_5B, 49, 480, 720, 226),
    "hunyuan": Preset("hunyuan", "hunyuan_video", HUNYUAN_VIDEO, 49, 512, 768, 256, pooled_dim=768, valid_text_tokens=40),
    "wan-1.3b": Preset("wan-1.3b", "wan", WAN_1_3B, 81, 480, 832, 512),
    "wan-14b": Preset("wan-14b", "wan", WAN_14B, 81, 480, 832, 512),
}


def default_scheduler(family_name):
    """The scheduler each family ships with (CogVideoX-2b DDIM, HunyuanVideo flow matching, Wan UniPC)."""
    from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from .tiny.cogvideox import SCHEDULER_2B

    if family_name == "cogvideox":
        return CogVideoXDDIMScheduler(**SCHEDULER_2B)
    if family_name == "hunyuan_video":
        return FlowMatchEulerDiscreteScheduler(shift=7.0)
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                   solver_order=2, final_sigmas_type="zero")


def build_transformer(preset: Preset, dtype=torch.bfloat16, device="cpu"):
    """The preset's transformer with random weights, allocated directly on ``device`` in ``dtype``."""
    from diffusers import CogVideoXTransformer3DModel, HunyuanVideoTransformer3DModel, WanTransformer3DModel

    classes = {"cogvideox": CogVideoXTransformer3DModel, "hunyuan_video": HunyuanVideoTransformer3DModel,
               "wan": WanTransformer3DModel}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = classes[preset.family](**preset.transformer_config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def build_preset_pipeline(preset: Preset, dtype=torch.bfloat16, device="cpu", seed=0):
    """A pipeline with only a random-weight transformer and the family's scheduler (no text encoders, no VAE)."""
    family = get_family(preset.family)
    if preset.name == "tiny":
        from .tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline("cogvideox", seed=seed)
        pipe.transformer.to(device=device, dtype=dtype)
        return pipe
    torch.manual_seed(seed)
    return pipeline_around(family, build_transformer(preset, dtype, device))


def pipeline_around(family, transformer):
    """The family's pipeline holding only ``transformer`` and its default scheduler (VAE factors default to the
    real models' 8 and 4): what training and the memory estimate need once prompts are encoded."""
    pipeline_class = family.pipeline_class()
    components = {name: None for name in inspect.signature(pipeline_class.__init__).parameters if name != "self"}
    components.update(transformer=transformer, scheduler=default_scheduler(family.name))
    return pipeline_class(**components)


def random_conditioning(preset: Preset, pipe, batch_size: int, device, dtype, seed=0) -> dict:
    """Text conditioning with the real shapes: what a prompt would give after encoding."""
    g = torch.Generator().manual_seed(seed)
    if preset.name == "tiny":
        length, dim = pipe.transformer.config.max_text_seq_length, pipe.transformer.config.text_embed_dim
    else:
        length, dim = preset.text_length, preset.text_dim
    cond = {"encoder_hidden_states": torch.randn(batch_size, length, dim, generator=g).to(device, dtype)}
    if preset.family == "hunyuan_video":
        mask = torch.zeros(batch_size, length)
        mask[:, : preset.valid_text_tokens] = 1
        cond["encoder_attention_mask"] = mask.to(device, dtype)
        cond["pooled_projections"] = torch.randn(batch_size, preset.pooled_dim, generator=g).to(device, dtype)
    return cond
