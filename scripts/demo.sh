#!/usr/bin/env bash
# The main job: set up (idempotent), then validate every spec and print the layer table of the default specs.
# (Grows with the line: train → export → store → serve, see README.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/specserve validate specs/*.yaml
for spec in specs/lenet.yaml specs/resnet18.yaml; do .venv/bin/specserve summary "$spec"; echo; done
