"""Di4C student of the Markov-chain teacher (configs/markov.py).

  python -m launch.train --config=configs/markov.py --workdir=workdirs/markov_teacher
  python -m launch.distill --config=configs/markov_distill.py --workdir=workdirs/markov_student
  python -m launch.evaluate --teacher_workdir=workdirs/markov_teacher \
      --student_workdir=workdirs/markov_student --steps=2,4,8,16,32 --out_dir=reports/markov
About 10 minutes on 2 CPU cores. The small CPU recipe (`configuration.PRESETS["cpu_small"]`),
as the digits and pydoc_text students.
"""

from mixture_dd import configuration


def get_config():
  c = configuration.distill_base_config("cpu_small")  # with the default (centred) start
  c.teacher.update(kind="network", workdir="workdirs/markov_teacher")
  c.data.name = "markov"  # a teacher of another data set is refused
  c.optim.update(lr=3e-4, warmup_steps=20, ema_decay=0.99, schedule="cosine")
  c.train.update(batch_size=16, num_steps=600, log_every=50, ckpt_every=200)
  return c
