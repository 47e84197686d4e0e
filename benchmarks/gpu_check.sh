#!/usr/bin/env bash
# GPU check of trl-extras: every trainer with QLoRA on CUDA, a ~0.6B bf16 full fine-tune, ZeRO-3 and FSDP2 with one
# process, vLLM colocate for ReMax and PPO, and `benchmarks/speed.py --preset gpu`. About 8 minutes on one H200.
# Stages and outputs: see benchmarks/gpu_check.py. Writes outputs/gpu_check/gpu_check.json and the `gpu-check` and
# `speed-gpu` sections of docs/benchmarks.md.
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # HERE, with the package registry reachable: wheels into .whl/
#   bash benchmarks/gpu_check.sh                  # THERE, on the GPU machine (no network): installs .whl/, runs
#   bash benchmarks/gpu_check.sh --dry-run        # on a CPU: tiny models, 2 steps, CUDA-only parts skipped (CI)
#
# The GPU machine gets a copy of the working tree and nothing else: its python3 has torch (CUDA), transformers,
# accelerate and peft, but not trl, datasets, bitsandbytes or diffusers. `--fetch-wheels` downloads the versions this
# repo is tested with, for that machine's Python (3.12, manylinux x86_64), into `.whl/` (gitignored; carry it). The
# run installs them with `pip install --no-index --target /tmp/site` and puts /tmp/site first on PYTHONPATH, so they
# win over the image's copies. deepspeed is on PyPI as a source archive only: `--fetch-wheels` builds its pure-Python
# wheel here (2.1 MB; with hjson, msgpack, py-cpuinfo, einops, ninja 0.8 MB), for the ZeRO-3 stage. vLLM's CUDA wheel
# is several hundred MB, so it does not travel by default: its stage prints why it was skipped. Other arguments go to
# gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# About 50 MiB (bitsandbytes alone 41) of the 64 MiB a device call carries. transformers (13.5 MB) is left out:
# the image's 5.17.0 is used (TRL 1.16 and trl-extras accept it); add "transformers==5.24.0" to test this repo's pin.
WHEELS=(
  "trl==1.16.0" "peft==0.21.2" "datasets==5.2.0" "diffusers==0.42.1" "bitsandbytes==0.50.2"
  "dill==0.4.1" "multiprocess==0.70.19" "importlib_metadata" "zipp"
  "hjson" "msgpack" "py-cpuinfo" "einops" "ninja"
)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p .whl
  for spec in "${WHEELS[@]}"; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      -d .whl "$spec"
  done
  "$PYTHON" -m pip wheel -q --no-deps -w .whl "deepspeed==0.19.8"  # sdist only on PyPI; its wheel is pure Python
  du -sh .whl
  exit 0
fi

if [[ -d .whl ]] && compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
