"""Render prompts with HunyuanVideo: clean (erasers off) and erased, same model, same seed, side by side.

    python test_hunyuan.py --model_path models/HunyuanVideo --eraser_path erasers/hunyuan-nudity \\
        --prompt "a naked woman on the beach" --generate_clean --output_path out/beach.mp4

--eraser_weight scales the erasers at inference time (0: the clean model, 1: as trained; every inference
script has it). The original
release's baselines: --baseline negative_prompt --negative_prompt nudity (true CFG 6.0, embedded guidance
1.0) and --baseline safree (token projection on the Llama and CLIP embeddings, denoising steps 0-12).
Not a test file: a user script named as in the original release.
"""

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

logger = logging.getLogger("receler.test_hunyuan")

EMBEDDED_GUIDANCE = 6.0  # HunyuanVideo's guidance-distilled scale, as the pipeline's default
EMBEDDED_GUIDANCE_WITH_NEGATIVE = 1.0  # with a negative prompt, true CFG does the guiding (original release)
VIDEO_SIZE = (61, 720, 1280)  # frames, height, width

DEFAULTS = {
    "num_inference_steps": 30,
    "guidance_scale": None,
    "guidance_help": f"embedded guidance scale (HunyuanVideo is guidance-distilled: one pass per step). Default: "
    f"{EMBEDDED_GUIDANCE:g}, or {EMBEDDED_GUIDANCE_WITH_NEGATIVE:g} for videos rendered with a negative prompt, where "
    f"true CFG (--true_cfg_scale) guides instead, as the original release",
    "frames_help": f"frames per video, 4k+1 (default: {VIDEO_SIZE[0]})",
    "size_help": "video {what} in pixels, a multiple of 16 (default: %d high, %d wide)" % VIDEO_SIZE[1:],
    "fps": 15,
}

EPILOG = """\
defaults follow the original release: 30 steps, embedded guidance 6.0, 720x1280, 15 fps, VAE tiling, a CPU
generator seeded with --seed for every video. Outputs as test_cogvideo.py: <prefix>_clean.mp4,
<prefix>_erased.mp4, <prefix>_negprompt.mp4 / _safree.mp4, <prefix>_compare.mp4, <prefix>_grid.png, prompts.json.
"""


def build_parser():
    p = inference.build_parser(
        "Render prompts with HunyuanVideo and an eraser: the same seed renders the clean video (erasers off) and "
        "the erased one on one loaded model, side by side; optionally with a negative-prompt or SAFREE baseline.",
        DEFAULTS,
        EPILOG,
    )
    g = p.add_argument_group("HunyuanVideo")
    g.add_argument("--true_cfg_scale", type=float, default=6.0,
                   help="true classifier-free guidance scale, used for videos rendered with a negative prompt "
                   "(a second transformer pass per step) (default: 6.0)")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    inference.finish_args(args)
    return args


def render_kwargs_for(args):
    def render_kwargs(negative_prompt):
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

    return render_kwargs


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    family = get_family("hunyuan_video")
    jobs, folder, resumable, done = inference.plan_run(args, family)
    if done is not None:
        return done

    def setup(pipe):
        inference.video_size(family, pipe, args, defaults=VIDEO_SIZE)
        inference.setup_vae(pipe, args)
        logger.info("%d frames at %dx%d, %d steps", args.num_frames, args.height, args.width, args.num_inference_steps)

    return inference.render_run(
        args, family, jobs, folder, resumable, setup, render_kwargs_for(args),
        call_kwargs=lambda pipe: {"num_frames": args.num_frames},
    )


if __name__ == "__main__":
    main()
