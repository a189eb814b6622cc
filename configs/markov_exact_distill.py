"""Di4C student of the EXACT ideal teacher of the Markov chain (S=8, D=32).

The teacher is the exact product denoiser of the data's chain (forward-backward,
mixture_dd/markov_exact.py): no teacher network, no teacher error, so the
student's gap to the teacher at 2N is the method's alone. Data, process and
student architecture are configs/markov.py's, so the student can also start
from a learned markov teacher's weights (teacher.init_workdir).

  python -m launch.distill --config=configs/markov_exact_distill.py \
      --workdir=workdirs/markov_exact_student
  # or started from the learned teacher's weights:
  python -m launch.distill --config=configs/markov_exact_distill.py \
      --config.teacher.init_workdir=workdirs/markov_teacher --workdir=workdirs/markov_exact_student

Evaluate (the exact teacher is built from the student's config):
  from mixture_dd import evaluate, runs
  student = runs.load_run("workdirs/markov_exact_student")
  evaluate.evaluate(runs.teacher_run(student), student, steps=[1, 2, 4, 8, 16, 32],
                    num_samples=2048, seed=0, out_dir="reports/markov_exact",
                    student_steps=[1, 2, 4, 8])
The recipe is markov_distill's (the cpu_small preset: uniform t, Delta = 0.05,
di4c-d) with the teacher's learning rate and a longer budget for a fresh network;
it is not tuned.
"""

import ml_collections

from mixture_dd import configuration
from mixture_dd.configs import markov


def get_config():
  # The small CPU recipe (configuration.PRESETS["cpu_small"]): L = 16, uniform t, Delta = 0.05,
  # distillation below t = 0.05, di4c-d with alpha_scale 1, the centred start at scale 1.
  c = configuration.distill_base_config("cpu_small")
  # kind: "ideal" (the exact denoiser of the data's law: markov or tiny) | "network".
  # init_workdir: None (a fresh student network) | the --workdir of a launch.train
  #   run on the same data and process (configs/markov.py) whose weights start
  #   the student; its architecture must be this config's model section.
  c.teacher.update(kind="ideal")
  c.teacher.init_workdir = ml_collections.config_dict.placeholder(str)
  teacher = markov.get_config()
  c.data = teacher.data  # markov: vocab_size=8, length=32, seed=0 (the chain), splits
  c.process = teacher.process  # masked, loglinear
  c.model = teacher.model  # width 96, depth 3, 4 heads, rope
  c.optim.update(lr=1e-3, warmup_steps=50, ema_decay=0.99, schedule="cosine")
  c.train.update(batch_size=16, num_steps=1500, log_every=50, ckpt_every=250)
  return c
