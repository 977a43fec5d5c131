"""The shipped configs as tests use them: defaults come only from configs/ (as in a run),
and a test overrides the fields it is about."""
import pathlib

from jaxrl.config_utils import build, load_config_file
from jaxrl.jobs import train
from jaxrl.rl.grpo import RLConfig
from jaxrl.rollout.das import RolloutConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


def config_dict(name: str = "grpo", arg: str | None = None):
    """`configs/<name>.py:<arg>` as the ml-collections ConfigDict a run starts from."""
    return load_config_file(str(ROOT / "configs" / f"{name}.py"), arg)


def train_config(config_dict_) -> train.TrainConfig:
    return build(train.TrainConfig, config_dict_)


def rl_config(**overrides) -> RLConfig:
    return build(RLConfig, config_dict().rl, "config.rl").replace(**overrides)


def rollout_config(**overrides) -> RolloutConfig:
    return build(RolloutConfig, config_dict().rollout, "config.rollout").replace(**overrides)


def layout(mesh: dict | None = None):
    """A `sharding.Layout` over all devices by configs/scale.py's rules."""
    from jaxrl import sharding

    rules = build(sharding.ShardingConfig, config_dict().sharding, "config.sharding")
    return sharding.make_layout(mesh or {"data": -1, "fsdp": 1, "tensor": 1}, rules)
