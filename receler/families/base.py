"""What a model family must say about itself. Everything family-specific lives in one subclass per file.

The trainer, the sampling loop, the losses, localization, the memory estimator, the presets, the tiny test
models and the CLIs talk to a model only through this interface: which pipeline classes it covers, where the
erasers sit, how prompts become transformer conditioning, which tokens of the text sequence a prompt
occupies, how a trajectory runs, which module's output the losses compare, where its text keys sit in the
attention the localization reads, its memory constants, its full-size presets, its tiny offline model and
its inference defaults. ``receler/families/__init__.py`` lists the families once.
"""

import importlib
import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..erasers.wrapper import EraserLayout
from ..errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    """A full-size configuration with random weights, for benchmarks and memory estimates (no download): the
    transformer's published config, the shapes of its text conditioning and the video size it is usually
    trained at. ``tiny``: the family's tiny offline model instead of ``transformer_config``."""

    name: str
    family: str
    transformer_config: dict = field(default_factory=dict)
    num_frames: int = 49
    height: int = 480
    width: int = 720
    text_length: int = 226
    text_dim: int = 4096
    pooled_dim: int = 0          # HunyuanVideo's CLIP pooled embedding
    valid_text_tokens: int = 0   # families with a text mask: unmasked text tokens (the rest is padding)
    tiny: bool = False


class ModelFamily:
    """Base class; see ``cogvideox.py`` for a complete example."""

    name: str = ""                       # e.g. "cogvideox"; used in flags and eraser_config.json
    display_name: str = ""               # e.g. "CogVideoX"; used in messages
    pipeline_classes: tuple = ()         # model_index.json _class_name values that mean this family
    pipeline_prefix: str = ""            # other pipelines of the family (e.g. an image-to-video variant) start so
    layout: EraserLayout = None          # where the erasers sit
    default_loss_target: str = "ff"      # "ff" (final block's feed-forward, video rows), "ff_all" or "velocity"
    # Where the text keys sit in the attention of probe_modules(): "first" / "last" of a joint text + video
    # sequence (the text then also travels through every block), or "cross" (the keys are the text alone).
    attention_text_position: str = "cross"
    frame_step: int = 4                  # the VAE's temporal compression: frame counts are frame_step * k + 1
    size_multiple: int = 16              # heights and widths are multiples of this (VAE x patch size)
    # Memory model (receler/estimate_memory.py): activations a block keeps for backward and the working memory
    # of one recomputed block, in units of tokens x width elements; fitted to H100 measurements (docs/design.md).
    memory_saved_per_block: float = 14.5
    memory_backward_transient: float = 12.5
    presets: tuple = ()                  # Preset, full-size configurations (benchmarks, estimator)
    tiny_builder: str = ""               # "module:function" building the tiny offline pipeline (tests, demos)
    tiny_variants: dict = {"": {}}       # {name: builder kwargs}: the layouts of the real models the tiny one can take
    inference = None                     # receler.inference.InferenceDefaults: steps, guidance, fps, help texts
    inference_plan = None                # receler.inference.InferencePlan subclass, if the CLI needs more

    # ------------------------------------------------------------------------------------ loading
    def pipeline_class(self):
        raise NotImplementedError

    def transformer_class(self):
        """The diffusers transformer class (presets build it from a config)."""
        raise NotImplementedError

    def default_scheduler(self):
        """The scheduler the family's models ship with (presets and estimates hold no model folder)."""
        raise NotImplementedError

    def load_pipeline(self, model_path, dtype=torch.float32, with_vae: bool = True, with_text_encoder: bool = True,
                      with_transformer: bool = True):
        """Load the diffusers pipeline from a local folder (never downloads).

        Without the transformer (e.g. to encode prompts only), ``pipe.transformer`` is a stand-in holding
        just its ``config``, which some families read the text length from.
        """
        check_model_folder(model_path)
        skip = {}
        if not with_vae:
            skip["vae"] = None
        if not with_text_encoder:
            skip.update({name: None for name in self.text_encoder_names()})
        if not with_transformer:
            skip["transformer"] = None
        try:
            pipe = self.pipeline_class().from_pretrained(str(model_path), dtype=dtype, local_files_only=True, **skip)
        except (OSError, ValueError) as err:
            raise UserError(f"could not load a {self.display_name} pipeline from {model_path}: {err}") from None
        config_file = Path(model_path) / "transformer" / "config.json"
        if not with_transformer and config_file.exists():
            from diffusers.configuration_utils import FrozenDict

            # object.__setattr__: a stand-in, not registered as a pipeline component
            object.__setattr__(pipe, "transformer", ConfigOnly(FrozenDict(json.loads(config_file.read_text()))))
        return pipe

    def save_pipeline(self, pipe, folder) -> Path:
        """Write ``pipe`` as a diffusers folder that :meth:`load_pipeline` reads back the same."""
        pipe.save_pretrained(folder)
        return Path(folder)

    def build_tiny(self, **kwargs):
        """The family's tiny offline pipeline (random weights, seconds on a CPU); ``kwargs`` go to its builder."""
        module, function = self.tiny_builder.split(":")
        return getattr(importlib.import_module(module), function)(**kwargs)

    def pipeline_around(self, transformer):
        """The family's pipeline holding only ``transformer`` and the default scheduler (VAE factors at the real
        models' values): what training and the memory estimate need once prompts are encoded."""
        pipeline_class = self.pipeline_class()
        components = {name: None for name in inspect.signature(pipeline_class.__init__).parameters if name != "self"}
        components.update(transformer=transformer, scheduler=self.default_scheduler())
        return pipeline_class(**components)

    def random_conditioning(self, preset: Preset, batch_size: int, generator) -> dict:
        """Text conditioning with ``preset``'s shapes, random: what encoded prompts would give (benchmarks); with
        a text mask (``valid_text_tokens``) the first tokens are the prompt, the rest padding."""
        shape = (batch_size, preset.text_length, preset.text_dim)
        cond = {"encoder_hidden_states": torch.randn(*shape, generator=generator)}
        if preset.valid_text_tokens:
            mask = torch.zeros(batch_size, preset.text_length)
            mask[:, : preset.valid_text_tokens] = 1
            cond["encoder_attention_mask"] = mask
        return cond

    def text_encoder_names(self) -> tuple:
        return ("text_encoder",)

    def set_scheduler(self, pipe, kind: str) -> None:
        """Replace the pipeline's scheduler by another kind (e.g. ``--scheduler dpm``), keeping its config."""
        raise UserError(f"--scheduler is not supported for {self.display_name}; it uses the scheduler in its model folder")

    # ------------------------------------------------------------------------------------ prompts
    def text_length(self, pipe) -> int:
        """How many text tokens the transformer receives per prompt (also for a pipeline without tokenizer)."""
        raise NotImplementedError

    def encode_prompts(self, pipe, prompts: list, device) -> dict:
        """Conditioning for the transformer: ``{kwarg_name: tensor with batch first}``."""
        raise NotImplementedError

    def prompt_token_ids(self, pipe, prompt: str) -> list:
        """The token ids at the transformer's text positions for ``prompt`` (padding included)."""
        raise NotImplementedError

    def pipeline_text_kwargs(self, pipe) -> dict:
        """Arguments of the diffusers pipeline's call that size the text conditioning as this model expects."""
        return {}

    def unguided_pipeline_kwargs(self, pipe) -> dict:
        """The diffusers pipeline's arguments for one conditional pass per step (no classifier-free guidance):
        what the hand-written sampling loop reproduces."""
        return {"guidance_scale": 1.0, **self.pipeline_text_kwargs(pipe)}

    def pipeline_embedding_kwargs(self, cond: dict) -> dict:
        """The diffusers pipeline's arguments that pass precomputed conditioning ``cond`` instead of a prompt."""
        return {"prompt_embeds": cond["encoder_hidden_states"]}

    def text_attention_mask(self, cond: dict):
        """``[B, T]`` bool: the text positions of ``cond`` the transformer attends to; None when it attends to all."""
        return None

    def ignored_prompt_cause(self, pipe) -> str:
        """The likeliest reason why a prompt conditions the transformer exactly as the empty prompt does (for the
        message that refuses to train on it)."""
        return ("the text encoder's output does not depend on the prompt: check that the folder's tokenizer is the one "
                "its text_encoder was trained with and that the text encoder's weights loaded")

    def safree_text_sides(self, pipe) -> dict:
        """SAFREE (``receler/baselines/safree.py``): ``{pipeline embedding argument: text side}`` for each text
        encoder whose embeddings SAFREE filters."""
        raise UserError(f"--baseline safree is not implemented for {self.display_name}; use --baseline negative_prompt")

    def concept_token_ids(self, pipe, concept: str) -> list:
        """Spellings of the concept's token run as it can appear in a prompt: a list of token-id lists, any
        of which marks the concept. A word is often tokenized differently at the start of the prompt (where
        a template may precede it) and after a space, so both are listed."""
        tokenizer = pipe.tokenizer
        spellings = [tokenizer(text, add_special_tokens=False).input_ids for text in (concept, " " + concept)]
        # As the first words of a prompt: the prompt's tokens minus those an empty prompt also has.
        alone, empty = (_strip_padding(self.prompt_token_ids(pipe, text), tokenizer.pad_token_id) for text in (concept, ""))
        if len(alone) > len(empty):
            spellings.append(alone[: len(alone) - len(empty)])
        unique = []
        for ids in spellings:
            if ids and ids not in unique:
                unique.append(ids)
        return unique

    # ---------------------------------------------------------------------------------- sampling
    def round_frames(self, num_frames: int, flag: str = "--num_frames") -> int:
        """A frame count the VAE can decode: ``num_frames`` when it is ``frame_step * k + 1``, else the nearest valid
        count below it, with a warning naming both (the diffusers pipelines render 21 frames for 24 too, silently).

        The seed toolkit's own commands pass ``--num_frames 24``; refusing them helped nobody.
        """
        if num_frames < 1:
            raise UserError(f"{flag} must be at least 1 (got {num_frames})")
        step = self.frame_step
        valid = (num_frames - 1) // step * step + 1
        if valid != num_frames:
            logger.warning("%s %d is not %dk+1, which %s needs (its VAE compresses %d frames into one latent frame): "
                           "using %d frames, the nearest valid count below", flag, num_frames, step,
                           self.display_name, step, valid)
        return valid

    def check_frames(self, num_frames: int) -> None:
        """Frame counts must be ``frame_step * k + 1`` (the VAE's temporal compression); name the nearest valid ones."""
        step = self.frame_step
        if num_frames < 1 or (num_frames - 1) % step:
            lower = max(1, num_frames - (num_frames - 1) % step) if num_frames > 1 else 1
            upper = lower + step
            raise UserError(
                f"--num_frames {num_frames} is not valid for {self.display_name}: it must be {step}k+1 "
                f"(e.g. {lower} or {upper}), because the VAE compresses {step} frames into one latent frame."
            )

    def check_size(self, height: int, width: int) -> None:
        m = self.size_multiple
        if height % m or width % m or height <= 0 or width <= 0:
            raise UserError(f"--height {height} / --width {width}: both must be positive multiples of {m} for "
                            f"{self.display_name}.")

    def default_video_size(self, pipe) -> tuple:
        """``(num_frames, height, width)`` the model was built for, used when flags leave them out."""
        raise NotImplementedError

    def make_sampler(self, pipe, num_inference_steps, num_frames, height, width, device, generator=None):
        raise NotImplementedError

    def block_modules(self, transformer) -> list:
        """Every transformer block, in call order (for gradient checkpointing and compilation)."""
        return list(self.layout.blocks(transformer))

    def with_soft_tokens(self, cond: dict, positions: torch.Tensor, vectors: torch.Tensor) -> dict:
        """``cond`` with ``vectors`` [K, D] written at text positions ``positions`` [B, K] of every prompt
        (differentiable in ``vectors``): the learned tokens of the attack and of adversarial training."""
        emb = cond["encoder_hidden_states"]
        rows = torch.arange(emb.shape[0], device=emb.device)[:, None].expand_as(positions)
        out = emb.clone()
        out[rows, positions] = vectors.to(emb.dtype).unsqueeze(0).expand(emb.shape[0], -1, -1)
        cond = {**cond, "encoder_hidden_states": out}
        if "encoder_attention_mask" in cond:  # a text mask: the learned tokens must be attended, not masked as padding
            mask = cond["encoder_attention_mask"].clone()
            mask[rows.to(mask.device), positions.to(mask.device)] = 1
            cond["encoder_attention_mask"] = mask
        return cond

    # ------------------------------------------------------------------------------------- losses
    def loss_module(self, transformer):
        """The module whose output the ``ff``/``ff_all`` loss targets compare."""
        raise NotImplementedError

    def loss_rows(self, output: torch.Tensor, cond: dict, target: str) -> torch.Tensor:
        """Select what the losses compare from the loss module's output (``ff``: video rows only)."""
        return output

    # ------------------------------------------------------------------------------- localization
    def probe_modules(self, transformer) -> list:
        """One attention module per eraser, in eraser order, whose call attends video queries over the text:
        the concept attention is read from the query and key it hands to scaled_dot_product_attention."""
        raise NotImplementedError

    def token_grid(self, pipe, num_frames: int, height: int, width: int) -> tuple:
        """``(frames, rows, cols)`` of video tokens, in the order the transformer flattens them."""
        raise NotImplementedError


class ConfigOnly:
    """Stands in for a component that was not loaded, exposing only its ``config``."""

    def __init__(self, config):
        self.config = config


def _strip_padding(ids: list, pad_id) -> list:
    ids = list(ids)
    while ids and ids[-1] == pad_id:
        ids.pop()
    return ids


def check_model_folder(model_path) -> dict:
    """Fail clearly unless ``model_path`` is a local diffusers pipeline folder; return its model_index."""
    path = Path(model_path)
    index = path / "model_index.json"
    if not path.is_dir():
        raise UserError(
            f"model folder {path} does not exist. Pass a local diffusers pipeline folder with --model_path "
            f"(e.g. models/world-cogvideox, or a downloaded CogVideoX-2b); nothing is downloaded."
        )
    if not index.exists():
        raise UserError(
            f"{path} is not a diffusers pipeline folder (no model_index.json). Pass the folder that holds "
            f"model_index.json, transformer/, scheduler/ ..."
        )
    try:
        return json.loads(index.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{index} is not valid JSON: {err}") from None
