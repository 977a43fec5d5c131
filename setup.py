"""jaxrl: RL post-training of language models in JAX (DAS speculative rollouts, V1 self-verification)."""
from setuptools import find_packages, setup

setup(
    name="jaxrl",
    version="0.1.0",
    description="RL post-training of language models in JAX/Flax",
    python_requires=">=3.12",
    packages=find_packages(include=["jaxrl", "jaxrl.*", "kernels", "kernels.*"]),
    install_requires=[
        # Pinned to what the GPU machines run, so CI and the GPU test the same code.
        "jax==0.11.2",
        "jaxlib==0.11.2",
        "flax>=0.12,<0.13",
        "optax>=0.2.6",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.90",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "numpy>=2.0",
        "safetensors>=0.8",
        "tokenizers>=0.20",
        "tensorboardX>=2.6",
        # TFDS data (jaxrl/tasks/tfds_builders.py, the JSONL math path), written and read
        # without TensorFlow; tfds imports importlib_resources but declares it only for
        # Python < 3.9 (tensorflow/datasets#11212).
        "tensorflow-datasets>=4.9.10",
        "array-record>=0.8.6",
        "importlib_resources>=6",
        # The JSONL math reward (jaxrl/tasks/math_reward.py), as TRL and open-r1 score it.
        "math-verify>=0.9.0,<0.10",
        "matplotlib>=3.8",  # the v1_infer job's plot
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "torch>=2.5",
            "transformers>=5.0",
        ],
    },
)
