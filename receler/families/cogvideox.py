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

import argparse
import logging
from pathlib import Path

from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

from ..erasers.wrapper import AttentionWithEraser, EraserLayout
from ..errors import UserError
from ..inference import InferenceDefaults, InferencePlan, read_component_config
from ..sampling import Sampler
from .base import ModelFamily, Preset

logger = logging.getLogger(__name__)


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

# CogVideoX-2b's scheduler: v-prediction, zero terminal SNR, trailing spacing. 5b uses the same
# settings with snr_shift_scale 1.0 and the DPM solver at inference.
SCHEDULER_2B = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
    snr_shift_scale=3.0,
)

# The published transformer configs (full size, for benchmarks and memory estimates).
COGVIDEOX_2B = dict(
    num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, num_layers=30, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    temporal_compression_ratio=4, max_text_seq_length=226, use_rotary_positional_embeddings=False,
)
COGVIDEOX_5B = {**COGVIDEOX_2B, "num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True}


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


class CogVideoXInference(InferencePlan):
    """``test_cogvideo.py``: text, image or video to video; DDIM for 2b and the DPM solver for 5b as the original
    release renders them, with dynamic classifier-free guidance."""

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("CogVideoX")
        g.add_argument("--generate_type", choices=("t2v", "i2v", "v2v"), default="t2v",
                       help="t2v: text to video; i2v: image to video (needs an image-to-video model such as "
                       "CogVideoX-5b-I2V and --image_or_video_path IMAGE); v2v: video to video (--image_or_video_path "
                       "VIDEO) (default: t2v)")
        g.add_argument("--image_or_video_path", default=None, help="the input image (i2v) or video (v2v)")
        g.add_argument("--strength", type=float, default=0.8,
                       help="v2v: how much of the input video is re-noised (0: kept, 1: ignored) (default: 0.8)")
        g.add_argument("--scheduler", choices=("auto", "ddim", "dpm"), default="auto",
                       help="auto: the DPM solver for models with rotary position embeddings (5b, as the original "
                       "release), DDIM otherwise (2b) (default: auto)")
        g.add_argument("--use_dynamic_cfg", action=argparse.BooleanOptionalAction, default=True,
                       help="CogVideoX's dynamic guidance schedule (--no-use_dynamic_cfg for a constant scale) "
                       "(default: on)")

    @property
    def pipeline_class(self):
        from diffusers import CogVideoXImageToVideoPipeline, CogVideoXVideoToVideoPipeline

        return {"t2v": CogVideoXPipeline, "i2v": CogVideoXImageToVideoPipeline,
                "v2v": CogVideoXVideoToVideoPipeline}[self.args.generate_type]

    def prepare(self):
        self.check_model_kind()
        self.conditioning = self.read_input()

    def check_model_kind(self) -> None:
        """Image-to-video transformers take the image latents as extra input channels (2x the VAE's); read
        from the folder's configs, before the model loads."""
        args = self.args
        in_channels = read_component_config(args.model_path, "transformer").get("in_channels")
        latent_channels = read_component_config(args.model_path, "vae").get("latent_channels")
        if in_channels is None or latent_channels is None:
            return  # let the pipeline load tell what is missing
        is_i2v = in_channels == 2 * latent_channels
        if args.generate_type == "i2v" and not is_i2v:
            raise UserError(
                f"--generate_type i2v needs an image-to-video model (e.g. CogVideoX-5b-I2V), whose transformer takes "
                f"2 x {latent_channels} latent channels; {args.model_path} is a text-to-video model ({in_channels} "
                f"input channels). Use --generate_type t2v or v2v with it, or pass an I2V model folder."
            )
        if args.generate_type != "i2v" and is_i2v:
            raise UserError(
                f"{args.model_path} is an image-to-video model ({in_channels} input channels); render it with "
                f"--generate_type i2v --image_or_video_path IMAGE."
            )

    def read_input(self):
        """The i2v image (PIL) or the v2v frames (list of PIL), read before the model loads."""
        args = self.args
        if args.generate_type == "t2v":
            if args.image_or_video_path:
                logger.warning("--image_or_video_path is ignored with --generate_type t2v")
            return None
        if not args.image_or_video_path:
            raise UserError(f"--generate_type {args.generate_type} needs --image_or_video_path (the input "
                            f"{'image' if args.generate_type == 'i2v' else 'video'})")
        path = Path(args.image_or_video_path)
        if not path.is_file():
            raise UserError(f"--image_or_video_path {path} does not exist")
        from PIL import Image

        if args.generate_type == "i2v":
            try:
                return Image.open(path).convert("RGB")
            except OSError as err:
                raise UserError(f"--image_or_video_path {path} is not an image Pillow can read ({err})") from None
        from ..media import read_video

        if not 0.0 < args.strength <= 1.0:
            raise UserError(f"--strength must be in (0, 1], got {args.strength}")
        return [Image.fromarray(frame) for frame in read_video(path)]

    def input_video_frames(self, frames: list, model_frames: int) -> list:
        """v2v: the first --num_frames frames of the input (default: as many as the model's length allows)."""
        args = self.args
        if args.num_frames is None:
            usable = len(frames) - (len(frames) - 1) % 4
            args.num_frames = min(model_frames, usable)
            if args.num_frames != len(frames):
                logger.info("v2v: using the first %d of the input's %d frames (4k+1, at most the model's %d)",
                            args.num_frames, len(frames), model_frames)
        if args.num_frames > len(frames):
            raise UserError(f"--num_frames {args.num_frames} is more than the {len(frames)} frames of "
                            f"{args.image_or_video_path}")
        return frames[: args.num_frames]

    def setup(self, pipe):
        args, family = self.args, self.family
        kind = args.scheduler
        if kind == "auto":
            kind = "dpm" if pipe.transformer.config.use_rotary_positional_embeddings else "ddim"
        family.set_scheduler(pipe, kind)
        logger.info("%s scheduler%s", kind.upper(), ", dynamic guidance" if args.use_dynamic_cfg else "")
        if args.generate_type == "v2v":
            model_frames, _, _ = family.default_video_size(pipe)
            self.conditioning = self.input_video_frames(self.conditioning, model_frames)
        super().setup(pipe)

    def call_kwargs(self, pipe):
        args = self.args
        kwargs = {"guidance_scale": args.guidance_scale, "use_dynamic_cfg": args.use_dynamic_cfg}
        if args.generate_type == "v2v":
            kwargs.update(video=self.conditioning, strength=args.strength)
        else:
            kwargs["num_frames"] = args.num_frames
            if args.generate_type == "i2v":
                kwargs["image"] = self.conditioning
        return kwargs


class CogVideoXFamily(ModelFamily):
    name = "cogvideox"
    display_name = "CogVideoX"
    pipeline_classes = ("CogVideoXPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXVideoToVideoPipeline")
    pipeline_prefix = "CogVideoX"
    layout = LAYOUT
    attention_text_position = "first"
    default_loss_target = "ff"
    presets = (
        Preset("tiny", "cogvideox", num_frames=9, height=32, width=32, tiny=True),  # the tiny offline CogVideoX
        Preset("cogvideox-2b", "cogvideox", COGVIDEOX_2B, 17, 480, 720, 226),
        Preset("cogvideox-5b", "cogvideox", COGVIDEOX_5B, 49, 480, 720, 226),
    )
    tiny_builder = "receler.tiny.cogvideox:build_tiny_cogvideox"
    # CogVideoX-2b: DDIM, sincos positions; CogVideoX-5b: the multistep DPM solver with noise, rotary positions
    tiny_variants = {"2b": {"scheduler": "ddim"}, "5b": {"scheduler": "dpm", "rotary": True}}
    inference = InferenceDefaults(
        script="test_cogvideo.py",
        num_inference_steps=50,
        guidance_scale=6.0,
        fps=8,
        guidance_help="classifier-free guidance scale; 1 turns guidance (and any negative prompt) off (default: 6.0)",
        frames_help="frames per video, 4k+1 (default: the model's own, 49 for CogVideoX-2b/5b; v2v: the input "
        "video's, up to that)",
        size_help="video {what} in pixels, a multiple of 16 (default: the model's own, 480x720 for CogVideoX-2b/5b)",
        description="Render prompts with a CogVideoX model and an eraser: the same seed renders the clean video "
        "(erasers off) and the erased one on one loaded model, side by side; optionally with a negative-prompt or "
        "SAFREE baseline.",
        epilog="""\
defaults follow the original release: 50 steps, guidance 6.0 with dynamic CFG, 8 fps, DDIM for 2b and the
DPM solver for 5b (--scheduler auto), a CPU generator seeded with --seed for every video.
outputs per prompt: <prefix>_clean.mp4 (with --generate_clean), <prefix>_erased.mp4 (with --eraser_path),
<prefix>_negprompt.mp4 / <prefix>_safree.mp4 (with --baseline), <prefix>_compare.mp4 (clean | erased or
baseline, whenever the clean video exists), <prefix>_grid.png, and prompts.json next to them.
""",
    )
    inference_plan = CogVideoXInference

    def transformer_class(self):
        return CogVideoXTransformer3DModel

    def default_scheduler(self):
        return CogVideoXDDIMScheduler(**SCHEDULER_2B)

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
