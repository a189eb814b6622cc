"""Full-size preset: Di4C in the SDTT / OpenWebText setup, on text8 characters.

docs/method.md sec. 4, SDTT column: one t per batch (w.p. 0.3 U[0, 0.02], else U[0.02, 1]),
Delta = min(1/1024, t/2), distillation only for t < 0.02, consistency otherwise, L = 16,
AdamW 3e-5 with 2500 warm-up steps, clip 1.0. di4c-d, the official default run (sony/di4c's
sdtt configs/config.yaml: alpha_t sigmoid, alpha_const 0.1): the correlation data term is on
with alpha = 0.1 sigmoid(20 (t - 0.5)). The student's dropout is its teacher's (0.1 in
configs/text8_masked.py, as in the official runs).

Teacher: the configs/text8_masked.py run of that file's docstring, in workdirs/text8:
  python -m launch.distill --config=configs/text8_sdtt_distill.py \
      --workdir=workdirs/text8_student --config.teacher.workdir=workdirs/text8
"""

from mixture_dd import configuration


def get_config():
  c = configuration.distill_base_config("sdtt")
  c.teacher.update(kind="network", workdir="workdirs/text8")
  # di4c-d: the preset's alpha_scale = 0.1 weighs the correlation term.
  c.distill.update(data_weight=1.0, latent_chunks=4)
  c.optim.update(
    lr=3e-5, warmup_steps=2500, weight_decay=0.0, clip=1.0, ema_decay=0.9999, schedule="constant"
  )
  c.train.update(
    batch_size=128,
    num_steps=100_000,
    log_every=100,
    ckpt_every=5000,
    sample_every=0,
    sample_steps=32,
  )
  # SDTT keeps a 0.9999 EMA but samples from the raw weights, and its di4c^2
  # round takes the raw weights as the next teacher and start.
  c.train.eval_weights = "raw"
  return c
