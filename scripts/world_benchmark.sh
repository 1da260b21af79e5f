#!/usr/bin/env bash
# Erase a colour (default red) from the bundled world model with the project's own trainer, render a
# fixed prompt set clean and erased, and measure target rate, other-colour accuracy and PSNR for the
# full method, the loss ablations, the negative-prompt and SAFREE baselines, and under a learned attack
# (plain vs adversarially trained eraser). Prints the table; writes OUT_DIR/world_benchmark.json.
#
#   bash scripts/world_benchmark.sh OUT_DIR [--quick] [--rows full,negative_prompt] [...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: scripts/world_benchmark.sh OUT_DIR [--quick] [options of python -m receler.world.benchmark]}
shift
${PYTHON:-python} -m receler.world.benchmark "$OUT_DIR" "$@"
