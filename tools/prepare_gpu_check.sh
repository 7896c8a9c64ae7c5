#!/usr/bin/env bash
# Prepare, on this machine, what tools/gpu_check.sh needs on the lent GPU machine (which has no
# network): the wheels it lacks in .whl/ and a CIFAR-10 subset in .gpudata/ (both git-ignored).
# Then, with the device tool: run `bash tools/gpu_check.sh` with carry [".whl", ".gpudata"].
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data/cifar10-jpeg.tar.gz}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux1_x86_64 --platform any)
mkdir -p .whl .gpudata
for wheel in hydra-core==1.3.8 omegaconf==2.3.1 mpi4py==4.1.2 mpich==5.0.2; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl "$wheel"
done
python3 -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl  # an sdist on PyPI: build the wheel
# The first 1,000 training and 200 test images of every class (what data.limit_train=10000 and
# data.limit_test=2000 take, class-balanced), as JPEGs: 4 MB instead of 19.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
tar -xzf "$SHARED" -C "$scratch"
(cd "$scratch" && for class in cifar10/train/*/; do
    ls "$class" | sort | head -1000 | sed "s|^|$class|"
    ls "cifar10/test/$(basename "$class")" | sort | head -200 | sed "s|^|cifar10/test/$(basename "$class")/|"
done) > "$scratch/list"
tar -czf .gpudata/cifar10-subset.tar.gz -C "$scratch" -T "$scratch/list"
ls -la .whl .gpudata
