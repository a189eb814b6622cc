"""mixture_dd: few-step discrete diffusion by Di4C distillation, in JAX/Flax."""

from setuptools import find_packages, setup

setup(
  name="mixture_dd",
  version="0.1.0",
  description="Di4C: distil product discrete-diffusion teachers into few-step mixture students (JAX/Flax)",
  long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  # The experiment configs live at the top of the repository (configs/) and
  # install as mixture_dd.configs, so a notebook can `from mixture_dd.configs
  # import digits` wherever the package is installed.
  # The launchers (launch/) install as the package `launch`, so that
  # `python -m launch.train` works from any directory, and as commands.
  packages=find_packages(include=["mixture_dd", "mixture_dd.*", "launch"]) + ["mixture_dd.configs"],
  package_dir={"mixture_dd.configs": "configs"},
  entry_points={
    "console_scripts": [
      "mdd-train = launch.train:cli",
      "mdd-distill = launch.distill:cli",
      "mdd-evaluate = launch.evaluate:cli",
      "mdd-sample = launch.sample:cli",
      "mdd-demo = launch.demo:cli",
      "mdd-exact-demo = launch.exact_demo:cli",
    ]
  },
  # One range per library; pip takes the newest release that the running Python
  # supports: on Python 3.11, JAX 0.10.x (JAX 0.11+ needs Python >= 3.12) with
  # flax 0.12.8; on Python 3.12+, JAX 0.12.x with flax 0.12.12. Both ends are tested.
  install_requires=[
    "jax>=0.10,<0.13",
    "flax>=0.12,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "chex>=0.1.92,<0.2",
    "ml-collections>=1.1,<2",
    "absl-py>=2.1",
    "tensorflow-datasets>=4.9.10,<5",
    "numpy>=1.26",
    "scikit-learn>=1.5",  # only for its bundled digits data
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
  ],
  extras_require={
    "test": ["pytest>=8", "pytest-xdist>=3.8", "ruff>=0.15,<0.18"],
    "notebooks": ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
    # Accelerators (JAX's own extras; they pin jaxlib and the plugin to the jax release):
    # NVIDIA GPU with CUDA 13 wheels (driver >= 580), as JAX's install guide recommends;
    "cuda": ["jax[cuda13]"],
    # NVIDIA GPU with CUDA 12 wheels, for drivers older than 580 (>= 525);
    "cuda12": ["jax[cuda12]"],
    # Google Cloud TPU VM (libtpu).
    "tpu": ["jax[tpu]"],
  },
)
