"""SFT warm-up, then GRPO, on an embedded task: the main job.

    python -m jaxrl.main --config=configs/grpo.py --workdir=/tmp/grpo
    python -m jaxrl.main --config=configs/grpo.py:task=countdown,difficulty=1 --workdir=DIR
    python -m jaxrl.main --config=configs/grpo.py --config.rl.num_generations=16 --workdir=DIR

The default trains the `small` random-init policy on easy arithmetic in a few minutes on a
2-core CPU, and reports held-out accuracy before and after RL.
"""
import ml_collections

from jaxrl.config_utils import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, task="arithmetic", difficulty=0, model="small", sft_steps=300,
                    rl_steps=60)
    c = ml_collections.ConfigDict()
    c.job = "train"
    c.seed = 0

    c.task = ml_collections.ConfigDict()
    c.task.name = arg.task  # arithmetic | countdown | sort
    c.task.difficulty = arg.difficulty
    c.task.max_steps = 0  # 0 = the level's default cap on solution steps

    c.model = ml_collections.ConfigDict()
    c.model.preset = arg.model
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"

    c.optim = ml_collections.ConfigDict()
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99
    c.optim.grad_clip = 1.0

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = arg.sft_steps
    c.sft.batch_size = 64
    c.sft.learning_rate = 3e-3

    c.rl = ml_collections.ConfigDict()
    c.rl.steps = arg.rl_steps
    c.rl.learning_rate = 2e-4
    c.rl.num_prompts = 16
    c.rl.num_generations = 8
    c.rl.max_new_tokens = 0  # 0 = the task's longest reference solution + EOS
    c.rl.temperature = 1.0
    c.rl.top_k = 0
    c.rl.top_p = 1.0
    c.rl.advantage = "grpo"  # grpo | drgrpo | rloo
    c.rl.clip_low = 0.2
    c.rl.clip_high = 0.28  # DAPO clip-higher
    c.rl.dual_clip = 0.0  # 0 = off; else > 1
    c.rl.loss_agg = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    c.rl.kl_coef = 0.0
    c.rl.kl_estimator = "k3"  # k1 | k2 | k3
    c.rl.num_minibatches = 2
    c.rl.num_epochs = 1
    c.rl.old_logprobs = "sampler"  # sampler | recompute
    c.rl.dynamic_sampling = True  # mask groups whose rewards are all equal
    c.rl.overlong_filter = False  # mask completions cut at max_new_tokens
    c.rl.format_coef = 0.0
    c.rl.split_phases = True  # three jits, timed; False = one jit (same results)

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 20
    c.eval.num_problems = 256

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 50
    c.checkpoint.max_to_keep = 2

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    return c
