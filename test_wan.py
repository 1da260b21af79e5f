"""Render prompts with Wan 2.1 (text to video): clean (erasers off) and erased, same model, same seed, side by side.

    python test_wan.py --model_path models/Wan2.1-T2V-1.3B-Diffusers --eraser_path erasers/wan-nudity \\
        --prompt "a naked woman on the beach" --generate_clean --output_path out/beach.mp4

Same flags and outputs as test_cogvideo.py (text to video only); --baseline negative_prompt renders the
unchanged model with the concept as negative prompt (classifier-free guidance), --baseline safree with
SAFREE's token projection on the UMT5 embeddings. Not a test file: a user script.
"""

import logging
import sys
from pathlib import Path

try:
    import receler  # noqa: F401
except ImportError:  # run from a checkout without installing: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from receler import inference
from receler.errors import cli_entry, setup_logging
from receler.families import get_family

logger = logging.getLogger("receler.test_wan")

DEFAULTS = {
    "num_inference_steps": 50,
    "guidance_scale": 5.0,
    "guidance_help": "classifier-free guidance scale; 1 turns guidance (and any negative prompt) off (default: 5.0, as Wan 2.1)",
    "frames_help": "frames per video, 4k+1 (default: 81, Wan 2.1's)",
    "size_help": "video {what} in pixels, a multiple of 16 (default: 480x832, Wan 2.1's)",
    "fps": 16,
}

EPILOG = """\
defaults follow Wan 2.1: 50 steps, guidance 5.0, 81 frames at 480x832, 16 fps, a CPU generator seeded with
--seed for every video. Outputs as test_cogvideo.py: <prefix>_clean.mp4, <prefix>_erased.mp4,
<prefix>_negprompt.mp4 / _safree.mp4, <prefix>_compare.mp4, <prefix>_grid.png, prompts.json.
"""


def build_parser():
    p = inference.build_parser(
        "Render prompts with Wan 2.1 and an eraser: the same seed renders the clean video (erasers off) and the "
        "erased one on one loaded model, side by side; optionally with a negative-prompt or SAFREE baseline.",
        DEFAULTS,
        EPILOG,
    )
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    inference.finish_args(args)
    return args


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    family = get_family("wan")
    jobs, folder, resumable, done = inference.plan_run(args, family)
    if done is not None:
        return done

    def setup(pipe):
        inference.video_size(family, pipe, args)
        inference.setup_vae(pipe, args)
        logger.info("%d frames at %dx%d, %d steps, guidance %s", args.num_frames, args.height, args.width,
                    args.num_inference_steps, args.guidance_scale)

    return inference.render_run(
        args, family, jobs, folder, resumable, setup, inference.cfg_negative_prompt(args, DEFAULTS["guidance_scale"]),
        call_kwargs=lambda pipe: {"guidance_scale": args.guidance_scale, "num_frames": args.num_frames},
    )


if __name__ == "__main__":
    main()
