"""V1-PairRL: configs/grpo.py with the policy also trained as a pairwise judge of its own
solutions (jaxrl/rl/pairrl.py). Standard RL, PointRL and PairRL are this one recipe with
one switch, at the paper's split of 8 rollouts per problem: 4 as the generator, 4 as the
judge.

    python -m jaxrl.main --config=configs/pairrl.py --workdir=/tmp/pairrl
    python -m jaxrl.main --config=configs/pairrl.py:verifier=pointwise --workdir=DIR  # PointRL
    python -m jaxrl.main --config=configs/pairrl.py:verifier=none --workdir=DIR  # standard RL
    python -m jaxrl.main --config=configs/pairrl.py:task=sort,lam=0.5 --workdir=DIR

Args `verifier` (pairwise | pointwise | none) and `lam` are this file's; the others are
configs/grpo.py's.
"""
import pathlib

from jaxrl.config_utils import load_config_file, parse_arg

_OWN = ("verifier", "lam")


def get_config(arg=None):
    items = [item for item in (arg or "").split(",") if item]
    own = [item for item in items if item.partition("=")[0] in _OWN]
    rest = [item for item in items if item not in own]
    a = parse_arg(",".join(own), verifier="pairwise", lam=1.0)
    c = load_config_file(str(pathlib.Path(__file__).with_name("grpo.py")), ",".join(rest))
    c.pairrl.verifier = a.verifier
    c.pairrl.lam = a.lam
    c.rl.num_generations = 4  # generator rollouts per prompt; the judge's are pairrl's
    c.pairrl.pair_slots = 4  # of the C(4, 2) = 6 pairs of a group
    c.pairrl.judge_generations = 4  # each chosen pair judged once
    # A small policy has never seen a judge prompt: every 4th SFT step teaches the reply
    # format with random ratings, the same warm-up whatever the verifier, so standard RL,
    # PointRL and PairRL start from one policy and only PairRL/PointRL learn to judge.
    c.sft.judge_every = 4
    return c
