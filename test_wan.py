"""Render prompts with Wan 2.1 (text to video): clean (erasers off) and erased, same model, same seed, side by side.

    python test_wan.py --model_path models/Wan2.1-T2V-1.3B-Diffusers --eraser_path erasers/wan-nudity \\
        --prompt "a naked woman on the beach" --generate_clean --output_path out/beach.mp4

Same flags and outputs as test_cogvideo.py (text to video only); --baseline negative_prompt renders the
unchanged model with the concept as negative prompt (classifier-free guidance), --baseline safree with
SAFREE's token projection on the UMT5 embeddings. Not a test file: a user script.
"""

import sys
from pathlib import Path

try:
    import receler  # noqa: F401
except ImportError:  # run from a checkout without installing: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from receler.infer import family_cli  # noqa: E402

# The flags, defaults and rendering are the wan family's (receler/families/); `receler-infer` is the same CLI
# for any family.
build_parser, parse_args, main = family_cli("wan")

if __name__ == "__main__":
    main()
