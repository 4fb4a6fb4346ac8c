#!/usr/bin/env bash
# The GPU checks against a real host's nvidia-smi: parse it, judge the driver against CUDA
# image requirements, and run the install preflight's GPU rows for every shipped manifest
# (facts from manifests/model-facts.json). No Docker, no network; well under 2 minutes.
# Needs python3 with pydantic, PyYAML, requests and cryptography importable (PYTHONPATH is
# kept). Writes $OUT/gpu.md (OUT defaults to /tmp/airgap-gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/airgap-gpu-check}"
mkdir -p "$out"
PYTHONPATH="$PWD/scripts:$PWD${PYTHONPATH:+:$PYTHONPATH}" \
  timeout 110 "${PYTHON:-python3}" scripts/device_gpu_check.py --out "$out/gpu.md"
