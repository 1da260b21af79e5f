"""CogVideoX (2b, 5b): everything family-specific, in one place.

- Erasers: ``transformer_blocks[i].attn1`` (video stream of the joint attention); keys
  ``transformer_blocks.{i}.attn1.adapter``; 30 x 1920 wide for 2b, 42 x 3072 for 5b.
- Prompts: T5, padded to the transformer's ``max_text_seq_length`` (226 for the real models; sincos
  position models require exactly that length). Text tokens come first in the joint sequence.
- Latents ``[B, F, C, H/8, W/8]``; v-prediction; DDIM (2b) or the multistep DPM solver (5b), whose
  step also needs the previous prediction, the previous timestep and the generator.
- Losses compare ``transformer_blocks[-1].ff`` (its input is ``[text, video]``; ``ff`` keeps the video rows).
- Localization reads the joint attention of video queries over text keys, after the q/k norms and rotary.
"""

from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline

from ..erasers.wrapper import AttentionWithEraser, EraserLayout
from ..sampling import Sampler
from .base import ModelFamily


class CogVideoXWithEraser(AttentionWithEraser):
    """``CogVideoXBlock.attn1`` followed by an eraser on its video output (the original release's name)."""


LAYOUT = EraserLayout(
    family="cogvideox",
    display_name="CogVideoX",
    blocks_attr="transformer_blocks",
    attn_attr="attn1",
    wrapper_class=CogVideoXWithEraser,
)

SCHEDULERS = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}


class CogVideoXSampler(Sampler):
    def __init__(self, pipe, num_inference_steps, num_frames, height, width, device, generator=None):
        super().__init__(pipe, num_inference_steps, num_frames, height, width, device, generator)
        transformer = pipe.transformer
        self.latent_frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        self.rotary = (
            pipe._prepare_rotary_positional_embeddings(height, width, self.latent_frames, self.device)
            if transformer.config.use_rotary_positional_embeddings
            else None
        )
        self.is_dpm = isinstance(self.scheduler, CogVideoXDPMScheduler)
        self.previous_x0 = None  # the DPM solver's memory of the previous step

    def latent_shape(self, batch_size):
        s = self.pipe.vae_scale_factor_spatial
        channels = self.pipe.transformer.config.in_channels
        return (batch_size, self.latent_frames, channels, self.height // s, self.width // s)

    def predict(self, transformer, latents, index, cond):
        t = self.timesteps[index]
        x = self.scheduler.scale_model_input(latents, t).to(transformer.dtype)
        out = transformer(
            hidden_states=x,
            encoder_hidden_states=cond["encoder_hidden_states"].to(transformer.dtype),
            timestep=t.expand(x.shape[0]),
            image_rotary_emb=self.rotary,
            return_dict=False,
        )[0]
        return out.float()

    def step(self, pred, index, latents):
        t = self.timesteps[index]
        if not self.is_dpm:
            return self.scheduler.step(pred, t, latents, eta=0.0, generator=self.generator, return_dict=False)[0]
        previous_t = self.timesteps[index - 1] if index > 0 else None
        latents, self.previous_x0 = self.scheduler.step(
            pred, self.previous_x0, t, previous_t, latents, eta=0.0, generator=self.generator, return_dict=False
        )
        return latents


class CogVideoXFamily(ModelFamily):
    name = "cogvideox"
    display_name = "CogVideoX"
    pipeline_classes = ("CogVideoXPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXVideoToVideoPipeline")
    layout = LAYOUT
    attention_text_position = "first"
    default_loss_target = "ff"

    def pipeline_class(self):
        return CogVideoXPipeline

    def set_scheduler(self, pipe, kind):
        pipe.scheduler = SCHEDULERS[kind].from_config(pipe.scheduler.config)

    def text_length(self, pipe) -> int:
        return pipe.transformer.config.max_text_seq_length

    def encode_prompts(self, pipe, prompts, device):
        embeds, _ = pipe.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            max_sequence_length=self.text_length(pipe),
            device=device,
        )
        return {"encoder_hidden_states": embeds}

    def pipeline_text_kwargs(self, pipe):
        return {"max_sequence_length": self.text_length(pipe)}

    def safree_text_sides(self, pipe):
        from ..baselines.safree import T5Side

        return {"prompt_embeds": T5Side(pipe.tokenizer, pipe.text_encoder, pipe._execution_device, self.text_length(pipe))}

    def prompt_token_ids(self, pipe, prompt):
        return pipe.tokenizer(
            prompt, padding="max_length", max_length=self.text_length(pipe), truncation=True, add_special_tokens=True
        ).input_ids

    def default_video_size(self, pipe):
        config, s = pipe.transformer.config, pipe.vae_scale_factor_spatial
        return config.sample_frames, config.sample_height * s, config.sample_width * s

    def text_tokens(self, transformer_config):
        return transformer_config["max_text_seq_length"]

    def make_sampler(self, pipe, num_inference_steps, num_frames, height, width, device, generator=None):
        return CogVideoXSampler(pipe, num_inference_steps, num_frames, height, width, device, generator)

    def loss_module(self, transformer):
        return transformer.transformer_blocks[-1].ff

    def loss_rows(self, output, cond, target):
        # The last block's ff runs on [text, video]; the text rows never reach the prediction.
        return output[:, cond["encoder_hidden_states"].shape[1] :] if target == "ff" else output

    def probe_modules(self, transformer):
        return [self.layout.attention(block) for block in transformer.transformer_blocks]

    def token_grid(self, pipe, num_frames, height, width):
        config = pipe.transformer.config
        frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        if config.patch_size_t:
            frames = -(-frames // config.patch_size_t)
        s = pipe.vae_scale_factor_spatial * config.patch_size
        return frames, height // s, width // s


FAMILY = CogVideoXFamily()
