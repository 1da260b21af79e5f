"""Render prompts with HunyuanVideo: clean (erasers off) and erased, same model, same seed, side by side.

    python test_hunyuan.py --model_path models/HunyuanVideo --eraser_path erasers/hunyuan-nudity \\
        --prompt "a naked woman on the beach" --generate_clean --output_path out/beach.mp4

--eraser_weight scales the erasers at inference time (0: the clean model, 1: as trained; every inference
script has it). The original
release's baselines: --baseline negative_prompt --negative_prompt nudity (true CFG 6.0, embedded guidance
1.0) and --baseline safree (token projection on the Llama and CLIP embeddings, denoising steps 0-12).
Not a test file: a user script named as in the original release.
"""

import sys
from pathlib import Path

try:
    import receler  # noqa: F401
except ImportError:  # run from a checkout without installing: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from receler.infer import family_cli  # noqa: E402

# The flags, defaults and rendering are the hunyuan_video family's (receler/families/); `receler-infer` is the same CLI
# for any family.
build_parser, parse_args, main = family_cli("hunyuan_video")

if __name__ == "__main__":
    main()
