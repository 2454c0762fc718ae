#!/usr/bin/env bash
# One lent GPU session (about 15 minutes of device time, one command of at most 10): the `cub` recipe (64 px,
# `small` U-Net, bf16, channels-last) trained on real CUB birds for CUB_MINUTES of wall-clock time (`synthaug train
# --minutes`), `synthaug generate` of PER_CLASS samples per species into shards, then gpu_check.py on every GPU
# recipe in the time left of TOTAL_S (the real-data run first: a machine that starts late shortens the check). What comes back in OUT: gpu_check.json, session.log, cub_run.tgz
# (recipe.toml, run.json, log.jsonl, condition.json, the sample grids) and the shard set (synth-*.tar,
# cub_synth_meta.tgz). FID/KID with floors, the judge and the grids are computed afterwards on the CPU
# (benchmarks/README.md, "GPU session"), where the real test images and the FID weights are.
#
# The real data travels as .gpu/cub100_64 (the 64 MiB limit of the device's working tree): ../shared/data/cub100
# in its CUB layout with every image replaced by synthaug's own 64 px crop of it (decode_image, as `cub:` reads it),
# saved as lossless PNG, so `cub:.gpu/cub100_64` at resolution 64 gives the same pixels as `cub:../shared/data/cub100`.
# Missing Python packages travel as wheels in .whl (diffusers, webdataset, braceexpand, torch-fidelity,
# importlib_metadata); benchmarks/README.md lists the commands that make both folders.
#
# Usage, on the device from the repository root:  bash benchmarks/gpu_session.sh OUT [CUB_MINUTES] [TOTAL_S]
# A dry run on a CPU (seconds; what the tests run): GPU_SESSION_DRY=1 bash benchmarks/gpu_session.sh /tmp/out
set -u
out=${1:?usage: gpu_session.sh OUT [CUB_MINUTES] [TOTAL_S]}
minutes=${2:-3}
total=${3:-570}  # seconds for the whole script; gpu_check.py gets what the cub run leaves
per_class=${PER_CLASS:-20}
data=${CUB_DATA:-.gpu/cub100_64}
mkdir -p "$out"
exec > >(tee -a "$out/session.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SYNTHAUG_CACHE=${SYNTHAUG_CACHE:-/tmp/synthaug-session-cache}
work=$(mktemp -d /tmp/synthaug-session-XXXX)
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
stamp "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), python $(python3 -V 2>&1)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch, diffusers, timm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'timm', timm.__version__)"

train_sets=(--set "data.spec=cub:$data")
gen_sets=()
check=(python3 benchmarks/gpu_check.py --out "$out/gpu_check.json")
if [ -n "${GPU_SESSION_DRY:-}" ]; then  # toy sizes on a CPU
  check=(python3 benchmarks/gpu_check.py --dry --recipes cub --out "$out/gpu_check.json")
  train_sets+=(--set generator.preset=tiny --set generator.base_channels=8 --set generator.batch_size=8
               --set data.resolution=8 --set generator.log_every_kimg=0.008 --set generator.grid_every_kimg=0.016
               --set sampling.steps=2 --set sampling.network_batch=8)
fi

# 1. the cub recipe on real birds for a fixed number of minutes
stamp "train cub for $minutes min"
python3 -m synthaug train recipes/cub.toml "${train_sets[@]}" --minutes "$minutes" --out "$work/cub-run"
stamp "train exit $?"
tar czf "$out/cub_run.tgz" -C "$work" cub-run/recipe.toml cub-run/run.json cub-run/log.jsonl cub-run/condition.json cub-run/grids

# 2. samples of every species, as shards with provenance
stamp "generate $per_class per species"
python3 -m synthaug generate --run "$work/cub-run" --all-classes --per-class "$per_class" --shard-size 1000 \
  --out "$work/cub-synth"
stamp "generate exit $?"
cp "$work"/cub-synth/synth-*.tar "$out/" 2>/dev/null
tar czf "$out/cub_synth_meta.tgz" -C "$work" cub-synth/manifest.json cub-synth/generation.json 2>/dev/null

# 3. every GPU recipe, briefly (each in a child process with its share), in the time that is left
left=$(( total - SECONDS - 25 ))
stamp "gpu_check.py, limit $left s"
if [ "$left" -ge 60 ]; then
  timeout --kill-after=10 $(( left + 15 )) "${check[@]}" --limit-s "$left"
  stamp "gpu_check.py exit $?"
fi
ls -la "$out"
stamp done
