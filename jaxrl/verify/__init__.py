"""V1 (arXiv 2603.04304): pairwise self-verification at inference time.

`tournament.swiss` runs the uncertainty-guided Swiss tournament over any pairwise judge;
`baselines` holds the methods it is measured against; `judge` builds the prompts, parses
the ratings and wraps a jaxrl model as a judge; `metrics` turns choices into the table's
numbers; `synthetic` holds noisy-oracle judges with known error rates (test doubles).
"""
