"""Benchmarks: scripts run by hand (not tests); see each module's docstring."""

import os
import platform

import jax


def device_description() -> str:
  devs = jax.devices()
  kinds = sorted({d.device_kind for d in devs})
  return (
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
    f"jax {jax.__version__}, {len(devs)} x {'/'.join(kinds)} ({jax.default_backend()})"
  )
