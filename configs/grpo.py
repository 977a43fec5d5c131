"""SFT warm-up, then GRPO, on an embedded task; or GRPO on your math JSONL: the main job.

    python -m jaxrl.main --config=configs/grpo.py --workdir=/tmp/grpo
    python -m jaxrl.main --config=configs/grpo.py:task=countdown,difficulty=1 --workdir=DIR
    python -m jaxrl.main --config=configs/grpo.py --config.rl.num_generations=16 --workdir=DIR
    python -m jaxrl.main --config=configs/grpo.py:speculative=True --workdir=DIR  # DAS rollouts
    python -m jaxrl.main --config=configs/grpo.py:data=jsonl \\
        --config.model.path=/ckpt/Qwen2.5-0.5B-Instruct --config.data.manual_dir=/data/gsm8k \\
        --workdir=DIR

The default trains the `small` random-init policy on easy Countdown in a few minutes on a
2-core CPU, and reports held-out accuracy before and after RL.

Every field below is read by a typed config (jaxrl/jobs/train.py: TrainConfig), which checks
it before anything compiles; an unknown or missing field is an error.

`data=jsonl` trains the HF checkpoint at `model.path` with GRPO (no SFT: JSONL rows have
final answers, not reference completions) on `manual_dir/train.jsonl` (rows as
jaxrl/tasks/tfds_builders.py reads them: GSM8K, MATH or DeepScaleR style), rewards 1 for a
completion whose `\\boxed{}` answer math-verify accepts (jaxrl/tasks/math_reward.py: as TRL
and open-r1 score math), and reports greedy accuracy on the first `eval.num_problems` rows
of `test.jsonl` (if present). Each prompt is
`prompt_template.format(prompt=row_prompt)`, tokenized with the checkpoint's tokenizer.json:
`template=plain` (the default) suits any model, `template=chatml` is the chat format of
Qwen2/2.5/3 instruct models (or set `--config.data.prompt_template` to your own).
The trained policy is also written as an HF checkpoint (with the tokenizer) to `workdir/hf`.
"""
import pathlib

import ml_collections

from jaxrl.config_utils import load_config_file, parse_arg

_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{{}}."
TEMPLATES = {
    "plain": "{prompt}\n" + _INSTRUCTION + "\n",
    "chatml": ("<|im_start|>user\n{prompt}\n" + _INSTRUCTION
               + "<|im_end|>\n<|im_start|>assistant\n"),
}


def get_config(arg=None):
    arg = parse_arg(arg, task="countdown", difficulty=0, model="small", sft_steps=200,
                    rl_steps=150, data="embedded", template="plain", speculative=False)
    c = ml_collections.ConfigDict()
    c.job = "train"
    c.seed = 0

    c.task = ml_collections.ConfigDict()
    c.task.name = arg.task  # arithmetic | countdown | sort
    c.task.difficulty = arg.difficulty
    c.task.max_steps = 0  # 0 = the level's default cap on solution steps
    # RL prompts come from a fixed pool of this many problems, visited in epochs (as a
    # dataset would be); 0 = fresh problems every step. Speculative rollouts draft from
    # the history of prompts that recur.
    c.task.train_pool = 512

    c.model = ml_collections.ConfigDict()
    c.model.preset = arg.model
    c.model.path = ""  # an HF checkpoint dir (data=jsonl); '' = random init of the preset
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.vocab_size = 0  # 0 = the tokenizer's; a preset's real vocab gives its real costs (bench/)
    # Attention of the forwards over their own tokens (update, SFT, prefill): reference |
    # xla | cudnn (GPU, bf16/fp16; raises elsewhere) | auto (cudnn where it applies, else
    # reference). Not bit-identical to reference (jaxrl/models/attention.py).
    c.model.prefill_attention = "reference"
    # Scan the layers (one compiled layer run L times) instead of unrolling them: compiles
    # grow little with depth; not bit-identical to unrolled (jaxrl/models/decoder.py).
    c.model.scan_layers = False
    # Recompute each layer's activations in the backward pass (SFT and the update) instead
    # of keeping them: what lets a deep policy's long rollouts fit (the 0.5B shape on sort
    # d1 at the default minibatches), for 18% more SFT and update time there on an H200
    # (BENCHMARKS.md); rollouts unchanged. Gradients equal up to float rounding
    # (jaxrl/models/decoder.py).
    c.model.remat = False

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
    # Every k-th SFT step trains the judge's reply format on judge prompts with uniformly
    # random ratings (jaxrl/rl/pairrl.py: format_batch): parseable, uninformed ratings for
    # PairRL to start from. 0 = never (embedded tasks only).
    c.sft.judge_every = 0

    c.rl = ml_collections.ConfigDict()
    c.rl.steps = arg.rl_steps
    c.rl.learning_rate = 1e-4
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
    # Updates per RL step, each over 1/num_minibatches of the rollouts; each minibatch's
    # activations are kept for its backward pass, so a deep policy needs more: the 0.5B
    # shape on sort d1 (433 new tokens x 512 rows) asks for 329 GB at 2 on an H200
    # (BENCHMARKS.md); bench.grpo runs it at 8.
    c.rl.num_minibatches = 2
    c.rl.num_epochs = 1
    # The PPO ratio's denominator: 'recompute' runs the trainer's forward once before the
    # updates, so that it does not depend on how the rollout was decoded (speculative
    # verification computes the sampler's log-probs in k+1-token passes, which differ from
    # plain decoding's in the last bits): training is then bit-identical with and without
    # DAS. 'sampler' reuses the rollout's log-probs and saves that forward.
    c.rl.old_logprobs = "recompute"  # recompute | sampler
    # Groups whose rewards are all equal have advantage 0; masking them keeps their tokens
    # out of the token-mean (static shapes: they are not resampled, DAPO-style).
    c.rl.mask_zero_signal = True
    c.rl.overlong_filter = False  # mask completions cut at max_new_tokens
    c.rl.format_coef = 0.0
    c.rl.split_phases = True  # three jits, timed; False = one jit (same results)
    # The update's forwards on packed rows (jaxrl/rl/packing.py): 'segments' lays the real
    # tokens of each minibatch's rows end to end in ceil(pack_rows_frac * rows) rows of the
    # same length, each sequence attending only to itself, so FLOPs go to real tokens; a
    # minibatch that does not fit runs unpacked (metric packing/packed_frac). Equal to
    # 'none' up to float rounding, not bit for bit: off by default.
    c.rl.packing = "none"  # none | segments
    c.rl.pack_rows_frac = 0.5

    # V1-PairRL (jaxrl/rl/pairrl.py; configs/pairrl.py turns it on): the policy also
    # judges pairs of its own solutions, trained on J = J_gen + lam * J_verif.
    c.pairrl = ml_collections.ConfigDict()
    c.pairrl.verifier = "none"  # none (standard RL) | pairwise (PairRL) | pointwise (PointRL)
    c.pairrl.lam = 1.0  # weight of the judge rows' loss (each role a token-mean of its own)
    c.pairrl.pair_slots = 4  # pairs per prompt (never two incorrect solutions); <= G(G-1)/2
    # True: correct-incorrect pairs fill the slots before correct-correct ones (False: a
    # uniform subset of the eligible pairs, as the paper describes).
    c.pairrl.mixed_pairs_first = False
    c.pairrl.judge_generations = 4  # judge rollouts per prompt (the paper: 4 of 8 rollouts),
    # a multiple of pair_slots: each pair judged judge_generations / pair_slots times
    c.pairrl.judge_max_new_tokens = 16  # "10\nRating B: 10" plus the stop token

    # DAS speculative rollouts: the same tokens as plain decoding, fewer decode passes.
    c.rollout = ml_collections.ConfigDict()
    c.rollout.speculative = arg.speculative
    c.rollout.window = 4  # a prompt's rollouts from its last `window` appearances
    c.rollout.history_slots = 0  # prompts kept in the history; 0 = all (at most 4096)
    c.rollout.widths = (0, 4, 8, 16)  # drafted tokens verified per row: one compile each;
    # (0,) drafts nothing: plain decoding with finished rows compacted
    c.rollout.max_match = 16  # longest context suffix matched against the history
    c.rollout.spec_factor = 1.0  # draft at most spec_factor * match length
    c.rollout.min_token_prob = 0.1  # stop a draft below this running probability
    c.rollout.max_candidates = 64  # pattern occurrences counted per row
    c.rollout.length_aware = True  # budgets by length class, raised in the tail
    c.rollout.class_budgets = (4, 8, 16)  # short, medium, long prompts
    c.rollout.long_frac = 0.2  # top 20% of past lengths are long,
    c.rollout.medium_frac = 0.4  # the next 40% medium
    c.rollout.compaction = True  # move live rows into smaller buckets as rows finish
    c.rollout.min_bucket = 8
    # Time verification passes and drafting at start (DIR/cost_model.json); the four
    # numbers below are used only when this is False.
    c.rollout.fit_cost_model = True
    c.rollout.cost_base = 1.0  # pass cost = cost_base + cost_per_token * tokens
    c.rollout.cost_per_token = 0.002
    # A drafting pass over R rows (corpus build + draft) costs draft_cost + R *
    # draft_cost_per_row more (cost_base's units); a pass skips drafting where no width is
    # then expected to beat plain decoding.
    c.rollout.draft_cost = 0.0
    c.rollout.draft_cost_per_row = 0.0
    c.rollout.verify_impl = "auto"  # auto | pallas | reference (kernels/speculative_sampling)
    c.rollout.attention_impl = "reference"  # auto | pallas | reference (kernels/ragged_attention)

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 50
    c.eval.num_problems = 256

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 50
    c.checkpoint.max_to_keep = 2

    c.update(load_config_file(str(pathlib.Path(__file__).with_name("scale.py"))))


    c.data = ml_collections.ConfigDict()
    c.data.source = arg.data  # embedded (c.task) | jsonl (user math problems)
    # The jsonl source only:
    c.data.manual_dir = ""  # holds train.jsonl and optionally test.jsonl
    c.data.data_dir = ""  # where TFDS writes the prepared dataset; '' = workdir/data
    # The dataset is prepared once per name: edit the JSONL, then use a new name (or a new
    # data_dir) for the change to be read.
    c.data.name = "default"
    c.data.on_error = "skip"  # a malformed row: skip (logged and counted) | raise
    if arg.template not in TEMPLATES:
        raise ValueError(f"config arg template={arg.template!r}; valid: {sorted(TEMPLATES)}")
    c.data.prompt_template = TEMPLATES[arg.template]  # str.format with {prompt}
    # Rendered prompts longer than this (in tokens) are skipped and counted, not truncated:
    # a cut problem is a wrong problem. Prompts are padded to the longest one kept.
    c.data.max_prompt_len = 512
    c.data.reward_timeout_s = 5.0  # per math_reward.Scorer call; past it the sample scores 0

    if arg.data == "jsonl":
        # A pretrained checkpoint on real text: no SFT (no reference completions), room to
        # reason, a small RL rate, and bf16 activations over float32 params.
        c.sft.steps = 0
        c.rl.max_new_tokens = 512
        c.rl.learning_rate = 1e-6
        c.model.dtype = "bfloat16"
    return c
