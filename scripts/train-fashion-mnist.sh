#!/usr/bin/env bash
# The main job: set up, build, and train an MLP on Fashion-MNIST in FP16 mixed precision
# (CUDA when a GPU is present, otherwise the CPU). Extra arguments go to `mixtrain train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
exec build/tools/mixtrain/mixtrain train --dataset fashion-mnist --model mlp --precision fp16 \
  --epochs 10 --lr-schedule cosine --seed 1 "$@"
