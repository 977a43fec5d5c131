"""V1-Infer: sample N candidates per problem, pick one by pairwise self-verification (the
uncertainty-guided Swiss tournament), and compare every baseline at the same budgets.

    python -m jaxrl.main --config=configs/v1_infer.py --workdir=/tmp/v1
    python -m jaxrl.main --config=configs/v1_infer.py:model=tiny,small=True --workdir=DIR
    python -m jaxrl.main --config=configs/v1_infer.py:task=sort --config.policy_workdir=RUN \\
        --workdir=DIR   # the newest checkpoint of a `train` run of configs/grpo.py:model=...
    python -m jaxrl.main --config=configs/v1_infer.py:data=jsonl \\
        --config.model.path=/ckpt/Qwen2.5-0.5B-Instruct --config.data.manual_dir=/data/gsm8k \\
        --workdir=DIR

Writes `DIR/v1_infer.md` (Pass@1 of each method at each budget, judge calls and tokens, tie
and first-position rates), `DIR/v1_infer.json` and `DIR/v1_infer.png` (accuracy against
total calls: N generations + V judge calls per problem). Every field below is read by
`jaxrl/jobs/v1_infer.py: V1InferConfig`, which checks it before anything compiles.

`small=True` is the CI setting: N = 4 candidates, 4 problems, short generations and judge
replies, so the whole job runs on one CPU core in seconds. A random-init policy shows that
the pipeline runs and what it costs; it cannot judge (its ratings are noise or unparseable).
"""
import os

import ml_collections

from jaxrl.config_utils import load_config_file, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, task="countdown", difficulty=0, model="small", data="embedded",
                    template="plain", mode="generate", small=False)
    c = ml_collections.ConfigDict()
    c.job = "v1_infer"
    c.seed = 0

    c.num_problems = 64  # held-out problems of the task, or the first rows of test.jsonl
    c.num_candidates = 16  # N; the roster samples N + max(budgets) N per problem (see below)
    # Judge budgets V as multiples of N. Majority voting at N + V samples and pointwise at
    # N' = (N + V) / 2 use the extra candidates, so one batched generation serves all.
    c.budgets = (1, 2, 3)
    c.bom_alpha = 0.1  # Best-of-Majority: keep answers of frequency >= alpha (arXiv 2510.03199)

    c.tournament = ml_collections.ConfigDict()
    c.tournament.d_min = 2  # phase 1: every candidate compared at least d_min times
    c.tournament.window = 8  # phase 2: pair candidates at most this many ranks apart
    c.tournament.tau = 0.1  # weight floor: w = max(|r_i - r_j| / 9, tau)

    c.judge = ml_collections.ConfigDict()
    c.judge.mode = arg.mode  # generate (parse sampled ratings) | logits (expected rating)
    c.judge.debias = True  # show each pair in a random order
    c.judge.reason = False  # generate mode: reason first, then the rating lines
    c.judge.max_new_tokens = 16  # the reply: "7\nRating B: 4" (more with reason=True)
    c.judge.temperature = 1.0
    # Judge batches are padded to these multiples (rows, prompt tokens), so rounds of similar
    # size reuse one compiled program; rows must split over the mesh's batch devices.
    c.judge.row_multiple = 8
    c.judge.len_multiple = 64
    # Prompts per device call (a round of more runs in chunks): prefill attention holds
    # [rows, heads, T, T] scores, and pair prompts carry two solutions.
    c.judge.max_rows = 64

    # The candidates: one batched `generate` call over all problems.
    c.sampling = ml_collections.ConfigDict()
    c.sampling.max_new_tokens = 0  # 0 = the task's longest reference solution + EOS
    c.sampling.temperature = 1.0
    c.sampling.top_k = 0
    c.sampling.top_p = 1.0

    c.model = ml_collections.ConfigDict()
    c.model.preset = arg.model  # random weights of this shape, unless path is set
    c.model.path = ""  # an HF checkpoint directory (data=jsonl)
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.vocab_size = 0  # 0 = the tokenizer's
    # Attention of the forwards over their own tokens (update, SFT, prefill): reference |
    # xla | cudnn (GPU, bf16/fp16; raises elsewhere) | auto (cudnn where it applies, else
    # reference). Not bit-identical to reference (jaxrl/models/attention.py).
    c.model.prefill_attention = "reference"
    # Scan the layers (one compiled layer run L times) instead of unrolling them: compiles
    # grow little with depth; not bit-identical to unrolled (jaxrl/models/decoder.py).
    c.model.scan_layers = False
    c.model.remat = False  # no effect here: this job takes no gradients
    # A `train` run's workdir: its newest checkpoint's params replace the model's; `model`
    # must then equal that run's config.model (checked), which says the architecture.
    c.policy_workdir = ""

    # The problem set's sections are configs/grpo.py's (TaskConfig, DataConfig): the same
    # tasks and JSONL handling as training; only the held-out problems are read.
    train = load_config_file(os.path.join(os.path.dirname(__file__), "grpo.py"),
                             f"task={arg.task},difficulty={arg.difficulty},data={arg.data},"
                             f"template={arg.template}")
    c.task, c.data = train.task, train.data
    c.task.train_pool = 0  # no training prompts are read

    c.mesh, c.sharding, c.distributed, c.compile = (train.mesh, train.sharding,
                                                    train.distributed, train.compile)

    if arg.data == "jsonl":
        c.sampling.max_new_tokens = 512
        c.model.dtype = "bfloat16"
        c.model.param_dtype = "bfloat16"
    if arg.small:
        c.num_problems = 4
        c.num_candidates = 4
        c.sampling.max_new_tokens = 8
        c.judge.max_new_tokens = 8
        # One padded shape for every judging round (at most 4 x 8 rows): one compile per mode.
        c.judge.row_multiple = 32
        c.judge.len_multiple = 256
    return c
