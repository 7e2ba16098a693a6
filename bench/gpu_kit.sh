#!/usr/bin/env bash
# Prepare .gpukit/ (git-ignored) for ONE device call that runs every GPU check of issue 15
# (bench/gpu_check.sh). The lent GPU machine has Python 3.12 with torch, torchaudio, timm, scikit-learn,
# cython, sacrebleu, h5py, tensorboard, but no fairseq, hydra, omegaconf or soundfile, and no network:
# this downloads those as cp312 wheels (the versions of requirements.lock) and copies the official EAT
# code's Python files and configs for the side-by-side run.
#
#   bash bench/gpu_kit.sh /path/to/EAT        # a checkout of github.com/cwx-worst-one/EAT at 06c1c34
#   # then, with the device tool:  run(command="bash bench/gpu_check.sh", carry=[".gpukit"], timeout_s=590)
#
# Without the EAT path the check runs the plugin's figures only. About 25 MB; the device call sends at most
# 64 MiB with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpukit
rm -rf "$KIT"
mkdir -p "$KIT/whl"
pin() { grep -E "^$1==" requirements.lock | head -1; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$KIT/whl" \
    "$(pin ve-fairseq)" "$(pin hydra-core)" "$(pin omegaconf)" "$(pin soundfile)" "$(pin cffi)" \
    "$(pin pycparser)" "$(pin bitarray)"
python3 -m pip wheel -q --no-deps "$(pin antlr4-python3-runtime)" -w "$KIT/whl"  # pure Python, sdist only
if [ $# -ge 1 ]; then
    test -f "$1/models/EAT_pretraining.py" || { echo "$1: not an EAT checkout (no models/EAT_pretraining.py)"; exit 2; }
    (cd "$1" && find . \( -name '*.py' -o -name '*.yaml' \) -not -path './.git/*' -print0 |
        xargs -0 -I{} install -D -m 644 {} "$OLDPWD/$KIT/EAT/{}")
    git -C "$1" rev-parse --short HEAD > "$KIT/EAT/COMMIT" 2>/dev/null || true
fi
ls "$KIT/whl"
du -sh "$KIT"
