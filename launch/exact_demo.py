r"""Theorem 1, measured: exact TV of the ideal product sampler against steps.

python -m launch.exact_demo --out=reports/exact_tv.md
"""

from absl import flags

from launch import common
from mixture_dd import exact_report

_OUT = flags.DEFINE_string("out", "reports/exact_tv.md", "Markdown table written here.")
_MAX_LOG2 = flags.DEFINE_integer("max_log2_steps", 7, "Steps N = 1, 2, ..., 2^max.")


def main(argv):
  del argv
  print(exact_report.product_tv_report([2**k for k in range(_MAX_LOG2.value + 1)], _OUT.value))


if __name__ == "__main__":
  common.run(main)
