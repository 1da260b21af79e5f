"""HunyuanVideo: everything family-specific, in one place.

- Erasers: ``single_transformer_blocks[i].attn`` (video part of the single-stream joint attention),
  scaled by an inference-time ``eraser_weight``; keys ``single_transformer_blocks.{i}.attn.adapter``
  (the layout of the published HunyuanVideo eraser).
- Prompts: Llama hidden states of a templated prompt, cropped by the template's ``crop_start``, with an
  attention mask, plus CLIP's pooled embedding. A model folder may carry ``prompt_template.json`` (the
  tiny test models do, because their tokenizer is not Llama's); otherwise the pipeline's default text,
  with the crop counted by the folder's own tokenizer (diffusers' 95 is right for Llama's only).
- Latents ``[B, C, F, H/8, W/8]``; flow matching (the transformer predicts the velocity) with
  FlowMatchEuler; the transformer also takes an embedded guidance scale (6.0 by default, as the pipeline).
- Single-stream blocks have no feed-forward module, and a loss on a double-stream block would never reach
  their erasers: losses compare the transformer output by default, or the last single block's video rows.
- Localization: single-stream attention of video queries over the (padding-masked) text keys, which sit
  after the video tokens in the joint sequence.
"""

import json
import logging
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from ..erasers.wrapper import AttentionWithEraser, EraserLayout
from ..errors import UserError
from ..inference import InferenceDefaults, InferencePlan, setup_vae, video_size
from ..sampling import Sampler
from .base import ModelFamily, Preset

logger = logging.getLogger(__name__)


class HunyuanWithEraser(AttentionWithEraser):
    """``HunyuanVideoSingleTransformerBlock.attn`` followed by ``h + eraser_weight * eraser(h)`` on its
    video output (the original release's name and signature)."""


LAYOUT = EraserLayout(
    family="hunyuan_video",
    display_name="HunyuanVideo",
    blocks_attr="single_transformer_blocks",
    attn_attr="attn",
    wrapper_class=HunyuanWithEraser,
)

TEMPLATE_FILE = "prompt_template.json"
DEFAULT_TEXT_LENGTH = 256  # the pipeline's max_sequence_length
SCHEDULER = dict(num_train_timesteps=1000, shift=7.0)  # flow matching with a static shift of 7

# The published transformer config (full size, for benchmarks and memory estimates).
HUNYUAN_VIDEO = dict(
    in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
    num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
    guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0, rope_axes_dim=(16, 56, 56),
)

EMBEDDED_GUIDANCE = 6.0  # HunyuanVideo's guidance-distilled scale, as the pipeline's default
EMBEDDED_GUIDANCE_WITH_NEGATIVE = 1.0  # with a negative prompt, true CFG does the guiding (original release)
VIDEO_SIZE = (61, 720, 1280)  # frames, height, width the inference CLI renders by default


def template_crop_start(tokenizer, template: str) -> int:
    """How many tokens precede the prompt in ``template`` (its text before ``{}``) with this tokenizer.

    The pipeline crops exactly these from the encoded sequence, so that the transformer sees the prompt
    alone. Special tokens added in front (BOS) count; one added at the end (an EOS) follows the prompt in
    a templated prompt, so it does not.
    """
    prefix = template.split("{}")[0]
    full = list(tokenizer(prefix).input_ids)
    bare = list(tokenizer(prefix, add_special_tokens=False).input_ids)
    for lead in range(len(full) - len(bare) + 1):
        if full[lead : lead + len(bare)] == bare:
            return lead + len(bare)
    return len(full)


def folder_template(pipe) -> dict | None:
    """The template the model was trained with, if it says so: the pipeline's own ``prompt_template`` (a tiny
    model built in memory carries one), else the folder's ``prompt_template.json``; None otherwise."""
    template = getattr(pipe, "prompt_template", None)
    if template is not None:
        return template
    folder = getattr(pipe, "name_or_path", None)
    if folder and (Path(folder) / TEMPLATE_FILE).exists():
        return json.loads((Path(folder) / TEMPLATE_FILE).read_text())
    return None


def prompt_template(pipe) -> dict:
    """The template the model was trained with: the folder's ``prompt_template.json``, else diffusers' default.

    A template without ``crop_start`` (diffusers' default included: its 95 counts the real Llama tokenizer)
    gets the crop counted with the pipeline's own tokenizer; a folder's explicit ``crop_start`` wins.
    """
    template = folder_template(pipe)
    if template is None:
        template = {k: v for k, v in DEFAULT_PROMPT_TEMPLATE.items() if k != "crop_start"}
    if template.get("crop_start") is None:
        tokenizer = getattr(pipe, "tokenizer", None)
        if tokenizer is None:  # nothing to count with: the default's number, right for the real model
            return {**template, "crop_start": DEFAULT_PROMPT_TEMPLATE["crop_start"]}
        template = {**template, "crop_start": template_crop_start(tokenizer, template["template"])}
        logger.debug("prompt template: crop_start %d counted with the folder's tokenizer", template["crop_start"])
    return template


def text_length(pipe) -> int:
    return int(prompt_template(pipe).get("max_sequence_length", DEFAULT_TEXT_LENGTH))


class HunyuanVideoSampler(Sampler):
    embedded_guidance = 6.0

    def set_timesteps(self, num_inference_steps):
        # As the pipeline: sigmas evenly spaced from 1 to 0 (exclusive), then the scheduler's shift.
        sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        self.scheduler.set_timesteps(sigmas=sigmas, device=self.device)
        self.scheduler.set_begin_index(0)
        self.timesteps = self.scheduler.timesteps

    def predict(self, transformer, latents, index, cond):
        dtype = transformer.dtype
        batch = latents.shape[0]
        t = self.timesteps[index]
        guidance = torch.full((batch,), self.embedded_guidance * 1000.0, dtype=dtype, device=latents.device)
        out = transformer(
            hidden_states=latents.to(dtype),
            timestep=t.expand(batch).to(latents.dtype),
            encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
            encoder_attention_mask=cond["encoder_attention_mask"].to(dtype),
            pooled_projections=cond["pooled_projections"].to(dtype),
            guidance=guidance,
            return_dict=False,
        )[0]
        return out.float()


class HunyuanVideoInference(InferencePlan):
    """``test_hunyuan.py``: embedded guidance (one pass per step), true CFG for negative prompts."""

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("HunyuanVideo")
        g.add_argument("--true_cfg_scale", type=float, default=6.0,
                       help="true classifier-free guidance scale, used for videos rendered with a negative prompt "
                       "(a second transformer pass per step) (default: 6.0)")

    def setup(self, pipe):
        args = self.args
        video_size(self.family, pipe, args, defaults=VIDEO_SIZE)
        setup_vae(pipe, args)
        logger.info("%d frames at %dx%d, %d steps", args.num_frames, args.height, args.width, args.num_inference_steps)

    def call_kwargs(self, pipe):
        return {"num_frames": self.args.num_frames}

    def render_kwargs(self, negative_prompt):
        args = self.args
        if not negative_prompt:
            guidance = EMBEDDED_GUIDANCE if args.guidance_scale is None else args.guidance_scale
            return {"guidance_scale": guidance}
        if args.true_cfg_scale <= 1:
            raise UserError(
                f"a negative prompt acts through true CFG, but --true_cfg_scale is {args.true_cfg_scale}; pass a value "
                f"> 1 (the original release: 6.0)."
            )
        guidance = EMBEDDED_GUIDANCE_WITH_NEGATIVE if args.guidance_scale is None else args.guidance_scale
        return {"negative_prompt": negative_prompt, "true_cfg_scale": args.true_cfg_scale, "guidance_scale": guidance}


class HunyuanVideoFamily(ModelFamily):
    name = "hunyuan_video"
    display_name = "HunyuanVideo"
    pipeline_classes = ("HunyuanVideoPipeline",)
    pipeline_prefix = "HunyuanVideo"
    layout = LAYOUT
    attention_text_position = "last"
    default_loss_target = "velocity"
    presets = (
        Preset("hunyuan", "hunyuan_video", HUNYUAN_VIDEO, 49, 512, 768, 256, pooled_dim=768, valid_text_tokens=40),
    )
    tiny_builder = "receler.tiny.hunyuan_video:build_tiny_hunyuan_video"
    inference = InferenceDefaults(
        script="test_hunyuan.py",
        num_inference_steps=30,
        guidance_scale=None,
        fps=15,
        guidance_help=f"embedded guidance scale (HunyuanVideo is guidance-distilled: one pass per step). Default: "
        f"{EMBEDDED_GUIDANCE:g}, or {EMBEDDED_GUIDANCE_WITH_NEGATIVE:g} for videos rendered with a negative prompt, "
        f"where true CFG (--true_cfg_scale) guides instead, as the original release",
        frames_help=f"frames per video, 4k+1 (default: {VIDEO_SIZE[0]})",
        size_help="video {what} in pixels, a multiple of 16 (default: %d high, %d wide)" % VIDEO_SIZE[1:],
        description="Render prompts with HunyuanVideo and an eraser: the same seed renders the clean video (erasers "
        "off) and the erased one on one loaded model, side by side; optionally with a negative-prompt or SAFREE "
        "baseline.",
        epilog="""\
defaults follow the original release: 30 steps, embedded guidance 6.0, 720x1280, 15 fps, VAE tiling, a CPU
generator seeded with --seed for every video. Outputs as test_cogvideo.py: <prefix>_clean.mp4,
<prefix>_erased.mp4, <prefix>_negprompt.mp4 / _safree.mp4, <prefix>_compare.mp4, <prefix>_grid.png, prompts.json.
""",
        video_size=VIDEO_SIZE,
    )
    inference_plan = HunyuanVideoInference

    def transformer_class(self):
        return HunyuanVideoTransformer3DModel

    def default_scheduler(self):
        return FlowMatchEulerDiscreteScheduler(**SCHEDULER)

    def random_conditioning(self, preset, batch_size, generator):
        cond = super().random_conditioning(preset, batch_size, generator)
        cond["pooled_projections"] = torch.randn(batch_size, preset.pooled_dim, generator=generator)
        return cond

    def save_pipeline(self, pipe, folder):
        folder = super().save_pipeline(pipe, folder)
        template = getattr(pipe, "prompt_template", None)
        if template is not None:  # a model with its own tokenizer saves the template sized for it
            (folder / TEMPLATE_FILE).write_text(json.dumps(template, indent=2))
        return folder

    def text_length(self, pipe):
        return text_length(pipe)

    def unguided_pipeline_kwargs(self, pipe):
        # guidance_scale is the embedded (distilled) guidance the sampler also passes; true CFG stays off
        return {"guidance_scale": HunyuanVideoSampler.embedded_guidance, **self.pipeline_text_kwargs(pipe)}

    def pipeline_class(self):
        return HunyuanVideoPipeline

    def text_encoder_names(self):
        return ("text_encoder", "text_encoder_2")

    def load_pipeline(self, model_path, dtype=torch.float32, with_vae=True, with_text_encoder=True, with_transformer=True):
        pipe = super().load_pipeline(model_path, dtype, with_vae, with_text_encoder, with_transformer)
        # diffusers asks for LlamaTokenizerFast, which transformers 5 rebuilds SentencePiece-style from the
        # vocabulary; Llama 3's tokenizer is byte-level. tokenizer.json is the exact tokenizer: load that.
        tokenizer_json = Path(model_path) / "tokenizer" / "tokenizer.json"
        if tokenizer_json.exists():
            from transformers import PreTrainedTokenizerFast

            pipe.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_json.parent))
        return pipe

    def encode_prompts(self, pipe, prompts, device):
        embeds, pooled, mask = pipe.encode_prompt(
            prompt=list(prompts),
            prompt_template=prompt_template(pipe),
            device=device,
            max_sequence_length=text_length(pipe),
        )
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask, "pooled_projections": pooled}

    def pipeline_text_kwargs(self, pipe):
        return {"prompt_template": prompt_template(pipe), "max_sequence_length": text_length(pipe)}

    def pipeline_embedding_kwargs(self, cond):
        return {"prompt_embeds": cond["encoder_hidden_states"], "prompt_attention_mask": cond["encoder_attention_mask"],
                "pooled_prompt_embeds": cond["pooled_projections"]}

    def text_attention_mask(self, cond):
        return cond["encoder_attention_mask"].bool()

    def ignored_prompt_cause(self, pipe):
        template = prompt_template(pipe)
        crop, keep = template["crop_start"], text_length(pipe)
        if (folder_template(pipe) or {}).get("crop_start") is not None:
            return (
                f"the folder's {TEMPLATE_FILE} crops the first {crop} Llama tokens and keeps the next {keep}, and "
                f"with this folder's tokenizer the prompt is not among them (a crop is a token count, right for one "
                f"tokenizer only; diffusers' 95 counts the original Llama tokenizer). Remove crop_start from "
                f"{TEMPLATE_FILE} so that it is counted with the folder's tokenizer, or set it to the number of tokens "
                f"before the prompt"
            )
        return (
            f"the prompt template crops the first {crop} Llama tokens (counted with the folder's tokenizer) and keeps "
            f"the next {keep}, and the prompt is not among them: check that the tokenizer keeps the template's special "
            f"tokens whole, or write a {TEMPLATE_FILE} with the right crop_start"
        )

    def safree_text_sides(self, pipe):
        from ..baselines.safree import CLIPPooledSide, LlamaSide

        device = pipe._execution_device
        return {
            "prompt_embeds": LlamaSide(pipe.tokenizer, pipe.text_encoder, device, text_length(pipe), prompt_template(pipe)),
            "pooled_prompt_embeds": CLIPPooledSide(pipe.tokenizer_2, pipe.text_encoder_2, device, 77),
        }

    def prompt_token_ids(self, pipe, prompt):
        template = prompt_template(pipe)
        crop = template["crop_start"]
        ids = pipe.tokenizer(
            template["template"].format(prompt),
            max_length=text_length(pipe) + crop,
            padding="max_length",
            truncation=True,
        ).input_ids
        return ids[crop:]

    def default_video_size(self, pipe):
        return 49, 512, 768

    def make_sampler(self, pipe, num_inference_steps, num_frames, height, width, device, generator=None):
        return HunyuanVideoSampler(pipe, num_inference_steps, num_frames, height, width, device, generator)

    def block_modules(self, transformer):
        return list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)

    def loss_module(self, transformer):
        return transformer.single_transformer_blocks[-1]  # its output is (video, text); the hook keeps video

    def probe_modules(self, transformer):
        return [self.layout.attention(block) for block in transformer.single_transformer_blocks]

    def token_grid(self, pipe, num_frames, height, width):
        config = pipe.transformer.config
        frames = ((num_frames - 1) // pipe.vae_scale_factor_temporal + 1) // config.patch_size_t
        s = pipe.vae_scale_factor_spatial * config.patch_size
        return frames, height // s, width // s


FAMILY = HunyuanVideoFamily()
