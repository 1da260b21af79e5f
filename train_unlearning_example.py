"""Train an eraser from Python in a few lines (the seed toolkit's ``train_unlearning_example.py``).

    python train_unlearning_example.py --model_path models/world-cogvideox --target_concept red \\
        --output_dir outputs/example_eraser

builds a :class:`receler.config.TrainConfig` in code and calls :func:`receler.training.train`: the training
of receler/train_unlearning_prompt_only.py (unlearning, localization and, with preserve prompts,
preservation), on a small budget. The loss functions and localization pieces the seed's example used are
importable from here under the seed's names; they are the project's own (:mod:`receler.losses`,
:mod:`receler.localization`). Not a test file: an example script.
"""

import argparse
import sys
from pathlib import Path

try:
    import receler  # noqa: F401
except ImportError:  # run from a checkout without installing: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from receler.concept_reg_cogvideo import AttnMapsCapture, EraserOutputsCapture, get_mask  # noqa: E402,F401
from receler.config import TrainConfig  # noqa: E402
from receler.errors import cli_entry, setup_logging  # noqa: E402
from receler.unlearning_losses import (  # noqa: E402,F401
    ConceptPreservationLoss,
    MaskLocalizationLoss,
    NegativelyGuidedVelocityLoss,
    T2VUnlearningLoss,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train an eraser with the library API on a small budget (an example).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_path", required=True, help="local diffusers pipeline folder (nothing is downloaded)")
    p.add_argument("--target_concept", "--concept", dest="target_concept", required=True, help="the concept to erase")
    p.add_argument("--prompts_file", default=None, help="training prompts (.txt or .csv); default: the concept itself")
    p.add_argument("--output_dir", required=True, help="the eraser folder to write")
    p.add_argument("--max_steps", type=int, default=20, help="updates to train")
    p.add_argument("--num_inference_steps", type=int, default=10, help="denoising steps of each training trajectory")
    p.add_argument("--eraser_rank", type=int, default=16, help="bottleneck width of each eraser")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW learning rate")
    return p.parse_args(argv)


@cli_entry
def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging()
    from receler.training import train

    config = TrainConfig(model_path=args.model_path, target_concept=args.target_concept,
                         prompts_file=args.prompts_file, output_dir=args.output_dir, max_steps=args.max_steps,
                         num_epochs=10**6, num_inference_steps=args.num_inference_steps,
                         eraser_rank=args.eraser_rank, learning_rate=args.learning_rate)
    result = train(config)
    print(f"{result.updates} updates ({result.stopped}); eraser written to {result.output_dir} "
          f"(model card: {result.output_dir / 'README.md'})")
    return result.summary


if __name__ == "__main__":
    main()
