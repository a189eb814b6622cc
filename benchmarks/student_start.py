r"""How the student leaves its teacher: step-0 KL and distilled quality per start.

For each tiny family (exact TV computable) a product teacher is trained on
samples of it; for each `configuration.STUDENT_STARTS` option the student is
copied from that teacher and (1) its step-0 KL(teacher || mixture marginal)
per token is measured, (2) it is distilled (quick scanned loop) and its
exact one-step TV is compared with the teacher's. With --teacher_workdir,
the step-0 KL of each start on a trained network teacher of ours too.

  python -m benchmarks.student_start --out=reports/student_start.md \
      [--teacher_workdir=workdirs/demo/teacher]
"""

import os
import time

import jax
from absl import app, flags

from mixture_dd import configuration, denoisers, di4c, exact_report, runs
from mixture_dd.data import pipeline

_OUT = flags.DEFINE_string("out", "reports/student_start.md", "Markdown table goes here.")
_STARTS = flags.DEFINE_list(
  "starts",
  ["exact:0", "gate:0", "fan_in:0.3", "fan_in:1", "centred:1", "normal:0.1"],
  "student_start:latent_init_scale pairs.",
)
_CASES = flags.DEFINE_list(
  "cases",
  ["dirichlet:3:3:0", "dirichlet:4:3:1", "noisy_copies:3:4:2"],
  "family:S:D:seed tiny families.",
)
_TRAIN = flags.DEFINE_integer("train_steps", 800, "Distillation steps (batch 128, lr 3e-3).")
_TEACHER = flags.DEFINE_string("teacher_workdir", None, "Also: step-0 KL on this teacher run.")


def _dconf(start, scale):
  return configuration.distill_preset("cpu_small", student_start=start, latent_init_scale=scale)


def main(argv):
  del argv
  starts = [(s.split(":")[0], float(s.split(":")[1])) for s in _STARTS.value]
  lines = [
    "| family | start | step-0 KL / token | one-step TV: teacher | student | ratio | s |",
    "|---|---|---|---|---|---|---|",
  ]
  for case in _CASES.value:
    family, s_vocab, length, seed = case.split(":")
    s_vocab, length, seed = int(s_vocab), int(length), int(seed)
    probs, tokens, proc = exact_report.tiny_case(family, s_vocab, length, seed)
    t_conf = exact_report.tiny_teacher_config(s_vocab, length, seed=seed)
    t_model, t_params = exact_report.train_tiny_teacher(t_conf, tokens)
    teacher = di4c.network_teacher(t_model, t_params)
    fn_t = denoisers.exact_view(denoisers.from_network(t_model), t_params)
    tv_t = exact_report.tv_table(proc, probs, length, {"t": (fn_t, False)}, [1])["t"][0]
    for start, scale in starts:
      t0 = time.time()
      s_conf = exact_report.tiny_student_config(
        t_conf, _dconf(start, scale), steps=_TRAIN.value, batch=128, lr=3e-3, seed=seed
      )
      model, p0, p1 = exact_report.distill_tiny_student(s_conf, tokens, t_model, t_params)
      kl0 = di4c.marginal_kl(teacher, model, p0, proc, tokens[:256], jax.random.key(0))
      fn_s = denoisers.exact_view(denoisers.from_network(model), p1)
      tv_s = exact_report.tv_table(proc, probs, length, {"s": (fn_s, True)}, [1])["s"][0]
      lines.append(
        f"| {family} S={s_vocab} D={length} seed {seed} | {start} {scale:g} | "
        f"{kl0:.2e} | {tv_t:.4f} | {tv_s:.4f} | {tv_s / tv_t:.2f} | "
        f"{time.time() - t0:.0f} |"
      )
      print(lines[-1], flush=True)
  if _TEACHER.value:
    run = runs.load_run(_TEACHER.value)
    _, src = pipeline.load(run.config.data, "train")
    head = src.head(256).tokens
    teacher = di4c.network_teacher(run.model, run.params)
    lines += [
      "",
      f"Step-0 KL(teacher || student mixture marginal) per token on "
      f"{run.spec.name} (teacher {_TEACHER.value}, 256 examples, L = 32):",
      "",
      "| start | step-0 KL / token |",
      "|---|---|",
    ]
    for start, scale in starts:
      entry = configuration.entry_for_start(start)
      model = run.model.clone(latent=True, latent_entry=entry)
      params = di4c.initial_student(model, _dconf(start, scale), 0, run.params)
      kl0 = di4c.marginal_kl(
        teacher, model, params, run.process, head, jax.random.key(5), latent_nodes=32
      )
      lines.append(f"| {start} {scale:g} | {max(kl0, 0.0):.2e} |")
      print(lines[-1], flush=True)
  text = "\n".join(lines)
  print(text)
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
