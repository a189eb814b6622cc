"""End to end on the exact toolkit: Di4C beats its own teacher at 2 steps.

Teacher: the EXACT ideal product denoiser of a tiny correlated family
(Dirichlet(0.3) joint, S = D = 3). Its 2-step sampler has TV 0.249 from the
data; a distilled mixture student must get below half of that, with TV
computed exactly (lambda integrated on 32 Gauss-Legendre nodes).
"""

import numpy as np

from configs import tiny_distill
from mixture_dd import denoisers, distill, exact, exact_report


def test_student_beats_half_the_teachers_tv_at_two_steps(tmp_path):
  c = tiny_distill.get_config()
  c.data.data_dir = str(tmp_path / "tfds")
  c.model.update(width=32, depth=1, heads=2)  # small, so CI trains it in about a minute
  c.optim.update(lr=3e-3, schedule="cosine")
  result = distill.quick_distill(c, 1200)
  seen = result.losses
  s = result.setup
  assert np.isfinite(seen).all()

  probs = exact.make_family("dirichlet", 3, 3, 0)
  fn_t = denoisers.exact_view(s.teacher.denoise, s.teacher.frozen)
  fn_s = denoisers.exact_view(denoisers.from_network(s.model), result.params)
  tv = exact_report.tv_table(
    s.process,
    probs,
    3,
    {"teacher": (fn_t, False), "student": (fn_s, True)},
    [1, 2],
    num_latent_nodes=32,
  )
  np.testing.assert_allclose(tv["teacher"], [0.42214, 0.24910], atol=1e-4)
  assert tv["student"][1] < 0.5 * tv["teacher"][1], tv
  assert tv["student"][0] < tv["teacher"][0], tv
