"""benchmarks/block_boundaries: pair TV split into pairs inside a block and pairs across blocks.

What must hold: the straddling pairs are the closed-form ones; on the chain's own samples both
halves are at the sampling floor (no split where there is no block structure), and a sampler
that draws each block from the chain but the blocks independently (a local student's law
within one step) has its error on the straddling pairs only.
"""

import numpy as np
import pytest

from benchmarks import block_boundaries
from mixture_dd import scorers
from mixture_dd.data import markov

D, BLOCK, N = 16, 4, 4000


def test_straddling_pairs_are_those_across_a_boundary():
  np.testing.assert_array_equal(
    block_boundaries.straddles(8, 4, 1), [False, False, False, True, False, False, False]
  )
  np.testing.assert_array_equal(
    block_boundaries.straddles(8, 4, 3), [False, True, True, True, False]
  )


def test_independent_blocks_err_on_the_straddling_pairs_only():
  init, trans = markov.make_chain(8, 0)
  laws = scorers.markov_pair_laws(init, trans, D)
  rng = np.random.default_rng(0)
  data = markov.sample(rng, N, D, init, trans)
  # Block g of row i from row i of its own independent chain draw: each block's law is the
  # chain's, the blocks independent.
  draws = [markov.sample(rng, N, D, init, trans) for _ in range(D // BLOCK)]
  blocks = np.concatenate([d[:, g * BLOCK : (g + 1) * BLOCK] for g, d in enumerate(draws)], 1)
  inside, straddling = block_boundaries.split(data, laws, BLOCK)
  b_inside, b_straddling = block_boundaries.split(blocks, laws, BLOCK)
  # Measured over seeds 0-3: data 0.038-0.043 inside / 0.038-0.044 straddling (differences
  # <= 0.002), independent blocks 0.039-0.042 inside (<= 0.004 from the data's) / 0.244-0.251.
  assert abs(inside - straddling) < 0.01 and abs(b_inside - inside) < 0.01
  assert b_straddling > b_inside + 0.15
  row = block_boundaries.measure(blocks[:512], laws, BLOCK)
  assert 0 < row["straddling_se"] < 0.02 and 0 < row["inside_se"] < 0.02
  with pytest.raises(ValueError, match="no lag-1 pair on one side"):
    block_boundaries.split(data, laws, D)
