"""Benchmarks behind BENCHMARKS.md, run from the repository root as `python -m bench.NAME`
(decode, grpo, rollout, das_pass, kernel_sampling, kernel_attention, v1_synthetic,
v1_judge_round, compile_time, das_compile, sft_padding); `common.py` holds what they share.

`bench.grpo`, `bench.rollout` and `bench.compile_time` load `configs/grpo.py`, an
ml-collections file; the GPU machines' image lacks ml-collections (a pure-Python wheel; its
needs, absl-py and PyYAML, are there). Carry it as the device notes say (/work/.library/device/README.md, Notes):
fetch it here, in the repository root (`.gitignore` keeps `/.whl/` out of git), with

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl ml-collections==1.1.0

and start the command there with `python3 -m pip install -q --no-index --no-deps
--no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export
PYTHONPATH=/tmp/site || exit;` (the call carrying `.whl`). The other scripts import
no ml-collections.
"""
