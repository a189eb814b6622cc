"""Full-size preset: Di4C on the CIFAR-10 Gaussian-CTMC teacher (tauLDR setup).

docs/method.md sec. 4, tauLDR column: Delta log-uniform in [1e-3, 1e-2], t ~ U[0.01 + Delta, 1],
distillation on every example at a fresh delta ~ U[0.01, 0.02], alpha_t = sigmoid(20 (t - 0.5)),
L = 16, Adam 2e-4 with clipping 1.0. The student's dropout is its teacher's (0.1 in
configs/cifar10_gaussian.py, as in the official runs). For accelerators; the teacher is the
configs/cifar10_gaussian.py run of that file's docstring, in workdirs/cifar10_teacher:
  python -m launch.distill --config=configs/cifar10_tauldr_distill.py \
      --workdir=workdirs/cifar10_student --config.teacher.workdir=workdirs/cifar10_teacher
"""

from mixture_dd import configuration


def get_config():
  c = configuration.distill_base_config("tauldr")
  c.teacher.update(kind="network", workdir="workdirs/cifar10_teacher")
  c.distill.update(data_weight=1.0, latent_chunks=4)  # di4c-d; chunks bound memory
  c.optim.update(
    lr=2e-4, warmup_steps=0, weight_decay=0.0, clip=1.0, ema_decay=0.9999, schedule="constant"
  )
  c.train.update(
    batch_size=128,
    num_steps=100_000,
    log_every=100,
    ckpt_every=5000,
    sample_every=10_000,
    sample_steps=10,
  )
  c.train.eval_weights = "ema"  # tauLDR samples from its warmed-up EMA
  return c
