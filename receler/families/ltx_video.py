"""LTX-Video (text to video): everything family-specific, in one place.

- Erasers: ``transformer_blocks[i].attn1`` (self-attention over the video tokens); keys
  ``transformer_blocks.{i}.attn1.adapter``, the same paths as CogVideoX's (``model_family`` in
  ``eraser_config.json`` tells them apart); 28 x 2048 wide for LTX-Video 2B.
- Prompts: T5 hidden states of the padded prompt (128 tokens for the real model) and its attention mask.
- Latents: packed into tokens ``[B, F' * H' * W', C]``; the VAE compresses 8 frames and 32 x 32 pixels into
  one latent token (frames ``8k+1``, sizes multiples of 32). Flow matching with FlowMatchEuler on sigmas
  shifted by the video's token count, as LTXPipeline sets them; the transformer's rotary embedding is scaled
  by the frame rate (25, the pipeline's default) and the VAE's compression.
- Losses compare the final block's feed-forward output (every row is a video token).
- Localization: text enters through the cross-attention ``attn2``, whose softmax over the (masked) text
  tokens gives each video token's attention on the concept directly.
"""

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift
from diffusers.utils.torch_utils import randn_tensor

from ..erasers.wrapper import AttentionWithEraser, EraserLayout
from ..inference import InferenceDefaults
from ..sampling import Sampler
from .base import ModelFamily, Preset


class LTXVideoWithEraser(AttentionWithEraser):
    """``LTXVideoTransformerBlock.attn1`` (self-attention) followed by an eraser on its output."""


LAYOUT = EraserLayout(
    family="ltx_video",
    display_name="LTX-Video",
    blocks_attr="transformer_blocks",
    attn_attr="attn1",
    wrapper_class=LTXVideoWithEraser,
)

MAX_TEXT_LENGTH = 128  # LTXPipeline's max_sequence_length
FRAME_RATE = 25  # LTXPipeline's default frame_rate, which scales the rotary embedding's time axis

# LTX-Video's scheduler: flow matching, sigmas shifted by mu (from the video's token count), terminal shift 0.1.
SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.95,
    max_shift=2.05,
    base_image_seq_len=1024,
    max_image_seq_len=4096,
    shift_terminal=0.1,
)

# LTX-Video 2B's transformer (full size, for benchmarks and memory estimates).
LTX_VIDEO_2B = dict(
    in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32, attention_head_dim=64,
    cross_attention_dim=2048, num_layers=28, activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads",
    norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096, attention_bias=True, attention_out_bias=True,
)


def text_length(pipe) -> int:
    tokenizer = getattr(pipe, "tokenizer", None)
    return MAX_TEXT_LENGTH if tokenizer is None else min(MAX_TEXT_LENGTH, int(tokenizer.model_max_length))


class LTXVideoSampler(Sampler):
    def set_timesteps(self, num_inference_steps):
        pipe = self.pipe
        self.latent_frames = (self.num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
        self.latent_height = self.height // pipe.vae_spatial_compression_ratio
        self.latent_width = self.width // pipe.vae_spatial_compression_ratio
        # As the pipeline: sigmas from 1 to 1/steps, shifted by mu, which grows with the video's token count.
        config = self.scheduler.config
        mu = calculate_shift(
            self.latent_frames * self.latent_height * self.latent_width,
            config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5), config.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        self.scheduler.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        self.timesteps = self.scheduler.timesteps

    def initial_latents(self, batch_size):
        """Gaussian latents ``[B, C, F', H', W']`` from the (CPU) generator, packed into tokens, as the pipeline."""
        pipe = self.pipe
        shape = (batch_size, pipe.transformer.config.in_channels, self.latent_frames, self.latent_height,
                 self.latent_width)
        noise = randn_tensor(shape, generator=self.generator, device=self.device, dtype=torch.float32)
        return pipe._pack_latents(noise, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size)

    def predict(self, transformer, latents, index, cond):
        pipe, dtype = self.pipe, transformer.dtype
        t = self.timesteps[index]
        spatial = pipe.vae_spatial_compression_ratio
        out = transformer(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
            timestep=t.expand(latents.shape[0]),
            encoder_attention_mask=cond["encoder_attention_mask"],
            num_frames=self.latent_frames,
            height=self.latent_height,
            width=self.latent_width,
            rope_interpolation_scale=(pipe.vae_temporal_compression_ratio / FRAME_RATE, spatial, spatial),
            return_dict=False,
        )[0]
        return out.float()


class LTXVideoFamily(ModelFamily):
    name = "ltx_video"
    display_name = "LTX-Video"
    pipeline_classes = ("LTXPipeline",)
    pipeline_prefix = "LTX"
    layout = LAYOUT
    attention_text_position = "cross"
    default_loss_target = "ff"
    frame_step = 8
    size_multiple = 32
    presets = (Preset("ltx-video-2b", "ltx_video", LTX_VIDEO_2B, 121, 512, 768, MAX_TEXT_LENGTH, valid_text_tokens=40),)
    tiny_builder = "receler.tiny.ltx_video:build_tiny_ltx_video"
    inference = InferenceDefaults(
        script="test_ltx.py",
        num_inference_steps=50,
        guidance_scale=3.0,
        fps=FRAME_RATE,
        guidance_help="classifier-free guidance scale; 1 turns guidance (and any negative prompt) off (default: 3.0, "
        "as LTXPipeline)",
        frames_help="frames per video, 8k+1 (default: 121)",
        size_help="video {what} in pixels, a multiple of 32 (default: 512x768)",
        description="Render prompts with LTX-Video and an eraser: the same seed renders the clean video (erasers off) "
        "and the erased one on one loaded model, side by side; optionally with a negative-prompt baseline.",
        epilog="""\
defaults follow LTXPipeline: 50 steps, guidance 3.0, 121 frames at 512x768, 25 fps (the frame rate the model is
conditioned on), a CPU generator seeded with --seed for every video. Outputs as test_cogvideo.py:
<prefix>_clean.mp4, <prefix>_erased.mp4, <prefix>_negprompt.mp4, <prefix>_compare.mp4, <prefix>_grid.png, prompts.json.
""",
    )

    def pipeline_class(self):
        return LTXPipeline

    def transformer_class(self):
        return LTXVideoTransformer3DModel

    def default_scheduler(self):
        return FlowMatchEulerDiscreteScheduler(**SCHEDULER)

    def text_length(self, pipe):
        return text_length(pipe)

    def encode_prompts(self, pipe, prompts, device):
        embeds, mask, _, _ = pipe.encode_prompt(
            prompt=list(prompts), do_classifier_free_guidance=False, max_sequence_length=text_length(pipe), device=device
        )
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def pipeline_text_kwargs(self, pipe):
        return {"max_sequence_length": text_length(pipe)}

    def pipeline_embedding_kwargs(self, cond):
        return {"prompt_embeds": cond["encoder_hidden_states"], "prompt_attention_mask": cond["encoder_attention_mask"]}

    def prompt_token_ids(self, pipe, prompt):
        return pipe.tokenizer(
            prompt, padding="max_length", max_length=text_length(pipe), truncation=True, add_special_tokens=True
        ).input_ids

    def default_video_size(self, pipe):
        return 121, 512, 768

    def make_sampler(self, pipe, num_inference_steps, num_frames, height, width, device, generator=None):
        return LTXVideoSampler(pipe, num_inference_steps, num_frames, height, width, device, generator)

    def loss_module(self, transformer):
        return transformer.transformer_blocks[-1].ff

    def probe_modules(self, transformer):
        return [block.attn2 for block in transformer.transformer_blocks]

    def token_grid(self, pipe, num_frames, height, width):
        config = pipe.transformer.config
        frames = ((num_frames - 1) // pipe.vae_temporal_compression_ratio + 1) // config.patch_size_t
        s = pipe.vae_spatial_compression_ratio * config.patch_size
        return frames, height // s, width // s


FAMILY = LTXVideoFamily()
