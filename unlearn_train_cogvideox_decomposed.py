"""The seed toolkit's training command, as its engineer ran it (``--is_train True`` and the seed's flags).

    python unlearn_train_cogvideox_decomposed.py --is_train True --concept nudity \\
        --prompt_path prompts.csv --model_path models/CogVideoX-2b --eraser_ckpt_path outputs/eraser ...

trains exactly as receler/train_unlearning_prompt_only.py with the same flags (``--concept``,
``--prompt_path``, ``--eraser_ckpt_path``, ``--generate_type`` and ``--num_epoch`` are its aliases). The seed
ran this script without ``--is_train`` to check its hand-written sampler against the pipeline; here that
check is a test (tests/test_sampling.py) and rendering is test_cogvideo.py. Not a test file.
"""

import argparse
import sys
from pathlib import Path

try:
    import receler  # noqa: F401
except ImportError:  # run from a checkout without installing: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from receler.errors import UserError, cli_entry  # noqa: E402


def _truth(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--is_train", type=_truth, default=False)
    known, rest = p.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print("usage: unlearn_train_cogvideox_decomposed.py --is_train True [training flags]\n\n"
              "--is_train True   train an eraser; every other flag is receler/train_unlearning_prompt_only.py's "
              "(see its --help).\n")
    if not known.is_train and not ("-h" in rest or "--help" in rest):
        raise UserError("without --is_train True this script would only check its sampler: that check is "
                        "tests/test_sampling.py here, and test_cogvideo.py renders videos. Pass --is_train True to "
                        "train.")
    from receler.train_unlearning_prompt_only import main as train_main

    return train_main(rest)


if __name__ == "__main__":
    main()
