"""The training configuration: one typed field per option, each carrying its own help text.

:class:`TrainConfig` is what a training run is asked to do, exactly as given (on the command line or in
code); it is checked once, when it is built, and never changes afterwards. What follows from it and the
model (the dtype ``auto`` picks, the video size, how many blocks to checkpoint, the preservation weight's
default, the preserve prompts) is worked out by :func:`receler.training.train` into a separate
:class:`ResolvedTraining`, which is logged and saved next to the config.

The command line is generated from the fields (:func:`build_parser`): adding an option is adding one
field here, with its help, its group and (if it has one) its legacy alias.
"""

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

from .errors import UserError
from .families import FAMILY_NAMES
from .lr_schedule import LR_SCHEDULERS

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def option(default=dataclasses.MISSING, *, help: str, group: str, flags: tuple = (), choices=None, parse=None,
           shortcuts: dict | None = None):
    """A config field that is also a command-line option ``--<name>``.

    ``flags``: more spellings of the same option (e.g. ``--cpu_offload``); ``choices``: allowed values;
    ``parse``: converts the command-line string (default: from the field's type); ``shortcuts``:
    ``{flag: (value, help)}`` switches that set this field to ``value`` (``--use_fp16`` -> ``dtype=float16``).
    A field without a default is a required option.
    """
    metadata = {"help": help, "group": group, "flags": tuple(flags), "choices": choices, "parse": parse,
                "shortcuts": shortcuts or {}}
    return field(default=default, metadata=metadata)


def _block_count(value: str):
    if value == "auto":
        return value
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of blocks, got {value!r}")
    return int(value)


MODEL, PROMPTS, VIDEO, LOSS, ADVERSARIAL, OPTIMISATION, OUTPUT = (
    "model", "concept and prompts", "video and trajectory", "loss",
    "adversarial training (resisting learned-prompt attacks)", "optimisation", "output",
)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run is asked to do. Build it in code (``TrainConfig(model_path=..., ...)``) or
    from a command line (:func:`config_from_argv`); either way it is validated once, here."""

    # -- model
    model_path: str = option(help="local diffusers pipeline folder (nothing is downloaded)", group=MODEL)
    model_family: str = option("auto", help="model family; auto reads the pipeline class from model_index.json",
                               group=MODEL, choices=("auto",) + FAMILY_NAMES)
    scheduler: str | None = option(None, group=MODEL, choices=("ddim", "dpm"),
                                   help="CogVideoX: override the folder's scheduler (DDIM as 2b ships, DPM as 5b renders)")
    dtype: str = option("auto", group=MODEL, choices=("auto",) + DTYPE_NAMES,
                        help="backbone dtype; erasers and their optimizer state are always float32. "
                        "auto = bfloat16 on a GPU, float32 on a CPU",
                        shortcuts={"--use_fp16": ("float16", "alias for --dtype float16")})
    device: str | None = option(None, group=MODEL, help="torch device (default: cuda if available, else cpu)")
    use_cpu_offload: bool = option(False, group=MODEL, flags=("--cpu_offload",),
                                   help="for small GPUs: encode prompts on the CPU, keep the text encoder off the GPU, "
                                   "and swap as many blocks' weights to CPU memory as the GPU needs (--blocks_to_swap "
                                   "auto, unless --blocks_to_swap is given)")
    gradient_checkpointing: bool = option(False, group=MODEL,
                                          help="recompute every block's activations in backward: much less memory, "
                                          "~25% slower updates")
    checkpoint_blocks: int | str = option("auto", group=MODEL, parse=_block_count,
                                          help="checkpoint only the first N blocks (fewer = faster, more memory); "
                                          "'auto' picks the fewest that fit the GPU's free memory by the memory "
                                          "estimator (none on a CPU)")
    blocks_to_swap: int | str | None = option(None, group=MODEL, parse=_block_count,
                                              help="keep the frozen weights of the last N transformer blocks in pinned "
                                              "CPU memory and copy each to the GPU just before it runs (one block "
                                              "ahead, on a side stream, overlapping the compute). Needs every block "
                                              "checkpointed, so it implies --gradient_checkpointing (a smaller "
                                              "--checkpoint_blocks is refused); erasers and their optimizer state stay "
                                              "on the GPU. 'auto': the fewest that fit the GPU's free memory by the "
                                              "memory estimator (none on a CPU). Default: none, or auto with "
                                              "--use_cpu_offload")
    fp8_weights: bool = option(False, group=MODEL,
                               help="store the frozen backbone's weights in float8 and compute in the --dtype "
                               "(layerwise casting): ~half the weight memory of bfloat16, erasers stay float32")
    offload_activations: bool = option(False, group=MODEL,
                                       help="keep the inputs of checkpointed blocks in CPU memory instead of GPU "
                                       "memory: the largest activation term left under checkpointing, for a few % "
                                       "more time per update")
    compile: bool = option(False, group=MODEL,
                           help="torch.compile each transformer block (faster updates after a compilation warm-up)")

    # -- concept and prompts
    target_concept: str = option(group=PROMPTS, flags=("--concept",),
                                 help="the concept to erase, as it is written in the prompts (e.g. 'nudity', 'red'); "
                                 "its tokens locate the concept for the localization loss. Several concepts, comma-"
                                 "separated ('nudity,violence'), train one eraser for all of them: each prompt erases "
                                 "the concept of its CSV 'concept' column, else the first one it names")
    concept_words: str | None = option(None, group=PROMPTS,
                                       help="comma-separated words whose tokens mark the concept for localization "
                                       "when the prompts use synonyms (e.g. 'naked,nude,nudity,topless'); default: "
                                       "the target concept")
    prompts_file: str | None = option(None, group=PROMPTS, flags=("--prompt_path",),
                                      help="training prompts: .txt (one per line) or .csv with a 'prompt' column and "
                                      "optionally 'preserve_prompt' (Ring-A-Bell's 'normal prompt' works too). "
                                      "Default: the concept itself")
    auto_generate_preserved: bool = option(False, group=PROMPTS,
                                           help="choose concepts to preserve offline with the model's own text "
                                           "encoder (related to the target but not it; see "
                                           "receler/auto_generate_preserved_concepts.py); written to "
                                           "<output_dir>/preserved_concepts.txt")
    num_preserved_concepts: int = option(15, group=PROMPTS, help="how many concepts --auto_generate_preserved picks")
    preserved_concepts_file: str | None = option(None, group=PROMPTS,
                                                 help="concepts to preserve, one per line; rows without a preserve "
                                                 "prompt get one by putting a preserved concept in place of the "
                                                 "target concept (or the preserved concept alone)")
    generate_type: str = option("t2v", group=PROMPTS, choices=("t2v",),
                                help="what the eraser is trained for: text to video, the only kind (accepted so the "
                                "seed toolkit's commands run as written)")

    # -- video and trajectory
    num_frames: int | None = option(None, group=VIDEO, help="frames per training video, 4k+1 (default: the model's)")
    height: int | None = option(None, group=VIDEO, help="video height in pixels (default: the model's)")
    width: int | None = option(None, group=VIDEO, help="video width in pixels (default: the model's)")
    num_inference_steps: int = option(50, group=VIDEO, help="denoising steps of each training trajectory")
    train_timesteps: str = option("all", group=VIDEO,
                                  help="train at every step of a trajectory ('all') or at K steps sampled per trajectory")
    trajectory: str = option("erased", group=VIDEO, choices=("erased", "frozen"),
                             help="which model's prediction advances the latents: the one being trained "
                             "(ESD/Receler) or the frozen one")
    start_guidance: float = option(1.0, group=VIDEO,
                                   help="classifier-free guidance of the training trajectory (ESD and Receler sample "
                                   "it at 3): the latents advance with uncond + G (cond - uncond) of the model the "
                                   "trajectory follows, one more no-grad pass per step when G != 1; 1 = no guidance")

    # -- loss
    eta: float = option(7.0, group=LOSS,
                        help="negative guidance strength in the unlearning target o_b - eta (o_c - o_b), where the base "
                        "o_b is the empty prompt's output o_0 (or, with an anchor, see --anchor_weight)")
    anchor_prompt: str | None = option(None, group=LOSS,
                                       help="what the concept should turn into: a prompt (e.g. 'a person' for a "
                                       "celebrity) whose frozen output replaces the empty prompt's as the base of the "
                                       "unlearning target; a CSV column 'anchor_prompt' gives one per row and wins. "
                                       "Default: none (plain negative guidance)")
    anchor_weight: float = option(1.0, group=LOSS,
                                  help="with an anchor, the base of the unlearning target is o_b = w o_anchor + (1 - w) "
                                  "o_0: 1 = the anchor alone (with --eta 0: concept ablation, the concept maps to the "
                                  "anchor), 0 = plain negative guidance")
    alpha: float = option(1.0, group=LOSS, help="weight of the localization loss (0 turns it off)")
    beta: float | None = option(None, group=LOSS,
                                help="weight of the preservation loss; default 1.0 when preserve prompts exist, else 0")
    loss_target: str | None = option(None, group=LOSS, choices=("ff", "ff_all", "velocity"),
                                     help="what the losses compare: the final block's feed-forward output on video "
                                     "rows (ff), on all rows (ff_all), or the transformer's prediction (velocity). "
                                     "Default: the family's (ff for CogVideoX)")
    mask_threshold: float = option(0.1, group=LOSS,
                                   help="threshold on the min-max normalised concept attention for the "
                                   "localization mask")
    mask_mode: str = option("per_layer", group=LOSS, choices=("per_layer", "average"),
                            help="per_layer: each eraser's mask from its own layer's concept attention; average: "
                            "the attention averaged over layers, normalised and thresholded once, one mask for every "
                            "eraser (Receler's reference code)")
    mask_normalize: str = option("frame", group=LOSS, choices=("frame", "video"),
                                 help="min-max normalise the concept attention per latent frame (every frame gets a "
                                 "concept region) or over the whole video (frames where the concept is weak stay out)")
    mask_fallback: str = option("concept", group=LOSS, choices=("concept", "none"),
                                help="a prompt whose tokens do not contain the concept: take its mask from the frozen "
                                "model's attention on the bare concept prompt (--target_concept) at the same latents "
                                "(concept), so every prompt trains with the localization loss, or train it without "
                                "(none)")
    mask_chunk_size: int | None = option(None, group=LOSS,
                                         help="video queries per chunk when reading concept attention (default: "
                                         "sized to ~256 MB)")

    # -- adversarial training
    adversarial: bool = option(False, group=ADVERSARIAL,
                               help="at every update, refresh a learned soft prompt that attacks the current eraser, "
                               "and train the eraser on the attacked concept prompt as well as the plain one")
    adv_num_tokens: int = option(4, group=ADVERSARIAL, help="learned soft tokens appended after each prompt")
    adv_steps: int = option(2, group=ADVERSARIAL, help="attack steps that refresh the soft prompt at every update")
    adv_lr: float = option(1e-2, group=ADVERSARIAL, help="Adam learning rate of the soft prompt")
    adv_weight: float = option(0.3, group=ADVERSARIAL,
                               help="weight of the unlearning loss on the attacked prompt (0.3 keeps preservation on "
                               "the world benchmark; 1.0 costs half the other colours' accuracy)")

    # -- optimisation
    eraser_rank: int = option(128, group=OPTIMISATION, help="bottleneck width of each eraser")
    learning_rate: float = option(1e-4, group=OPTIMISATION, help="AdamW learning rate")
    weight_decay: float = option(0.0, group=OPTIMISATION, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, group=OPTIMISATION, help="gradient clipping norm")
    lr_scheduler: str = option("constant", group=OPTIMISATION, choices=LR_SCHEDULERS,
                               help="learning rate over the run's updates, after the warm-up: constant, cosine (half a "
                               "cosine down towards 0) or linear (straight down towards 0); see docs/method.md")
    lr_warmup_steps: int = option(0, group=OPTIMISATION,
                                  help="updates over which the learning rate rises linearly to --learning_rate "
                                  "(update u of the first N runs at u/N of it)")
    batch_size: int = option(1, group=OPTIMISATION,
                             help="prompts per forward batch (one update = one timestep of one batch)")
    gradient_accumulation_steps: int = option(1, group=OPTIMISATION,
                                              help="forward batches per update: an update trains N x --batch_size "
                                              "prompts at the same timestep, N batches at a time, and steps once "
                                              "(the same update as --batch_size N x B, in the memory of B)")
    num_epochs: int = option(1, group=OPTIMISATION, help="epochs; an epoch is one trajectory per prompt")
    max_steps: int | None = option(None, group=OPTIMISATION,
                                   help="stop after this many updates (before --num_epochs ends)")
    seed: int = option(42, group=OPTIMISATION,
                       help="seed for prompt order, latents and sampled timesteps (CPU generators)")

    # -- output
    output_dir: str = option(group=OUTPUT, flags=("--eraser_ckpt_path",),
                             help="the eraser folder; also holds args.json, train_log.jsonl, loss.png, checkpoints/")
    save_every: int = option(100, group=OUTPUT,
                             help="write checkpoints/step_N every N updates (0: only at the end)")
    checkpoints_total_limit: int | None = option(None, group=OUTPUT,
                                                 help="keep only the K most recent checkpoints/step_N folders (older "
                                                 "ones are deleted after each save); default: keep all")
    resume_from: str | None = option(None, group=OUTPUT,
                                     help="a checkpoints/step_N folder to continue from, or 'latest': the highest "
                                     "complete step under <output_dir>/checkpoints (a fresh start when there is none); "
                                     "its settings must match this run's (see --allow_changed_args)")
    overwrite: bool = option(False, group=OUTPUT,
                             help="start over in an --output_dir that already holds files: they are moved to a "
                             "sibling folder <output_dir>.old-<time> (nothing is deleted). Without it such a "
                             "folder is refused")
    allow_changed_args: bool = option(False, group=OUTPUT,
                                      help="with --resume_from: continue even though settings that change the result "
                                      "(learning rate, steps, prompts, loss weights, seed, size, model, ...) differ "
                                      "from the checkpoint's; the changes are logged and recorded in args.json")
    log_every: int = option(10, group=OUTPUT, help="log a line every N updates")
    report_to: str = option("tensorboard", group=OUTPUT, choices=("none", "tensorboard", "wandb"),
                            help="where the losses, learning rate and validations go besides train_log.jsonl "
                            "(through accelerate's trackers): TensorBoard events in <output_dir>/tensorboard, Weights & "
                            "Biases (needs `pip install wandb`; WANDB_MODE=offline keeps it offline), or none")
    validation_prompts: str | None = option(None, group=OUTPUT,
                                            help="prompts (.txt or .csv, as --prompts_file) rendered clean vs erased "
                                            "with fixed seeds every --validation_every updates into "
                                            "<output_dir>/validation/step_N/ and the tracker; on the world model "
                                            "also scored by its classifier (scores.json). Loads the VAE")
    validation_every: int = option(100, group=OUTPUT,
                                   help="updates between validations (and one after the last update)")
    verbose: bool = option(False, group=OUTPUT, help="debug logging")

    def __post_init__(self):
        for name in ("batch_size", "num_epochs", "num_inference_steps", "eraser_rank", "log_every",
                     "num_preserved_concepts", "adv_num_tokens", "adv_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_steps", "num_frames", "height", "width", "mask_chunk_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                what = "leave it out for the model's own" if name in ("num_frames", "height", "width") else "leave it out"
                raise UserError(f"--{name} must be at least 1 (got {getattr(self, name)}); {what}")
        if self.save_every < 0:
            raise UserError(f"--save_every must be 0 (save only at the end) or a number of updates (got {self.save_every})")
        for name, positive in (("learning_rate", True), ("adv_lr", True), ("weight_decay", False), ("eta", False),
                               ("alpha", False), ("beta", False), ("adv_weight", False), ("mask_threshold", False),
                               ("start_guidance", False), ("anchor_weight", False)):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0 or (positive and value == 0)):
                raise UserError(f"--{name} must be a finite number {'> 0' if positive else '>= 0'} (got {value})")
        if math.isnan(self.max_grad_norm) or self.max_grad_norm <= 0:
            raise UserError(f"--max_grad_norm must be > 0 (got {self.max_grad_norm}); pass inf to turn clipping off")
        swap = self.blocks_to_swap
        if not (swap in (None, "auto") or (isinstance(swap, int) and swap >= 0)):
            raise UserError(f"--blocks_to_swap must be 'auto' or a number of blocks >= 0 (got {self.blocks_to_swap!r})")
        if self.mask_threshold > 1:
            raise UserError(f"--mask_threshold must be in [0, 1]: it thresholds the min-max normalised attention "
                            f"(got {self.mask_threshold})")
        for name in ("gradient_accumulation_steps", "validation_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1 (got {getattr(self, name)})")
        if self.lr_warmup_steps < 0:
            raise UserError(f"--lr_warmup_steps must be 0 or more (got {self.lr_warmup_steps})")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise UserError(f"--checkpoints_total_limit must be at least 1 (got {self.checkpoints_total_limit}); leave "
                            f"it out to keep every checkpoint")
        if self.adversarial and self.gradient_accumulation_steps > 1:
            raise UserError("--adversarial refreshes its soft prompt once per forward batch, so it cannot be split "
                            "over --gradient_accumulation_steps; use a larger --batch_size, or accumulation without "
                            "--adversarial")
        if self.train_timesteps != "all":
            try:
                if int(self.train_timesteps) < 1:
                    raise ValueError
            except ValueError:
                raise UserError(f"--train_timesteps must be 'all' or a positive integer (got {self.train_timesteps!r})") from None
        if not self.concepts:
            raise UserError("--target_concept is empty; name the concept to erase as it appears in the prompts")
        if len(self.concepts) > 1 and self.concept_words:
            raise UserError("--concept_words is for one concept; with several --target_concept values each concept's "
                            "own words mark it (give a prompt's concept in a 'concept' column of the prompts file)")
        if self.start_guidance < 1.0:
            raise UserError(f"--start_guidance must be at least 1 (1 = no guidance; got {self.start_guidance})")
        if not 0.0 <= self.anchor_weight <= 1.0:
            raise UserError(f"--anchor_weight must be in [0, 1] (got {self.anchor_weight})")
        if self.anchor_prompt is not None and not self.anchor_prompt.strip():
            raise UserError("--anchor_prompt is empty; give the prompt the concept should turn into, or leave it out")
        for name in ("dtype", "model_family", "scheduler", "trajectory", "loss_target", "mask_mode",
                     "mask_normalize", "mask_fallback", "lr_scheduler", "report_to", "generate_type"):
            allowed = _field(name).metadata["choices"]
            if getattr(self, name) is not None and getattr(self, name) not in allowed:
                raise UserError(f"--{name} {getattr(self, name)!r} is not one of: {', '.join(allowed)}")

    # ------------------------------------------------------------------------------------------ derived
    @property
    def concepts(self) -> list:
        """The concepts this eraser erases (``--target_concept``, comma-separated)."""
        return [c.strip() for c in self.target_concept.split(",") if c.strip()]

    @property
    def concept_word_list(self) -> list:
        """The words whose tokens mark the concept for localization (``--concept_words``, else the target)."""
        words = self.concept_words.split(",") if self.concept_words else [self.target_concept]
        return [w.strip() for w in words if w.strip()]

    @property
    def trained_timesteps(self):
        """``"all"`` or the number of sampled steps per trajectory, as an int."""
        return "all" if self.train_timesteps == "all" else int(self.train_timesteps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ResolvedTraining:
    """What a run derives from its :class:`TrainConfig` and the model, worked out once before training."""

    model_family: str
    device: str
    dtype: str
    num_frames: int
    height: int
    width: int
    checkpoint_blocks: int      # blocks whose activations are recomputed in backward
    beta: float                 # preservation weight (its default depends on the preserve prompts)
    loss_target: str            # the family's default when --loss_target is not given
    concept_words: tuple
    prompts: tuple
    preserve_prompts: tuple | None
    world_size: int = 1
    anchor_prompts: tuple | None = None  # per prompt (--anchor_prompt or the file's anchor_prompt column)
    prompt_concepts: tuple | None = None  # per prompt, the concept it erases (several --target_concept values)
    preserved_concepts: tuple | None = None  # the concepts the preserve prompts were made from (file or auto)
    blocks_to_swap: int = 0               # last blocks whose weights live in CPU memory (--blocks_to_swap)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("concept_words", "prompts", "preserve_prompts", "anchor_prompts", "prompt_concepts",
                    "preserved_concepts"):
            out[key] = None if out[key] is None else list(out[key])
        return out


# ------------------------------------------------------------------------------------ command line


def _field(name):
    return next(f for f in dataclasses.fields(TrainConfig) if f.name == name)


def _value_type(annotation):
    """``int`` for ``int | None``; the first concrete type of a union."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def build_parser(description: str, config_class=TrainConfig) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of ``config_class``, grouped and in field order, with
    each field's help; defaults are shown."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = {}
    for f in dataclasses.fields(config_class):
        meta = f.metadata
        if "help" not in meta:
            continue
        g = groups.get(meta["group"]) or groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        kwargs = {"dest": f.name, "help": meta["help"].replace("%", "%%")}
        required = f.default is dataclasses.MISSING
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        choices = meta["choices"]
        if _value_type(f.type) is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = meta["parse"] or _value_type(f.type)
            if choices:
                kwargs["choices"] = choices
        g.add_argument(f"--{f.name}", *meta["flags"], **kwargs)
        for flag, (_, text) in meta["shortcuts"].items():
            g.add_argument(flag, dest=_shortcut_dest(flag), action="store_true", help=text.replace("%", "%%"))
    return p


def _shortcut_dest(flag: str) -> str:
    return "shortcut_" + flag.lstrip("-")


def config_from_namespace(namespace: argparse.Namespace, config_class=TrainConfig):
    """The config a parsed command line asks for (shortcut switches applied, e.g. ``--use_fp16``)."""
    values = {}
    for f in dataclasses.fields(config_class):
        if "help" not in f.metadata:
            continue
        values[f.name] = getattr(namespace, f.name)
        for flag, (value, _) in f.metadata["shortcuts"].items():
            if getattr(namespace, _shortcut_dest(flag), False):
                values[f.name] = value
    return config_class(**values)
