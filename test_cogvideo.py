"""Render prompts with a CogVideoX model: clean (erasers off) and erased, same model, same seed, side by side.

    python test_cogvideo.py --model_path models/CogVideoX-5b --eraser_path erasers/cogvideox5b-nudity \\
        --prompt "a naked woman on the beach" --generate_clean --output_path out/beach.mp4

writes out/beach_clean.mp4, out/beach_erased.mp4, out/beach_compare.mp4 and out/beach_grid.png.
With --prompt_file prompts.csv --output_path out/ every row i becomes out/{i:03d}_{slug}_*.mp4, and
re-running skips the rows already rendered. --baseline negative_prompt|safree renders a training-free
baseline on the unchanged model next to them. Not a test file: a user script named as in the original release.
"""

import argparse
import logging
import sys
from pathlib import Path

try:
    import receler  # noqa: F401
except ImportError:  # run from a checkout without installing: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from receler import inference
from receler.errors import UserError, cli_entry, setup_logging
from receler.families import get_family

logger = logging.getLogger("receler.test_cogvideo")

DEFAULTS = {
    "num_inference_steps": 50,
    "guidance_scale": 6.0,
    "guidance_help": "classifier-free guidance scale; 1 turns guidance (and any negative prompt) off (default: 6.0)",
    "frames_help": "frames per video, 4k+1 (default: the model's own, 49 for CogVideoX-2b/5b; v2v: the input video's, up to that)",
    "size_help": "video {what} in pixels, a multiple of 16 (default: the model's own, 480x720 for CogVideoX-2b/5b)",
    "fps": 8,
}

EPILOG = """\
defaults follow the original release: 50 steps, guidance 6.0 with dynamic CFG, 8 fps, DDIM for 2b and the
DPM solver for 5b (--scheduler auto), a CPU generator seeded with --seed for every video.
outputs per prompt: <prefix>_clean.mp4 (with --generate_clean), <prefix>_erased.mp4 (with --eraser_path),
<prefix>_negprompt.mp4 / <prefix>_safree.mp4 (with --baseline), <prefix>_compare.mp4 (clean | erased or
baseline, whenever the clean video exists), <prefix>_grid.png, and prompts.json next to them.
"""


def build_parser():
    p = inference.build_parser(
        "Render prompts with a CogVideoX model and an eraser: the same seed renders the clean video (erasers "
        "off) and the erased one on one loaded model, side by side; optionally with a negative-prompt or SAFREE baseline.",
        DEFAULTS,
        EPILOG,
    )
    g = p.add_argument_group("CogVideoX")
    g.add_argument("--generate_type", choices=("t2v", "i2v", "v2v"), default="t2v",
                   help="t2v: text to video; i2v: image to video (needs an image-to-video model such as CogVideoX-5b-I2V "
                   "and --image_or_video_path IMAGE); v2v: video to video (--image_or_video_path VIDEO) (default: t2v)")
    g.add_argument("--image_or_video_path", default=None, help="the input image (i2v) or video (v2v)")
    g.add_argument("--strength", type=float, default=0.8,
                   help="v2v: how much of the input video is re-noised (0: kept, 1: ignored) (default: 0.8)")
    g.add_argument("--scheduler", choices=("auto", "ddim", "dpm"), default="auto",
                   help="auto: the DPM solver for models with rotary position embeddings (5b, as the original release), "
                   "DDIM otherwise (2b) (default: auto)")
    g.add_argument("--use_dynamic_cfg", action=argparse.BooleanOptionalAction, default=True,
                   help="CogVideoX's dynamic guidance schedule (--no-use_dynamic_cfg for a constant scale) (default: on)")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    inference.finish_args(args)
    return args


def read_input(args):
    """The i2v image (PIL) or the v2v frames (list of PIL), read before the model loads."""
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
    from receler.media import read_video

    if not 0.0 < args.strength <= 1.0:
        raise UserError(f"--strength must be in (0, 1], got {args.strength}")
    return [Image.fromarray(frame) for frame in read_video(path)]


def input_video_frames(args, frames: list, model_frames: int) -> list:
    """v2v: the first --num_frames frames of the input (default: as many as the model's length allows)."""
    if args.num_frames is None:
        usable = len(frames) - (len(frames) - 1) % 4
        args.num_frames = min(model_frames, usable)
        if args.num_frames != len(frames):
            logger.info("v2v: using the first %d of the input's %d frames (4k+1, at most the model's %d)",
                        args.num_frames, len(frames), model_frames)
    if args.num_frames > len(frames):
        raise UserError(f"--num_frames {args.num_frames} is more than the {len(frames)} frames of {args.image_or_video_path}")
    return frames[: args.num_frames]


def pipeline_class(generate_type):
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline, CogVideoXVideoToVideoPipeline

    return {"t2v": CogVideoXPipeline, "i2v": CogVideoXImageToVideoPipeline, "v2v": CogVideoXVideoToVideoPipeline}[generate_type]


def check_model_kind(args) -> None:
    """Image-to-video transformers take the image latents as extra input channels (2x the VAE's); read from
    the folder's configs, before the model loads."""
    in_channels = inference.read_component_config(args.model_path, "transformer").get("in_channels")
    latent_channels = inference.read_component_config(args.model_path, "vae").get("latent_channels")
    if in_channels is None or latent_channels is None:
        return  # let the pipeline load tell what is missing
    is_i2v = in_channels == 2 * latent_channels
    if args.generate_type == "i2v" and not is_i2v:
        raise UserError(
            f"--generate_type i2v needs an image-to-video model (e.g. CogVideoX-5b-I2V), whose transformer takes "
            f"2 x {latent_channels} latent channels; {args.model_path} is a text-to-video model ({in_channels} input "
            f"channels). Use --generate_type t2v or v2v with it, or pass an I2V model folder."
        )
    if args.generate_type != "i2v" and is_i2v:
        raise UserError(
            f"{args.model_path} is an image-to-video model ({in_channels} input channels); render it with "
            f"--generate_type i2v --image_or_video_path IMAGE."
        )


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    family = get_family("cogvideox")
    jobs, folder, resumable, done = inference.plan_run(args, family)
    if done is not None:
        return done
    check_model_kind(args)
    conditioning = read_input(args)

    def setup(pipe):
        kind = args.scheduler
        if kind == "auto":
            kind = "dpm" if pipe.transformer.config.use_rotary_positional_embeddings else "ddim"
        family.set_scheduler(pipe, kind)
        model_frames, _, _ = family.default_video_size(pipe)
        if args.generate_type == "v2v":
            nonlocal conditioning
            conditioning = input_video_frames(args, conditioning, model_frames)
        inference.video_size(family, pipe, args)
        inference.setup_vae(pipe, args)
        logger.info("%s scheduler, %d frames at %dx%d, %d steps, guidance %s%s", kind.upper(), args.num_frames,
                    args.height, args.width, args.num_inference_steps, args.guidance_scale,
                    " (dynamic)" if args.use_dynamic_cfg else "")

    def call_kwargs(pipe):
        kwargs = {"guidance_scale": args.guidance_scale, "use_dynamic_cfg": args.use_dynamic_cfg}
        if args.generate_type == "v2v":
            kwargs.update(video=conditioning, strength=args.strength)
        else:
            kwargs["num_frames"] = args.num_frames
            if args.generate_type == "i2v":
                kwargs["image"] = conditioning
        return kwargs

    return inference.render_run(
        args, family, jobs, folder, resumable, setup, inference.cfg_negative_prompt(args, DEFAULTS["guidance_scale"]),
        call_kwargs=call_kwargs, pipeline_class=pipeline_class(args.generate_type),
    )


if __name__ == "__main__":
    main()
