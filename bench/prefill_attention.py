"""The attention of the update and the prefill (`models/attention.py: attend`): cuDNN's fused
attention against the materialising reference, for equality and for time.

    python -m bench.prefill_attention --out prefill_attention.json
    python -m bench.prefill_attention --impls reference,xla --shapes 2x16 --out /tmp/a.json  # CPU

For each shape B x T (queries = keys = T) and each head layout of the Qwen2.5 shapes (0.5B:
H=14, H_kv=2, D=64; 1.5B: H=12, H_kv=2, D=128), bf16 q, k, v from a seeded normal, the
decoder's mask (causal, each row's first `pad` positions left padding, pad uniform in
[0, T/4)):

- **Equality.** Each implementation in bf16 against the float32 reference (the same function
  on float32 inputs: the exact answer up to float32 rounding), over the valid query rows, for
  the output and for the gradients of `sum(out * g)` (g seeded, bf16) with respect to q, k
  and v. The bound, derived: each output element is a convex combination of v, so rounding
  it to bf16 (8 bits of mantissa) alone costs up to 2^-9 of max|out| per element; the
  bf16 reference's own error is the yardstick, and an implementation passes if its largest
  error is within 2x the reference's + 2^-8 of the output's (gradient's) largest magnitude.
  Errors are reported as that bound's share, so < 1 passes.
- **Time.** Device microseconds of the forward and of forward + backward (value and the
  three gradients), by `bench.common.device_us` (a chain of dependent calls minus one call),
  and the attention FLOPs per second: 4 * B * H * T^2 * D forward, 2.5x that forward +
  backward, counting the dense T x T (the reference computes all of it; cuDNN skips the
  blocks above the diagonal, so its rate against dense FLOPs can pass the device's peak
  share of causal work).
"""
from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from jaxrl.models.attention import attend

HEADS = {"0.5B": (14, 2, 64), "1.5B": (12, 2, 128)}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impls", type=common.csv(str), default=["reference", "cudnn"],
                   help="the first is the baseline; cudnn runs on GPU only (xla runs anywhere)")
    p.add_argument("--shapes", type=common.csv(str), default=["64x128", "16x512", "4x2048"],
                   help="B x T")
    p.add_argument("--models", type=common.csv(str), default=list(HEADS), help=str(HEADS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="prefill_attention.json")
    return p.parse_args(argv)


def _bf16(x):
    return x.astype(jnp.bfloat16)


def inputs(b: int, t: int, heads: tuple[int, int, int], seed: int):
    h, kv, d = heads
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (b, t, h, d), jnp.float32)
    k = jax.random.normal(ks[1], (b, t, kv, d), jnp.float32)
    v = jax.random.normal(ks[2], (b, t, kv, d), jnp.float32)
    pad_B = jax.random.randint(ks[4], (b,), 0, max(t // 4, 1))
    valid_BT = jnp.arange(t)[None, :] >= pad_B[:, None]
    # Zero at padding queries, as a training loss's mask makes it: such a query sees no key,
    # and what an implementation returns there (and back-propagates into k, v) is its own.
    g = jax.random.normal(ks[3], (b, t, h * d), jnp.float32) * valid_BT[:, :, None]
    mask_BTS = (jnp.arange(t)[None, None, :] <= jnp.arange(t)[None, :, None]) \
        & valid_BT[:, None, :]
    return q, k, v, g, mask_BTS, valid_BT


def loss_and_grads(impl: str):
    def loss(q, k, v, g, mask):
        return jnp.sum(attend(q, k, v, mask, impl).astype(jnp.float32) * g)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def errors(impl: str, q, k, v, g, mask, valid_BT, truth) -> dict:
    """Largest |impl - float32 reference| over valid query rows: the output and each grad."""
    out = jax.jit(functools.partial(attend, impl=impl))(_bf16(q), _bf16(k), _bf16(v), mask)
    _, grads = loss_and_grads(impl)(_bf16(q), _bf16(k), _bf16(v), _bf16(g), mask)
    rows = np.asarray(valid_BT)
    got = {"out": out, "dq": grads[0], "dk": grads[1], "dv": grads[2]}
    res = {}
    for name, x in got.items():
        diff = np.abs(np.asarray(x, np.float32) - np.asarray(truth[name], np.float32))
        res[name] = float(diff[rows].max())  # padding rows see no key: undefined anywhere
    return res


def timings(impl: str, q, k, v, g, mask) -> dict:
    args = (_bf16(q), _bf16(k), _bf16(v), _bf16(g), mask)
    fwd = common.chain(lambda q, i, k, v, g, m: (q + attend(q, k, v, m, impl).reshape(
        q.shape) * 1e-3).astype(q.dtype))
    grad = jax.value_and_grad(lambda q, k, v, g, m: jnp.sum(
        attend(q, k, v, m, impl).astype(jnp.float32) * g), argnums=(0, 1, 2))
    both = common.chain(lambda q, i, k, v, g, m: (q + grad(q, k, v, g, m)[1][0] * 1e-3)
                        .astype(q.dtype))
    return {"fwd_us": common.device_us(fwd, args), "fwd_bwd_us": common.device_us(both, args)}


def main(argv=None):
    args = parse(argv)
    info = common.run_info("prefill_attention", list(argv if argv is not None else sys.argv[1:]))
    rows = []
    for model in args.models:
        heads = HEADS[model]
        for shape in args.shapes:
            b, t = (int(x) for x in shape.split("x"))
            q, k, v, g, mask, valid = inputs(b, t, heads, args.seed)
            _, grads32 = loss_and_grads("reference")(q, k, v, g, mask)
            truth = {"out": jax.jit(functools.partial(attend, impl="reference"))(q, k, v, mask),
                     "dq": grads32[0], "dk": grads32[1], "dv": grads32[2]}
            scale = {n: float(np.abs(np.asarray(x)[np.asarray(valid)]).max())
                     for n, x in truth.items()}
            base = None
            for impl in args.impls:
                err = errors(impl, q, k, v, g, mask, valid, truth)
                base = base or err
                bound = {n: 2 * base[n] + 2.0 ** -8 * scale[n] for n in err}
                row = {"model": model, "b": b, "t": t, "impl": impl,
                       "error": err, "error_over_bound": {n: err[n] / bound[n] for n in err},
                       **timings(impl, q, k, v, g, mask)}
                h, _, d = heads
                flops = 4 * b * h * t * t * d
                row["fwd_tflops"] = flops / row["fwd_us"] / 1e6
                row["fwd_bwd_tflops"] = 2.5 * flops / row["fwd_bwd_us"] / 1e6
                rows.append(row)
                common.write_json(args.out, {**info, "rows": rows})  # a killed run keeps these
                worst = max(row["error_over_bound"].values())
                print(f"{model} {b}x{t} {impl:9s} fwd {row['fwd_us']:9.1f} us "
                      f"({row['fwd_tflops']:6.1f} TFLOP/s)  fwd+bwd {row['fwd_bwd_us']:9.1f} us "
                      f"({row['fwd_bwd_tflops']:6.1f})  worst error / bound {worst:.2f}",
                      flush=True)
    report = {**info, "rows": rows,
              "passed": all(max(r["error_over_bound"].values()) < 1 for r in rows)}
    common.write_json(args.out, report)
    print(f"| model | B x T | impl | fwd us | fwd+bwd us | speedup fwd / fwd+bwd vs "
          f"{args.impls[0]} | worst error / bound |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next(x for x in rows if (x["model"], x["b"], x["t"]) == (r["model"], r["b"], r["t"]))
        print(f"| {r['model']} | {r['b']}x{r['t']} | {r['impl']} | {r['fwd_us']:.1f} | "
              f"{r['fwd_bwd_us']:.1f} | {ref['fwd_us'] / r['fwd_us']:.2f}x / "
              f"{ref['fwd_bwd_us'] / r['fwd_bwd_us']:.2f}x | "
              f"{max(r['error_over_bound'].values()):.2f} |")
    if not report["passed"]:
        sys.exit("an implementation's error exceeds its bound (see error_over_bound)")


if __name__ == "__main__":
    main()
