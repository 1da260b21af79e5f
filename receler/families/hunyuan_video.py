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
from diffusers import HunyuanVideoPipeline
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from ..erasers.wrapper import AttentionWithEraser, EraserLayout
from ..sampling import Sampler
from .base import ModelFamily

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
    """The folder's own ``prompt_template.json``, or None."""
    extra = getattr(pipe, "_tiny_extra_files", {})
    if TEMPLATE_FILE in extra:
        return json.loads(extra[TEMPLATE_FILE])
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


class HunyuanVideoFamily(ModelFamily):
    name = "hunyuan_video"
    display_name = "HunyuanVideo"
    pipeline_classes = ("HunyuanVideoPipeline",)
    layout = LAYOUT
    attention_text_position = "last"
    default_loss_target = "velocity"

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

    def text_tokens(self, transformer_config):
        return DEFAULT_TEXT_LENGTH

    def make_sampler(self, pipe, num_inference_steps, num_frames, height, width, device, generator=None):
        return HunyuanVideoSampler(pipe, num_inference_steps, num_frames, height, width, device, generator)

    def with_soft_tokens(self, cond, positions, vectors):
        out = super().with_soft_tokens(cond, positions, vectors)
        mask = cond["encoder_attention_mask"].clone()  # the learned tokens must be attended, not masked as padding
        mask[torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(positions), positions] = 1
        return {**out, "encoder_attention_mask": mask}

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
