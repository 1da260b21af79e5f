"""Train an eraser that removes a concept from a text-to-video model, from prompts alone.

    python receler/train_unlearning_prompt_only.py --model_path models/world-cogvideox \\
        --target_concept red --prompts_file prompts.csv --output_dir runs/erase_red

The output folder is the eraser (``eraser_config.json`` + weights), loadable by ``test_cogvideo.py``;
it also holds ``args.json``, ``train_log.jsonl``, ``loss.png`` and ``checkpoints/step_N/``.
"""

import argparse
import gc
import logging
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from receler.errors import UserError, cli_entry, setup_logging
from receler.families import FAMILY_NAMES, resolve_family
from receler.io_utils import atomic_write_json
from receler.prompts import load_prompts
from receler.distributed import Distributed
from receler.trainer import EraserTrainer, encode_prompt_set, run_training

logger = logging.getLogger("receler.train")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _block_count(value: str):
    if value == "auto":
        return value
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of blocks, got {value!r}")
    return int(value)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train an eraser (a small adapter in every transformer block) that erases a concept from a "
        "text-to-video diffusion model, from prompts alone (T2VUnlearning). Only the eraser weights train; the "
        "backbone stays bit-identical.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument("--model_path", required=True, help="local diffusers pipeline folder (nothing is downloaded)")
    g.add_argument("--model_family", default="auto", choices=("auto",) + FAMILY_NAMES,
                   help="model family; auto reads the pipeline class from model_index.json")
    g.add_argument("--scheduler", choices=("ddim", "dpm"), default=None,
                   help="CogVideoX: override the folder's scheduler (DDIM as 2b ships, DPM as 5b renders)")
    g.add_argument("--dtype", choices=("auto",) + tuple(DTYPES), default="auto",
                   help="backbone dtype; erasers and their optimizer state are always float32. "
                   "auto = bfloat16 on a GPU, float32 on a CPU")
    g.add_argument("--use_fp16", action="store_true", help="alias for --dtype float16")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--use_cpu_offload", "--cpu_offload", dest="use_cpu_offload", action="store_true",
                   help="last resort for small GPUs: encode prompts on the CPU and keep the text encoder off the GPU")
    g.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute every block's activations in backward: much less memory, ~25%% slower updates")
    g.add_argument("--checkpoint_blocks", default="auto", type=_block_count,
                   help="checkpoint only the first N blocks (fewer = faster, more memory); 'auto' picks the fewest "
                   "that fit the GPU's free memory by the memory estimator (none on a CPU)")
    g.add_argument("--fp8_weights", action="store_true",
                   help="store the frozen backbone's weights in float8 and compute in the --dtype (layerwise "
                   "casting): ~half the weight memory of bfloat16, erasers stay float32")
    g.add_argument("--offload_activations", action="store_true",
                   help="keep the inputs of checkpointed blocks in CPU memory instead of GPU memory: the largest "
                   "activation term left under checkpointing, for a few %% more time per update")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile each transformer block (faster updates after a compilation warm-up)")

    g = p.add_argument_group("concept and prompts")
    g.add_argument("--target_concept", required=True,
                   help="the concept to erase, as it is written in the prompts (e.g. 'nudity', 'red'); its tokens "
                   "locate the concept for the localization loss")
    g.add_argument("--concept_words", default=None,
                   help="comma-separated words whose tokens mark the concept for localization when the prompts "
                   "use synonyms (e.g. 'naked,nude,nudity,topless'); default: the target concept")
    g.add_argument("--prompts_file", default=None,
                   help="training prompts: .txt (one per line) or .csv with a 'prompt' column and optionally "
                   "'preserve_prompt' (Ring-A-Bell's 'normal prompt' works too). Default: the concept itself")
    g.add_argument("--auto_generate_preserved", action="store_true",
                   help="choose concepts to preserve offline with the model's own text encoder (related to the "
                   "target but not it; see receler/auto_generate_preserved_concepts.py); written to "
                   "<output_dir>/preserved_concepts.txt")
    g.add_argument("--num_preserved_concepts", type=int, default=15, help="how many concepts --auto_generate_preserved picks")
    g.add_argument("--preserved_concepts_file", default=None,
                   help="concepts to preserve, one per line; rows without a preserve prompt get one by putting a "
                   "preserved concept in place of the target concept (or the preserved concept alone)")

    g = p.add_argument_group("video and trajectory")
    g.add_argument("--num_frames", type=int, default=None, help="frames per training video, 4k+1 (default: the model's)")
    g.add_argument("--height", type=int, default=None, help="video height in pixels (default: the model's)")
    g.add_argument("--width", type=int, default=None, help="video width in pixels (default: the model's)")
    g.add_argument("--num_inference_steps", type=int, default=50, help="denoising steps of each training trajectory")
    g.add_argument("--train_timesteps", default="all",
                   help="train at every step of a trajectory ('all') or at K steps sampled per trajectory")
    g.add_argument("--trajectory", choices=("erased", "frozen"), default="erased",
                   help="which model's prediction advances the latents: the one being trained (ESD/Receler) or the frozen one")

    g = p.add_argument_group("loss")
    g.add_argument("--eta", type=float, default=7.0, help="negative guidance strength in v_neg = o_0 - eta (o_c - o_0)")
    g.add_argument("--alpha", type=float, default=1.0, help="weight of the localization loss (0 turns it off)")
    g.add_argument("--beta", type=float, default=None,
                   help="weight of the preservation loss; default 1.0 when preserve prompts exist, else 0")
    g.add_argument("--loss_target", choices=("ff", "ff_all", "velocity"), default=None,
                   help="what the losses compare: the final block's feed-forward output on video rows (ff), on all "
                   "rows (ff_all), or the transformer's prediction (velocity). Default: the family's (ff for CogVideoX)")
    g.add_argument("--mask_threshold", type=float, default=0.1,
                   help="threshold on the per-frame min-max normalised concept attention for the localization mask")
    g.add_argument("--mask_chunk_size", type=int, default=None,
                   help="video queries per chunk when reading concept attention (default: sized to ~256 MB)")

    g = p.add_argument_group("adversarial training (resisting learned-prompt attacks)")
    g.add_argument("--adversarial", action="store_true",
                   help="at every update, refresh a learned soft prompt that attacks the current eraser, and train the "
                   "eraser on the attacked concept prompt as well as the plain one")
    g.add_argument("--adv_num_tokens", type=int, default=4, help="learned soft tokens appended after each prompt")
    g.add_argument("--adv_steps", type=int, default=2, help="attack steps that refresh the soft prompt at every update")
    g.add_argument("--adv_lr", type=float, default=1e-2, help="Adam learning rate of the soft prompt")
    g.add_argument("--adv_weight", type=float, default=0.3,
                   help="weight of the unlearning loss on the attacked prompt (0.3 keeps preservation on the world "
                        "benchmark; 1.0 costs half the other colours' accuracy)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--eraser_rank", type=int, default=128, help="bottleneck width of each eraser")
    g.add_argument("--learning_rate", type=float, default=1e-4, help="AdamW learning rate")
    g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm")
    g.add_argument("--batch_size", type=int, default=1, help="prompts per forward batch (one update = one timestep of one batch)")
    g.add_argument("--num_epochs", type=int, default=1, help="epochs; an epoch is one trajectory per prompt")
    g.add_argument("--max_steps", type=int, default=None, help="stop after this many updates (before --num_epochs ends)")
    g.add_argument("--seed", type=int, default=42, help="seed for prompt order, latents and sampled timesteps (CPU generators)")

    g = p.add_argument_group("output")
    g.add_argument("--output_dir", required=True, help="the eraser folder; also holds args.json, train_log.jsonl, loss.png, checkpoints/")
    g.add_argument("--save_every", type=int, default=100, help="write checkpoints/step_N every N updates (0: only at the end)")
    g.add_argument("--resume_from", default=None, help="a checkpoints/step_N folder to continue from")
    g.add_argument("--log_every", type=int, default=10, help="log a line every N updates")
    g.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if args.use_fp16:
        args.dtype = "float16"
    return args


def check_args(args) -> None:
    """Cheap checks before anything heavy loads."""
    for name in ("batch_size", "num_epochs", "num_inference_steps", "eraser_rank"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max_steps must be at least 1 (got {args.max_steps})")
    if args.train_timesteps != "all":
        try:
            if int(args.train_timesteps) < 1:
                raise ValueError
        except ValueError:
            raise UserError(f"--train_timesteps must be 'all' or a positive integer (got {args.train_timesteps!r})") from None
    if not args.target_concept.strip():
        raise UserError("--target_concept is empty; name the concept to erase as it appears in the prompts")


def read_preserved_concepts(path) -> list:
    if path is None:
        return []
    path = Path(path)
    if not path.exists():
        raise UserError(f"--preserved_concepts_file {path} does not exist")
    concepts = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    concepts = [c for c in concepts if c and not c.startswith("#")]
    if not concepts:
        raise UserError(f"--preserved_concepts_file {path} lists no concepts (one per line expected)")
    return concepts


def build_preserve_prompts(prompts, given, concept, preserved) -> list | None:
    """A preserve prompt per training prompt: the file's own, else the prompt with a preserved concept in
    place of the target concept (or the preserved concept alone). None when there is nothing to preserve."""
    if all(p is None for p in given) and not preserved:
        return None
    out = []
    for i, (prompt, pre) in enumerate(zip(prompts, given)):
        if pre:
            out.append(pre)
        elif preserved:
            substitute = preserved[i % len(preserved)]
            pattern = re.compile(re.escape(concept), re.IGNORECASE)
            out.append(pattern.sub(substitute, prompt) if pattern.search(prompt) else substitute)
        else:
            raise UserError(
                f"prompt {i + 1} ({prompt!r}) has no preserve prompt while others do; give every row a "
                f"preserve_prompt, or pass --preserved_concepts_file to fill the gaps, or --beta 0."
            )
    return out


def read_training_prompts(args) -> tuple:
    """``(prompts, preserve prompts given by the file or None per row)``."""
    if args.prompts_file is None:
        logger.info("no --prompts_file: training on the concept itself (%r)", args.target_concept)
        return [args.target_concept], [None]
    table = load_prompts(args.prompts_file)
    return [r.prompt for r in table.rows], [r.preserve_prompt for r in table.rows]


def choose_preserve_prompts(args, prompts, given, preserved) -> list | None:
    """Preserve prompts for training (None when preservation is off), settling ``--beta``'s default."""
    preserve = build_preserve_prompts(prompts, given, args.target_concept, preserved)
    if args.beta is None:
        args.beta = 1.0 if preserve else 0.0
    if args.beta > 0 and preserve is None:
        raise UserError("--beta > 0 needs preserve prompts: a 'preserve_prompt' column, --preserved_concepts_file "
                        "or --auto_generate_preserved")
    return preserve if args.beta > 0 else None


def auto_preserved_concepts(args, family, pipe, device, output_dir, is_main) -> list:
    """``--auto_generate_preserved``: pick concepts near the target with the model's own text encoder."""
    from receler.preserved_concepts import generate_preserved_concepts, write_preserved_concepts

    result = generate_preserved_concepts(args.target_concept, args.num_preserved_concepts, pipe=pipe, family=family,
                                         device=device)
    if is_main:
        write_preserved_concepts(result, Path(output_dir) / "preserved_concepts.txt")
    logger.info("preserving %d concepts chosen by the text encoder: %s", len(result.names), ", ".join(result.names))
    return result.names


def resolve_dtype(args, device):
    name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    args.dtype = name
    return DTYPES[name]


def concept_words(args) -> list:
    words = args.concept_words.split(",") if args.concept_words else [args.target_concept]
    return [w.strip() for w in words if w.strip()]


def prepare_pipeline(family, args, device, dtype, prompts, given, output_dir, is_main):
    """Load the transformer and text encoder, choose the preserve prompts, encode every prompt once, then
    release the text encoder."""
    pipe = family.load_pipeline(args.model_path, dtype=dtype, with_vae=False)
    if args.scheduler:
        family.set_scheduler(pipe, args.scheduler)
    encode_device = torch.device("cpu") if args.use_cpu_offload else device
    for name in family.text_encoder_names():
        getattr(pipe, name).to(encode_device)
    preserved = read_preserved_concepts(args.preserved_concepts_file)
    if args.auto_generate_preserved and not preserved:
        preserved = auto_preserved_concepts(args, family, pipe, encode_device, output_dir, is_main)
    preserve = choose_preserve_prompts(args, prompts, given, preserved)
    data = encode_prompt_set(family, pipe, prompts, preserve, concept_words(args), encode_device,
                             soft_tokens=args.adv_num_tokens if args.adversarial else 0)
    for name in family.text_encoder_names():
        setattr(pipe, name, None)  # training never needs the text encoder again
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    pipe.transformer.to(device)
    return pipe, data


def default_video_size(family, pipe, args):
    frames, height, width = family.default_video_size(pipe)
    args.num_frames = args.num_frames or frames
    args.height = args.height or height
    args.width = args.width or width
    family.check_frames(args.num_frames)
    family.check_size(args.height, args.width)


def choose_checkpoint_blocks(family, pipe, args, device) -> None:
    """Resolve ``--checkpoint_blocks auto``: none on a CPU; on a GPU the fewest that fit its free memory."""
    if args.gradient_checkpointing or args.checkpoint_blocks != "auto":
        return
    if device.type != "cuda":
        args.checkpoint_blocks = 0
        return
    from receler.estimate_memory import fewest_checkpointed_blocks

    free, _ = torch.cuda.mem_get_info(device)
    args.checkpoint_blocks = fewest_checkpointed_blocks(family, pipe.transformer, args, budget_bytes=0.9 * free)
    logger.info("--checkpoint_blocks auto: checkpointing %d of %d blocks to fit %.1f GiB free",
                args.checkpoint_blocks, len(family.block_modules(pipe.transformer)), free / 2**30)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    check_args(args)
    family = resolve_family(args.model_family, args.model_path)
    if args.num_frames is not None:
        family.check_frames(args.num_frames)
    prompts, given = read_training_prompts(args)
    if not args.auto_generate_preserved:  # check the prompt files now, before any model loads
        choose_preserve_prompts(args, prompts, given, read_preserved_concepts(args.preserved_concepts_file))
    dist = Distributed(args.device)
    device = dist.device
    dtype = resolve_dtype(args, device)
    logger.info("%s model, %d prompts, device %s, %s backbone%s", family.display_name, len(prompts), device,
                args.dtype, f", process {dist.rank + 1} of {dist.world_size}" if dist.enabled else "")
    output_dir = Path(args.output_dir)
    if dist.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)

    pipe, data = prepare_pipeline(family, args, device, dtype, prompts, given, output_dir, dist.is_main)
    default_video_size(family, pipe, args)
    choose_checkpoint_blocks(family, pipe, args, device)
    if dist.is_main:
        atomic_write_json(output_dir / "args.json", {**vars(args), "model_family": family.name,
                                                     "world_size": dist.world_size})
    dist.barrier()

    trainer = EraserTrainer(family, pipe, args, device, dist)
    summary = run_training(trainer, data, output_dir, args.num_frames, args.height, args.width)
    return summary


if __name__ == "__main__":
    main()
