"""Wan 2.1 (text-to-video): everything family-specific, in one place.

- Erasers: ``blocks[i].attn1`` (self-attention over video tokens only); keys ``blocks.{i}.attn1.adapter``.
- Prompts: UMT5 hidden states, zero-padded to a fixed length (512 for the real models).
- Latents ``[B, C, F, H/8, W/8]``; flow matching (the transformer predicts the velocity) with the UniPC
  multistep solver, which keeps its own history between steps.
- Losses compare the final block's feed-forward output (every row is a video token).
- Localization: text enters through the cross-attention ``attn2``, whose softmax over the text tokens
  gives each video token's attention on the concept directly.
"""

from diffusers import WanPipeline
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

from ..erasers.wrapper import AttentionWithEraser, EraserLayout
from ..sampling import Sampler
from .base import ModelFamily


class WanWithEraser(AttentionWithEraser):
    """``WanTransformerBlock.attn1`` (self-attention) followed by an eraser on its output."""


LAYOUT = EraserLayout(
    family="wan",
    display_name="Wan",
    blocks_attr="blocks",
    attn_attr="attn1",
    wrapper_class=WanWithEraser,
)

MAX_TEXT_LENGTH = 512


def text_length(pipe) -> int:
    return min(MAX_TEXT_LENGTH, int(pipe.tokenizer.model_max_length))


class WanSampler(Sampler):
    def set_timesteps(self, num_inference_steps):
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        self.scheduler.set_begin_index(0)
        self.timesteps = self.scheduler.timesteps

    def predict(self, transformer, latents, index, cond):
        dtype = transformer.dtype
        t = self.timesteps[index]
        out = transformer(
            hidden_states=latents.to(dtype),
            timestep=t.expand(latents.shape[0]),
            encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
            return_dict=False,
        )[0]
        return out.float()


class WanFamily(ModelFamily):
    name = "wan"
    display_name = "Wan"
    pipeline_classes = ("WanPipeline",)
    layout = LAYOUT
    attention_text_position = "cross"
    default_loss_target = "ff"
    # Wan's blocks keep float32 copies around their norms and modulation: more working memory per token
    # (fitted to the 1.3B and 14B checkpointed measurements; the saved figure is extrapolated, unmeasured).
    memory_saved_per_block = 35.0
    memory_backward_transient = 30.0

    def pipeline_class(self):
        return WanPipeline

    def encode_prompts(self, pipe, prompts, device):
        embeds, _ = pipe.encode_prompt(
            prompt=list(prompts), do_classifier_free_guidance=False, max_sequence_length=text_length(pipe), device=device
        )
        return {"encoder_hidden_states": embeds}

    def pipeline_text_kwargs(self, pipe):
        return {"max_sequence_length": text_length(pipe)}

    def safree_text_sides(self, pipe):
        from ..baselines.safree import UMT5Side

        return {"prompt_embeds": UMT5Side(pipe.tokenizer, pipe.text_encoder, pipe._execution_device, text_length(pipe))}

    def prompt_token_ids(self, pipe, prompt):
        return pipe.tokenizer(
            prompt_clean(prompt), padding="max_length", max_length=text_length(pipe), truncation=True,
            add_special_tokens=True,
        ).input_ids

    def default_video_size(self, pipe):
        return 81, 480, 832

    def text_tokens(self, transformer_config):
        return MAX_TEXT_LENGTH

    def make_sampler(self, pipe, num_inference_steps, num_frames, height, width, device, generator=None):
        return WanSampler(pipe, num_inference_steps, num_frames, height, width, device, generator)

    def loss_module(self, transformer):
        return transformer.blocks[-1].ffn

    def probe_modules(self, transformer):
        return [block.attn2 for block in transformer.blocks]

    def token_grid(self, pipe, num_frames, height, width):
        p_t, p_h, p_w = pipe.transformer.config.patch_size
        frames = ((num_frames - 1) // pipe.vae_scale_factor_temporal + 1) // p_t
        s = pipe.vae_scale_factor_spatial
        return frames, height // s // p_h, width // s // p_w


FAMILY = WanFamily()
