"""Train an eraser from a :class:`~receler.config.TrainConfig`: the library entry point, :func:`train`.

    from receler.config import TrainConfig
    from receler.training import train

    result = train(TrainConfig(model_path="models/world-cogvideox", target_concept="red",
                               prompts_file="prompts.csv", output_dir="runs/erase_red"))

The steps, in order: read the prompts and settle the preserve prompts (before any model loads, so a bad
file fails fast); load the transformer and text encoders; encode every prompt once and release the text
encoders; resolve what the config leaves open (dtype, video size, checkpointed blocks, ...) into a
:class:`~receler.config.ResolvedTraining`, logged and saved to ``args.json``; then the training loop
(:func:`receler.trainer.run_training`), which writes the eraser folder.
"""

import gc
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .block_swap import device_budget, requested_swap, resolve_block_swap
from .config import ResolvedTraining, TrainConfig
from .devices import dtype_name, resolve_dtype
from .distributed import Distributed
from .errors import UserError
from .families import family_of_pipeline, resolve_family
from .io_utils import atomic_write_json, read_lines
from .prompts import load_prompts
from .resume_check import changes_record, check_resume_settings, describe_changes, model_hash, run_settings
from .run_checkpoints import resolve_resume
from .run_folder import CHECKPOINTS, checkpoint_step, claim_output_dir, set_aside_later_checkpoints
from .tracking import check_tracker
from .trainer import Concept, EraserTrainer, check_checkpoint_folder, encode_prompt_set, run_training
from .validation import read_validation_prompts

logger = logging.getLogger("receler.train")


@dataclass
class TrainResult:
    """What :func:`train` did: where the eraser is, how many updates ran and why it stopped, what it resolved."""

    output_dir: Path
    updates: int
    stopped: str            # "finished", "max_steps" or "interrupted"
    resolved: ResolvedTraining
    pipe: object = None     # the pipeline whose transformer now carries the trained erasers
    signal: str | None = None  # what stopped an interrupted run ("Ctrl-C" or "SIGTERM")

    @property
    def summary(self) -> dict:
        return {"updates": self.updates, "stopped": self.stopped}


def train(config: TrainConfig, pipe=None) -> TrainResult:
    """Train an eraser as ``config`` says and write the eraser folder to ``config.output_dir``.

    ``pipe``: an already loaded pipeline to train on instead of loading ``config.model_path`` (its
    transformer receives fresh erasers, which hold the trained weights afterwards; its text encoders are
    kept). Raises :class:`~receler.errors.UserError` for anything the user can fix. A run stopped by
    Ctrl-C or SIGTERM returns normally, with ``stopped == "interrupted"`` and ``signal`` naming it (the CLI turns that
    into exit code 130).
    """
    family = family_of_pipeline(pipe) if pipe is not None else resolve_family(config.model_family, config.model_path)
    check_tracker(config.report_to)
    table = load_prompts(config.prompts_file) if config.prompts_file else None
    rows = table.rows if table is not None else None
    prompts, given = read_training_prompts(config, table)
    anchors = read_anchor_prompts(config, len(prompts), rows)
    concepts = prompt_concepts(config, prompts, rows)
    validation = read_validation_prompts(config.validation_prompts, config.seed) if config.validation_prompts else None
    early = {"prompts": prompts, "anchor_prompts": anchors, "num_frames": config.num_frames,
             "height": config.height, "width": config.width, "beta": config.beta}
    if not config.auto_generate_preserved:  # check the prompt files now, before any model loads
        early["preserve_prompts"], early["beta"] = choose_preserve_prompts(
            config, prompts, given, read_preserved_concepts(config.preserved_concepts_file), concepts)
    else:
        del early["prompts"]  # the preserve prompts come from the model: the rows are compared once it has loaded
    checkpoint = resume_checkpoint(config)
    if checkpoint is not None:  # settings first: a refused resume should not wait for the model to load
        check_checkpoint_folder(checkpoint, config.eraser_rank)
        check_resume_settings(checkpoint, run_settings(config.to_dict(), early), config.allow_changed_args)
    dist = Distributed(config.device)
    device = dist.device
    dtype = resolve_dtype(config.dtype, device) if pipe is None else pipe.transformer.dtype
    logger.info("%s model, %d prompts, device %s, %s backbone%s", family.display_name, len(prompts), device,
                dtype_name(dtype), f", process {dist.rank + 1} of {dist.world_size}" if dist.enabled else "")
    output_dir = Path(config.output_dir)
    folder = claim_output_dir(output_dir, checkpoint, config.overwrite) if dist.is_main else None
    try:
        pipe, data, beta, preserved = prepare_pipeline(family, config, device, dtype, prompts, given, output_dir,
                                                       dist.is_main, pipe, anchors=anchors, concepts=concepts,
                                                       validation=validation)
        resolved = resolve_training(config, family, pipe, device, beta=beta, prompts=prompts,
                                    preserve_prompts=data.preserve_prompts, world_size=dist.world_size,
                                    anchors=anchors, concepts=concepts, preserved_concepts=preserved)
        logger.info("resolved settings: %s", json.dumps({k: v for k, v in resolved.to_dict().items()
                                                          if k not in ("prompts", "preserve_prompts")}))
        args = {**config.to_dict(), "resolved": resolved.to_dict()}
        if checkpoint is not None:
            args["resumed_from"] = resume_record(config, checkpoint, resolved, pipe, output_dir, dist.is_main)
        if dist.is_main:
            atomic_write_json(output_dir / "args.json", args)
        dist.barrier()

        def validator(tracker):
            from .validation import Validator

            return Validator(family, pipe, validation, data.cond_validation, resolved, config.num_inference_steps,
                             output_dir, config.target_concept, tracker)

        with EraserTrainer(family, pipe, config, device, dist, resolved=resolved) as trainer:
            summary = run_training(trainer, data, output_dir, resume_from=checkpoint,
                                   validator_factory=validator if validation else None)
    finally:
        if folder is not None:
            folder.release()
    return TrainResult(output_dir, summary["updates"], summary["stopped"], resolved, pipe, summary.get("signal"))


def resume_checkpoint(config: TrainConfig) -> Path | None:
    """The checkpoint folder ``--resume_from`` names (``latest``: the highest complete step of ``--output_dir``), or
    None for a fresh run."""
    return resolve_resume(config.resume_from, config.output_dir)


def resume_record(config: TrainConfig, checkpoint: Path, resolved: ResolvedTraining, pipe, output_dir,
                  is_main: bool) -> dict:
    """Compare every setting with the checkpoint's, now that the model and the prompts are known (refused
    unless ``--allow_changed_args``); set aside the checkpoints of the abandoned continuation. Returns what
    ``args.json`` records about the resume."""
    model = model_hash(type(pipe).__name__, dict(pipe.transformer.config))
    changes = check_resume_settings(checkpoint, run_settings(config.to_dict(), resolved.to_dict(), model),
                                    config.allow_changed_args)
    if changes:
        logger.warning("--allow_changed_args: resuming %s with changed settings: %s", checkpoint,
                       describe_changes(changes))
    step = checkpoint_step(checkpoint)
    if is_main and step is not None and checkpoint.resolve().parent == (Path(output_dir) / CHECKPOINTS).resolve():
        set_aside_later_checkpoints(output_dir, step)
    return {"checkpoint": str(checkpoint), "changed_settings": changes_record(changes)}


# ----------------------------------------------------------------------------------------- prompts


ANCHOR_COLUMNS = ("anchor_prompt", "anchor")


def read_training_prompts(config: TrainConfig, table=None) -> tuple:
    """``(prompts, preserve prompts given by the file or None per row)``; ``table``: the file, when already read."""
    if config.prompts_file is None:
        logger.info("no --prompts_file: training on the concept itself (%r)", config.target_concept)
        return [config.target_concept], [None]
    table = load_prompts(config.prompts_file) if table is None else table
    return [r.prompt for r in table.rows], [r.preserve_prompt for r in table.rows]


CONCEPT_COLUMNS = ("concept",)


def prompt_concepts(config: TrainConfig, prompts: list, rows=None) -> list:
    """The :class:`~receler.trainer.Concept` each prompt erases: its ``concept`` cell in the prompts file, else the
    first ``--target_concept`` value the prompt names, else (one concept) that concept. ``rows``: the prompts
    file's rows, when already read."""
    names = config.concepts
    cells = _column(config, CONCEPT_COLUMNS, rows) or [None] * len(prompts)
    out = []
    for i, (prompt, cell) in enumerate(zip(prompts, cells)):
        named = next((c for c in names if _names(prompt, c)), names[0] if len(names) == 1 else None)
        name = cell.strip() if cell else named
        if name is None:
            raise UserError(f"prompt {i + 1} ({prompt!r}) names none of the concepts {', '.join(names)}: add a "
                            f"'concept' column to {config.prompts_file} saying which one each prompt erases")
        if name not in names:
            raise UserError(f"prompt {i + 1} of {config.prompts_file} erases {name!r}, which is not one of "
                            f"--target_concept ({', '.join(names)}); add it there or fix the 'concept' cell")
        words = config.concept_word_list if len(names) == 1 else [name]
        out.append(Concept(name, tuple(words)))
    return out


def _names(prompt: str, concept: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(concept)}(?!\w)", prompt, re.IGNORECASE) is not None


def _column(config: TrainConfig, names: tuple, rows=None) -> list | None:
    """The cells of one of ``names`` in the prompts file (one per row), or None without such a column."""
    if config.prompts_file is None:
        return None
    from .prompts import find_column

    rows = load_prompts(config.prompts_file).rows if rows is None else rows
    name = find_column(list(rows[0].extra), names) if rows and rows[0].extra else None
    return [r.extra.get(name) or None for r in rows] if name else None


def read_anchor_prompts(config: TrainConfig, count: int, rows=None) -> list | None:
    """One anchor per training prompt: the prompts file's ``anchor_prompt`` column, else ``--anchor_prompt`` for
    every row, else None (plain negative guidance). A row with an empty anchor cell falls back to the flag.
    ``rows``: the prompts file's rows, when already read."""
    column = _column(config, ANCHOR_COLUMNS, rows)
    anchors = [a or config.anchor_prompt for a in column] if column else [config.anchor_prompt] * count
    if all(a is None for a in anchors):
        return None
    missing = [i + 1 for i, a in enumerate(anchors) if a is None]
    if missing:
        raise UserError(f"prompts {missing[:5]} of {config.prompts_file} have no anchor while others do; fill the "
                        f"'anchor_prompt' column or give --anchor_prompt for the rows without one")
    return anchors


def read_preserved_concepts(path) -> list:
    """``--preserved_concepts_file``: one concept per line (blank lines and ``#`` comments skipped)."""
    if path is None:
        return []
    return read_lines(path, what="preserved concepts file", flag="--preserved_concepts_file", item="concept")


def build_preserve_prompts(prompts, given, concept, preserved) -> list | None:
    """A preserve prompt per training prompt: the file's own, else the prompt with a preserved concept in
    place of its target concept (``concept``: one for all prompts, or one per prompt) or the preserved concept
    alone. None when there is nothing to preserve."""
    if all(p is None for p in given) and not preserved:
        return None
    concepts = [concept] * len(prompts) if isinstance(concept, str) else list(concept)
    out = []
    for i, (prompt, pre) in enumerate(zip(prompts, given)):
        if pre:
            out.append(pre)
        elif preserved:
            substitute = preserved[i % len(preserved)]
            pattern = re.compile(re.escape(concepts[i]), re.IGNORECASE)
            out.append(pattern.sub(substitute, prompt) if pattern.search(prompt) else substitute)
        else:
            raise UserError(
                f"prompt {i + 1} ({prompt!r}) has no preserve prompt while others do; give every row a "
                f"preserve_prompt, or pass --preserved_concepts_file to fill the gaps, or --beta 0."
            )
    return out


def choose_preserve_prompts(config: TrainConfig, prompts, given, preserved, concepts=None) -> tuple:
    """``(preserve prompts or None when preservation is off, beta)``: ``--beta`` defaults to 1.0 when there
    are preserve prompts, else 0."""
    names = [c.name for c in concepts] if concepts else config.target_concept
    preserve = build_preserve_prompts(prompts, given, names, preserved)
    beta = config.beta if config.beta is not None else (1.0 if preserve else 0.0)
    if beta > 0 and preserve is None:
        raise UserError("--beta > 0 needs preserve prompts: a 'preserve_prompt' column, --preserved_concepts_file "
                        "or --auto_generate_preserved")
    return (preserve if beta > 0 else None), beta


def auto_preserved_concepts(config: TrainConfig, family, pipe, device, output_dir, is_main) -> list:
    """``--auto_generate_preserved``: pick concepts near the target with the model's own text encoder."""
    from .preserved_concepts import generate_preserved_concepts, write_preserved_concepts

    result = generate_preserved_concepts(config.target_concept, config.num_preserved_concepts, pipe=pipe,
                                         family=family, device=device)
    if is_main:
        write_preserved_concepts(result, Path(output_dir) / "preserved_concepts.txt")
    logger.info("preserving %d concepts chosen by the text encoder: %s", len(result.names), ", ".join(result.names))
    return result.names


# ------------------------------------------------------------------------------------------ model


def prepare_pipeline(family, config: TrainConfig, device, dtype, prompts, given, output_dir, is_main, pipe=None,
                     anchors=None, concepts=None, validation=None):
    """Load the transformer and text encoder (unless ``pipe`` is given), choose the preserve prompts, encode
    every prompt (and its anchor, and the ``validation`` rows' prompts) once, then release the text encoder
    (only from a pipeline loaded here). The VAE is loaded only for validation renders.
    Returns ``(pipe, prompt set, beta, preserved concepts)``."""
    loaded_here = pipe is None
    if loaded_here:
        pipe = family.load_pipeline(config.model_path, dtype=dtype, with_vae=bool(validation))
    if config.scheduler:
        family.set_scheduler(pipe, config.scheduler)
    encode_device = torch.device("cpu") if config.use_cpu_offload else device
    for name in family.text_encoder_names():
        getattr(pipe, name).to(encode_device)
    preserved = read_preserved_concepts(config.preserved_concepts_file)
    if config.auto_generate_preserved and not preserved:
        preserved = auto_preserved_concepts(config, family, pipe, encode_device, output_dir, is_main)
    concepts = concepts or prompt_concepts(config, prompts)
    preserve, beta = choose_preserve_prompts(config, prompts, given, preserved, concepts)
    data = encode_prompt_set(family, pipe, prompts, preserve, concepts, encode_device,
                             soft_tokens=config.adv_num_tokens if config.adversarial else 0,
                             anchor_prompts=anchors, mask_fallback=config.mask_fallback == "concept")
    if validation:
        with torch.no_grad():
            data.cond_validation = [{k: v.detach().cpu() for k, v in family.encode_prompts(pipe, [p], encode_device).items()}
                                    for p, _ in validation]
    if loaded_here:
        for name in family.text_encoder_names():
            setattr(pipe, name, None)  # training never needs the text encoder again
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if requested_swap(config) == 0:  # with block swap the trainer places it, keeping swapped weights in CPU memory
        pipe.transformer.to(device)
    if validation and getattr(pipe, "vae", None) is not None:
        pipe.vae.to(device)
    return pipe, data, beta, (preserved or None)


def resolve_training(config: TrainConfig, family, pipe, device, beta=None, prompts=(), preserve_prompts=None,
                     world_size: int = 1, anchors=None, concepts=None, preserved_concepts=None) -> ResolvedTraining:
    """What ``config`` leaves open, for this model and device: the video size (the model's own where the
    config gives none, checked), the blocks to checkpoint, ``beta``'s default, the loss target."""
    device = torch.device(device)
    default_frames, default_height, default_width = family.default_video_size(pipe)
    frames = family.round_frames(config.num_frames or default_frames)
    height, width = config.height or default_height, config.width or default_width
    family.check_size(height, width)
    beta = beta if beta is not None else (config.beta if config.beta is not None else 0.0)
    resolved = ResolvedTraining(
        model_family=family.name, device=str(device), dtype=dtype_name(pipe.transformer.dtype),
        num_frames=frames, height=height, width=width, checkpoint_blocks=0, beta=beta,
        loss_target=config.loss_target or family.default_loss_target,
        concept_words=tuple(config.concept_word_list), prompts=tuple(prompts),
        preserve_prompts=None if preserve_prompts is None else tuple(preserve_prompts), world_size=world_size,
        anchor_prompts=None if anchors is None else tuple(anchors),
        prompt_concepts=None if concepts is None else tuple(c.name for c in concepts),
        preserved_concepts=tuple(preserved_concepts) if preserved_concepts and beta > 0 else None,
    )
    blocks = checkpoint_block_count(config, family, pipe, device, resolved)
    swap, blocks = resolve_block_swap(config, family, pipe, device, resolved, blocks)
    return ResolvedTraining(**{**resolved.__dict__, "checkpoint_blocks": blocks, "blocks_to_swap": swap})


def checkpoint_block_count(config: TrainConfig, family, pipe, device, resolved) -> int:
    """``--gradient_checkpointing``: every block; a number: that many; ``auto``: none on a CPU, and on a GPU
    the fewest that fit its free memory by the memory estimator."""
    total = len(family.block_modules(pipe.transformer))
    if config.gradient_checkpointing:
        return total
    if config.checkpoint_blocks != "auto":
        return min(int(config.checkpoint_blocks), total)
    if device.type != "cuda":
        return 0
    from .estimate_memory import fewest_checkpointed_blocks

    budget = device_budget(device, pipe.transformer)
    count = fewest_checkpointed_blocks(family, pipe.transformer, resolved, config, budget_bytes=budget)
    logger.info("--checkpoint_blocks auto: checkpointing %d of %d blocks to fit %.1f GiB", count, total,
                budget / 2**30)
    return count
