"""Render prompts with LTX-Video (text to video): clean (erasers off) and erased, same model, same seed, side by side.

    python test_ltx.py --model_path models/LTX-Video --eraser_path erasers/ltx-nudity \\
        --prompt "a naked woman on the beach" --generate_clean --output_path out/beach.mp4

Same flags and outputs as test_wan.py (text to video, a negative-prompt baseline through classifier-free
guidance). Not a test file: a user script.
"""

import sys
from pathlib import Path

try:
    import receler  # noqa: F401
except ImportError:  # run from a checkout without installing: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from receler.infer import family_cli  # noqa: E402

# The flags, defaults and rendering are the ltx_video family's (receler/families/); `receler-infer` is the same CLI
# for any family.
build_parser, parse_args, main = family_cli("ltx_video")

if __name__ == "__main__":
    main()
