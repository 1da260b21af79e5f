"""Wan 2.1 (text-to-video): everything family-specific, in one place.

- Erasers: ``blocks[i].attn1`` (self-attention over video tokens only); keys ``blocks.{i}.attn1.adapter``.
- Prompts: UMT5 hidden states, zero-padded to a fixed length (512 for the real models).
- Latents ``[B, C, F, H/8, W/8]``; flow matching (the transformer predicts the velocity) with the UniPC
  multistep solver, which keeps its own history between steps.
- Losses compare the final block's feed-forward output (every row is a video token).
- Localization: text enters through the cross-attention ``attn2``, whose softmax over the text tokens
  gives each video token's attention on the concept directly.
"""

from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

from ..erasers.wrapper import AttentionWithEraser, EraserLayout
from ..inference import InferenceDefaults
from ..sampling import Sampler
from .base import ModelFamily, Preset


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

# Wan2.1-T2V-1.3B's scheduler: UniPC on flow-matching sigmas shifted by 3.
SCHEDULER = dict(
    num_train_timesteps=1000,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    flow_shift=3.0,
    solver_order=2,
    solver_type="bh2",
    predict_x0=True,
    lower_order_final=True,
    final_sigmas_type="zero",
    timestep_spacing="linspace",
)

# The published transformer configs (full size, for benchmarks and memory estimates).
WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, rope_max_seq_len=1024,
)
WAN_14B = {**WAN_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}


def text_length(pipe) -> int:
    tokenizer = getattr(pipe, "tokenizer", None)
    return MAX_TEXT_LENGTH if tokenizer is None else min(MAX_TEXT_LENGTH, int(tokenizer.model_max_length))


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
    pipeline_prefix = "Wan"
    layout = LAYOUT
    attention_text_position = "cross"
    default_loss_target = "ff"
    # Wan's blocks keep float32 copies around their norms and modulation: more working memory per token
    # (fitted to the 1.3B and 14B checkpointed measurements; the saved figure is extrapolated, unmeasured).
    memory_saved_per_block = 35.0
    memory_backward_transient = 30.0
    presets = (
        Preset("wan-1.3b", "wan", WAN_1_3B, 81, 480, 832, 512),
        Preset("wan-14b", "wan", WAN_14B, 81, 480, 832, 512),
    )
    tiny_builder = "receler.tiny.wan:build_tiny_wan"
    inference = InferenceDefaults(
        script="test_wan.py",
        num_inference_steps=50,
        guidance_scale=5.0,
        fps=16,
        guidance_help="classifier-free guidance scale; 1 turns guidance (and any negative prompt) off (default: 5.0, "
        "as Wan 2.1)",
        frames_help="frames per video, 4k+1 (default: 81, Wan 2.1's)",
        size_help="video {what} in pixels, a multiple of 16 (default: 480x832, Wan 2.1's)",
        description="Render prompts with Wan 2.1 and an eraser: the same seed renders the clean video (erasers off) "
        "and the erased one on one loaded model, side by side; optionally with a negative-prompt or SAFREE baseline.",
        epilog="""\
defaults follow Wan 2.1: 50 steps, guidance 5.0, 81 frames at 480x832, 16 fps, a CPU generator seeded with
--seed for every video. Outputs as test_cogvideo.py: <prefix>_clean.mp4, <prefix>_erased.mp4,
<prefix>_negprompt.mp4 / _safree.mp4, <prefix>_compare.mp4, <prefix>_grid.png, prompts.json.
""",
    )

    def transformer_class(self):
        return WanTransformer3DModel

    def default_scheduler(self):
        return UniPCMultistepScheduler(**SCHEDULER)

    def text_length(self, pipe):
        return text_length(pipe)

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
