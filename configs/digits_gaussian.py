"""Digits teacher with the Gaussian-rate CTMC (the tauLDR / CIFAR-10 process at digits size).

scikit-learn's digits (8x8, 17 grey levels) under configs/cifar10_gaussian.py's forward
process, an ordinal CTMC with integrated rate B(t) = 3 (100^t - 1) and training times
t >= 0.01, with the network, optimizer and steps of configs/digits.py. The process is scaled
from 256 levels to 17 as follows:
  * rate_sigma = 1.0, not tauLDR's 6. The base rate R_b[i, j] ~ exp(-(i - j)^2 / rate_sigma^2)
    counts in levels, so the same 6 would jump across a third of the 17-level range at once,
    and 6 scaled with the level spacing (6 * 16 / 255 = 0.38) would make a 500x slower chain
    that is far from its stationary law at t = 1. Instead the chain keeps tauLDR's relaxation
    time (the spectral gap of R_b per unit of B: 0.0152 here, 0.0146 at 256 levels with
    rate_sigma 6 and Q_sigma 512; equal at rate_sigma = 0.99), so B(t) corrupts the images on
    tauLDR's time profile. Measured from q_{t|0}, here against tauLDR's: the rms shift of a
    pixel in units of the intensity range is 0.021 / 0.020 at t = 0.01, 0.074 / 0.069 at 0.1,
    0.25 / 0.24 at 0.5, and the worst-case TV of q_{1|0} to the stationary law 0.007 / 0.008.
    Moves are mostly one level: at t = 0.01, 10 % of the pixels have moved.
  * q_sigma = 34: the stationary law's std at twice the number of levels, as tauLDR's
    512 = 2 x 256 (nearly uniform: its ends have 0.97 of its centre's mass in both).
  * dropout 0.0 as configs/digits.py (its student inherits it).

  python -m launch.train --config=configs/digits_gaussian.py --workdir=workdirs/digits_gaussian
`configs/digits_gaussian.py:ci` is the seconds-long variant for tests.
"""

import ml_collections

from mixture_dd.configs import digits


def get_config(scale: str = "full"):
  # configs/digits.py's data, network, optimizer and steps (and its :ci sizes).
  c = digits.get_config(scale)
  # A fresh section: the Gaussian process takes no `schedule`.
  c.process = ml_collections.ConfigDict(
    dict(
      name="gaussian", vocab_size=None, rate_sigma=1.0, q_sigma=34.0, time_base=3.0, time_exp=100.0
    )
  )
  c.loss.t_min = 0.01  # tauLDR's: the sampler ends with the argmax at t = 0.01
  return c
