"""Plain-Python suffix-tree reference for the DAS drafter (SuffixDecoding chain rule).

A trie over every suffix of every corpus sequence, cut at `max_depth`; a node's `count` is the
number of occurrences (over all sequences and start positions, overlaps included) of the path
from the root to it. That count is exactly what the draft rule needs:
  1. L = longest m <= max_match whose pattern context[-m:] occurs followed by a further token
     of the same sequence (= its node exists and has children);
  2. from P = context[-L:] repeatedly take the child with the largest count (ties: smallest id),
     with probability count(child) / sum(children counts), multiplied into a running product;
  3. stop before a token whose running product < min_token_prob, at a leaf, or once the draft
     has min(budget, max_draft, floor(spec_factor * L)) tokens.
"""
import math


class _Node:
    __slots__ = ("count", "children")

    def __init__(self):
        self.count = 0
        self.children = {}


class SuffixTree:
    def __init__(self, sequences, max_depth):
        self.max_depth = max_depth
        self.root = _Node()
        for seq in sequences:
            for start in range(len(seq)):
                node = self.root
                for tok in seq[start:start + max_depth]:
                    node = node.children.setdefault(int(tok), _Node())
                    node.count += 1

    def find(self, path):
        """The node of `path`, or None when it does not occur."""
        node = self.root
        for tok in path:
            node = node.children.get(int(tok))
            if node is None:
                return None
        return node

    def match(self, context, max_match):
        """(L, node of context[-L:]): the longest suffix of at most max_match tokens that occurs
        followed by a further token; (0, None) when none does."""
        match_len, node = 0, None
        for m in range(1, min(max_match, len(context)) + 1):
            cand = self.find(context[-m:])
            if cand is not None and cand.children:  # occurs, and followed by a token
                match_len, node = m, cand
        return match_len, node

    def draft(self, context, budget, *, max_match, max_draft, spec_factor, min_token_prob):
        assert self.max_depth >= max_match + max_draft, "trie too shallow for this draft"
        match_len, node = self.match([int(t) for t in context], max_match)
        if match_len == 0:
            return [], []
        n_max = min(budget, max_draft, math.floor(spec_factor * match_len))
        tokens, probs, prob = [], [], 1.0
        while len(tokens) < n_max and node.children:
            tok, child = min(node.children.items(), key=lambda kv: (-kv[1].count, kv[0]))
            p = prob * child.count / sum(c.count for c in node.children.values())
            if p < min_token_prob:
                break
            tokens.append(tok)
            probs.append(p)
            prob, node = p, child
        return tokens, probs
