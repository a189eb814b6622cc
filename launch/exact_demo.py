r"""Theorem 1, measured: exact TV of the ideal product sampler against steps.

python -m launch.exact_demo --out=reports/exact_tv.md
"""

import os

from absl import flags

from launch import common
from mixture_dd import exact_report

_OUT = flags.DEFINE_string("out", "reports/exact_tv.md", "Markdown table written here.")
_MAX_LOG2 = flags.DEFINE_integer(
  "max_log2_steps", 7, "Steps N = 1, 2, ..., 2^max.", lower_bound=0, upper_bound=12
)


def main(argv):
  common.setup(argv)
  out = os.path.abspath(os.path.expanduser(_OUT.value))
  if os.path.isdir(out):
    raise common.UsageError(f"--out={_OUT.value!r} is a directory; give a file name")
  common.check_writable_dir(os.path.dirname(out), "--out", given=_OUT.value)
  print(exact_report.product_tv_report([2**k for k in range(_MAX_LOG2.value + 1)], out))
  print(f"wrote {out}")


def cli(argv=None):
  """`python -m launch.exact_demo`."""
  return common.run(main, argv=argv)


if __name__ == "__main__":
  cli()
