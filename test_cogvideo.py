"""Render prompts with a CogVideoX model: clean (erasers off) and erased, same model, same seed, side by side.

    python test_cogvideo.py --model_path models/CogVideoX-5b --eraser_path erasers/cogvideox5b-nudity \\
        --prompt "a naked woman on the beach" --generate_clean --output_path out/beach.mp4

writes out/beach_clean.mp4, out/beach_erased.mp4, out/beach_compare.mp4 and out/beach_grid.png.
With --prompt_file prompts.csv --output_path out/ every row i becomes out/{i:03d}_{slug}_*.mp4, and
re-running skips the rows already rendered. --baseline negative_prompt|safree renders a training-free
baseline on the unchanged model next to them. Not a test file: a user script named as in the original release.
"""

import sys
from pathlib import Path

try:
    import receler  # noqa: F401
except ImportError:  # run from a checkout without installing: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from receler.infer import family_cli  # noqa: E402

# The flags, defaults and rendering are the cogvideox family's (receler/families/); `receler-infer` is the same CLI
# for any family.
build_parser, parse_args, main = family_cli("cogvideox")

if __name__ == "__main__":
    main()
