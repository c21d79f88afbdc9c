"""Properties 1-5, 7, 8, 9 of the ProjNCE spec (section 6), float64 against references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import projnce_jax as pj
from projnce_jax.losses import projections as proj_lib

from . import reference as ref

pytestmark = pytest.mark.usefixtures("x64")

PAIRS = list(itertools.product(pj.losses.PROJECTIONS, pj.losses.NEGATIVES))
# Every positive against SupCon's negatives, and every negative against the centroid.
SOME_PAIRS = sorted({(p, "sample") for p in pj.losses.PROJECTIONS} |
                    {("centroid", n) for n in pj.losses.NEGATIVES})


def _batch(seed, n=24, d=8, m=4, scale=1.0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, m, n)
  z = rng.standard_normal((n, d)) * scale + 2.0 * np.eye(m, d)[y]
  return z, y


def _kwargs(positive, negative, m, d, seed=0):
  kw = dict(positive=positive, negative=negative, num_classes=m)
  if "mlp" in (positive, negative):
    kw["params"] = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64),
        pj.losses.init_mlp_params(jax.random.key(seed), num_classes=m, dim=d, hidden=16))
  return kw


def _tables(kw, m, d):
  """The class tables (orthogonal / mlp) the reference needs, in float64."""
  def table(name):
    if name == "orthogonal":
      return pj.losses.orthogonal_table(m, d)
    if name == "mlp":
      return np.asarray(pj.losses.mlp_table(kw["params"], m))
    return None
  return dict(pos_table=table(kw["positive"]), neg_table=table(kw["negative"]))


# Property 1 ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_supcon_equals_supcontrast_l_out(seed, temperature):
  z, y = _batch(seed, n=32, d=16, m=4)
  loss, aux = pj.losses.supcon(jnp.asarray(z), jnp.asarray(y), temperature=temperature)
  expected = ref.supcontrast_l_out(z, y, temperature)
  np.testing.assert_allclose(float(loss), expected, rtol=0, atol=1e-10)
  assert int(aux["num_anchors"]) == 32
  assert loss.dtype == jnp.float64


# Property 2 ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_infonce_equals_nt_xent(seed):
  rng = np.random.default_rng(seed)
  zv = rng.standard_normal((16, 2, 8))
  loss, aux = pj.losses.infonce(jnp.asarray(zv), temperature=0.5)
  np.testing.assert_allclose(float(loss), ref.nt_xent(zv, 0.5), rtol=0, atol=1e-10)
  assert int(aux["num_anchors"]) == 32


# Property 3 ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", pj.losses.PROJECTIONS)
def test_same_projection_has_zero_adjustment(name):
  z, y = _batch(3, d=8, m=4)
  kw = _kwargs(name, name, 4, 8)
  loss, aux = pj.losses.projnce(jnp.asarray(z), jnp.asarray(y), beta=1.0, **kw)
  assert float(aux["adjustment"]) == 0.0
  assert float(loss) == float(aux["infonce_term"])


# Property 5 (and the definitions of section 2-4) ------------------------------------------
@pytest.mark.parametrize("positive,negative", PAIRS)
def test_fast_path_equals_reference(positive, negative):
  m, d = 4, 8
  z, y = _batch(7, n=20, d=d, m=m)
  y[0] = 3  # make sure a singleton class exists
  y[y == 3] = 2
  y[0] = 3
  kw = _kwargs(positive, negative, m, d)
  loss, aux = pj.losses.projnce(jnp.asarray(z), jnp.asarray(y), temperature=0.2, beta=0.7,
                                **kw)
  ref_loss, ref_aux = ref.projnce(z, y, positive=positive, negative=negative,
                                  temperature=0.2, beta=0.7, **_tables(kw, m, d))
  np.testing.assert_allclose(float(loss), ref_loss, rtol=0, atol=1e-10)
  for key in ("infonce_term", "adjustment", "mi_lower_bound", "positive_score"):
    np.testing.assert_allclose(float(aux[key]), ref_aux[key], rtol=0, atol=1e-10, err_msg=key)
  assert int(aux["num_anchors"]) == ref_aux["num_anchors"]


@pytest.mark.parametrize("impl", ["dense", "blockwise"])
def test_kernel_bandwidth_and_mask(impl):
  z, y = _batch(11, n=30, d=8, m=3, scale=0.3)
  mask = np.ones(30, bool)
  mask[[2, 5, 17]] = False
  for positive in ("kernel", "median", "centroid"):
    loss, aux = pj.losses.projnce(jnp.asarray(z), jnp.asarray(y), positive=positive,
                                  bandwidth=0.5, mask=jnp.asarray(mask), impl=impl,
                                  block_size=8)
    ref_loss, ref_aux = ref.projnce(z[mask], y[mask], positive=positive, bandwidth=0.5)
    np.testing.assert_allclose(float(loss), ref_loss, atol=1e-10)
    np.testing.assert_allclose(float(aux["mi_lower_bound"]), ref_aux["mi_lower_bound"],
                               atol=1e-10)


# Property 4 ------------------------------------------------------------------------------
@pytest.mark.parametrize("positive,negative", [("centroid", "sample"), ("median", "kernel"),
                                               ("kernel", "sample"), ("orthogonal", "centroid"),
                                               ("mlp", "median")])
def test_permutation_and_relabelling_invariance(positive, negative):
  m, d = 4, 8
  z, y = _batch(5, n=24, d=d, m=m)
  kw = _kwargs(positive, negative, m, d)
  loss, aux = pj.losses.projnce(jnp.asarray(z), jnp.asarray(y), **kw)
  perm = np.random.default_rng(0).permutation(len(y))
  loss_p, aux_p = pj.losses.projnce(jnp.asarray(z[perm]), jnp.asarray(y[perm]), **kw)
  np.testing.assert_allclose(float(loss_p), float(loss), atol=1e-12)
  for key in pj.losses.AUX_KEYS:
    np.testing.assert_allclose(float(aux_p[key]), float(aux[key]), atol=1e-12)
  if positive in pj.losses.DATA_DEPENDENT and negative not in pj.losses.CLASS_TABLE:
    relabel = np.array([7, 2, 30, 11])  # arbitrary distinct ids
    kw_free = dict(positive=positive, negative=negative)
    for extra in ({}, {"num_classes": 31}, {"num_classes": 64}):
      loss_r, aux_r = pj.losses.projnce(jnp.asarray(z[perm]), jnp.asarray(relabel[y[perm]]),
                                        **kw_free, **extra)
      np.testing.assert_allclose(float(loss_r), float(loss), atol=1e-12)
      np.testing.assert_allclose(float(aux_r["adjustment"]), float(aux["adjustment"]),
                                 atol=1e-12)


# Property 7 ------------------------------------------------------------------------------
def _gaussian_mixture(m=4, d=8, sep=1.2, sigma=1.0):
  means = sep * np.eye(m, d)

  def sample(rng, n):
    y = rng.integers(0, m, n)
    return means[y] + sigma * rng.standard_normal((n, d)), y

  # I(X;C) = H(C) - E[H(C|X)], with the exact posterior, by Monte Carlo.
  x, _ = sample(np.random.default_rng(123), 200_000)
  logits = -np.sum((x[:, None, :] - means[None]) ** 2, axis=2) / (2 * sigma**2)
  log_post = logits - logsumexp_np(logits)
  mi = np.log(m) + np.mean(np.sum(np.exp(log_post) * log_post, axis=1))
  return sample, mi, means


def logsumexp_np(a):
  mx = a.max(axis=1, keepdims=True)
  return mx + np.log(np.exp(a - mx).sum(axis=1, keepdims=True))


def _mixture_batches(m=4, d=8, n=256, batches=12):
  sample, mi, means = _gaussian_mixture(m, d)
  assert 0.3 < mi < np.log(m)
  rng = np.random.default_rng(0)
  return [sample(rng, n) for _ in range(batches)], mi, means


# Every projection in each role by default (one compilation per pair); the other
# combinations of the same code paths in the `slow` run.
@pytest.mark.parametrize("positive,negative", [
    pair if pair in SOME_PAIRS else pytest.param(*pair, marks=pytest.mark.slow)
    for pair in PAIRS])
def test_mi_lower_bound_holds(positive, negative):
  m, d = 4, 8
  data, mi, _ = _mixture_batches(m, d)
  xs = jnp.asarray(np.stack([x for x, _ in data]))
  ys = jnp.asarray(np.stack([y for _, y in data]))
  kw = _kwargs(positive, negative, m, d)
  bound = jax.jit(jax.vmap(
      lambda x, y, t, p: pj.losses.projnce(x, y, temperature=t, **{**kw, "params": p})[1]
      ["mi_lower_bound"], in_axes=(0, 0, None, None)))
  for tau in (0.1, 0.5, 1.0):
    est = float(jnp.mean(bound(xs, ys, tau, kw.get("params"))))
    assert est < mi, (positive, negative, tau, est, mi)


def test_beta0_violates_the_bound_and_the_adjustment_restores_it():
  m, n = 4, 256
  data, mi, means = _mixture_batches(m, 8, n)
  # A scaled-up g+ (the true class directions times 10): without the adjustment the
  # "estimate" log(N-1) - infonce_term exceeds I(X;C) (and log M); with it, it is a bound.
  table = 10.0 * means / np.linalg.norm(means, axis=1, keepdims=True)  # a NumPy table
  no_adj, full = [], []
  for x, y in data:
    _, aux = pj.losses.projnce(jnp.asarray(x), jnp.asarray(y), positive=table,
                               negative="sample", beta=0.0, num_classes=m, temperature=0.1)
    no_adj.append(np.log(n - 1) - float(aux["infonce_term"]))
    full.append(float(aux["mi_lower_bound"]))
  assert np.mean(no_adj) > mi and np.mean(no_adj) > np.log(m)
  assert np.mean(full) < mi


# Property 8 ------------------------------------------------------------------------------
@pytest.mark.parametrize("positive,negative", SOME_PAIRS)
def test_edge_cases_stay_finite(positive, negative):
  m, d = 4, 8
  kw = _kwargs(positive, negative, m, d)
  rng = np.random.default_rng(0)
  cases = {
      "singleton_class": (rng.standard_normal((9, d)), np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])),
      "one_class": (rng.standard_normal((8, d)), np.zeros(8, int)),
      "absent_classes": (rng.standard_normal((8, d)), np.array([1] * 4 + [3] * 4)),
      "tiny_tau": (rng.standard_normal((12, d)) * 5, rng.integers(0, m, 12)),
      "zero_vectors": (np.concatenate([np.zeros((3, d)), rng.standard_normal((7, d))]),
                       np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 0])),
      "all_distinct": (rng.standard_normal((4, d)), np.arange(4)),
  }
  for name, (z, y) in cases.items():
    tau = 0.01 if name == "tiny_tau" else 0.1
    fn = lambda z_: pj.losses.projnce(z_, jnp.asarray(y), temperature=tau, **kw)
    (loss, aux), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(jnp.asarray(z))
    assert np.isfinite(float(loss)), name
    assert all(np.isfinite(float(v)) for v in aux.values()), name
    assert np.all(np.isfinite(np.asarray(grad))), name
  # All-distinct labels leave a data-dependent g+ undefined for every anchor: loss 0.
  if positive in pj.losses.DATA_DEPENDENT:
    loss, aux = pj.losses.projnce(jnp.asarray(cases["all_distinct"][0]), jnp.arange(4), **kw)
    assert float(loss) == 0.0 and int(aux["num_anchors"]) == 0


def test_singleton_anchor_is_excluded_not_nan():
  z, y = _batch(2, n=10)
  y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
  _, aux = pj.losses.supcon(jnp.asarray(z), jnp.asarray(y))
  assert int(aux["num_anchors"]) == 9


@pytest.mark.parametrize("positive,negative", [("centroid", "sample"), ("median", "kernel"),
                                               ("orthogonal", "sample"), ("mlp", "centroid")])
def test_bfloat16_inputs_match_float32(positive, negative):
  z, y = _batch(4, n=64, d=16, m=4)
  kw = _kwargs(positive, negative, 4, 16)
  z16 = jnp.asarray(z, jnp.bfloat16)
  with jax.enable_x64(False):
    kw32 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32)
                                  if hasattr(a, "dtype") else a, kw)
    loss16, _ = pj.losses.projnce(z16, jnp.asarray(y, jnp.int32), **kw32)
    loss32, _ = pj.losses.projnce(z16.astype(jnp.float32), jnp.asarray(y, jnp.int32), **kw32)
  assert loss16.dtype == jnp.float32
  # bfloat16 matmuls (8-bit mantissa): scores z.g/tau carry a relative error ~2^-8.
  np.testing.assert_allclose(float(loss16), float(loss32), rtol=1e-2)
  ref_loss, _ = ref.projnce(np.asarray(z16.astype(jnp.float32)), y, positive=positive,
                            negative=negative, **_tables(kw, 4, 16))
  np.testing.assert_allclose(float(loss16), ref_loss, rtol=1e-2)


# Property 9 ------------------------------------------------------------------------------
@pytest.fixture
def frozen_kernel_weights(monkeypatch):
  """Makes the kernel weights constants so finite differences see what autodiff sees.

  The `kernel` projection puts its weights under stop_gradient (spec section 2): its
  gradient treats them as constants, so the numerical check freezes them at the base point.
  """
  cache = {}
  original = proj_lib.epanechnikov

  def frozen(sq_dist, bandwidth):
    key = tuple(sq_dist.shape)
    if key not in cache:
      cache[key] = np.asarray(original(sq_dist, bandwidth))
    return jnp.asarray(cache[key])

  monkeypatch.setattr(proj_lib, "epanechnikov", frozen)
  with jax.disable_jit():  # op by op, so the weights are concrete and nothing is cached
    yield cache


# Every projection's gradient in each role (as g+ against "sample", as g- against "centroid")
# by default; the other combinations of the same code paths in the `slow` run.
@pytest.mark.parametrize("positive,negative", [
    pair if pair in SOME_PAIRS else pytest.param(*pair, marks=pytest.mark.slow)
    for pair in PAIRS])
def test_check_grads(positive, negative, frozen_kernel_weights):
  m, d = 3, 5
  z, y = _batch(9, n=10, d=d, m=m, scale=0.5)
  kw = _kwargs(positive, negative, m, d)
  fn = lambda z_: pj.losses.projnce(z_, jnp.asarray(y), temperature=0.5, beta=1.0, **kw)[0]
  fn(jnp.asarray(z))  # fixes the kernel weights at the base point
  check_grads(fn, (jnp.asarray(z),), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
  if "mlp" in (positive, negative):
    fp = lambda p: pj.losses.projnce(jnp.asarray(z), jnp.asarray(y), temperature=0.5,
                                     **{**kw, "params": p})[0]
    check_grads(fp, (kw["params"],), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_gradient_wrt_temperature():
  z, y = _batch(1)
  fn = lambda t: pj.losses.projnce(jnp.asarray(z), jnp.asarray(y), temperature=t)[0]
  check_grads(fn, (jnp.asarray(0.3),), order=1, modes=["rev"])


# jit and the other implementations ---------------------------------------------------------
@pytest.mark.parametrize("positive,negative", [("centroid", "sample"), ("median", "sample"),
                                               ("kernel", "centroid"), ("mlp", "sample")])
def test_jit_equals_no_jit(positive, negative):
  z, y = _batch(6)
  kw = _kwargs(positive, negative, 4, 8)
  f = lambda z_, y_, p: pj.losses.projnce(z_, y_, **{**kw, "params": p})
  eager = f(jnp.asarray(z), jnp.asarray(y), kw.get("params"))
  jitted = jax.jit(f)(jnp.asarray(z), jnp.asarray(y), kw.get("params"))
  np.testing.assert_allclose(float(jitted[0]), float(eager[0]), atol=1e-12)
  for key in pj.losses.AUX_KEYS:
    np.testing.assert_allclose(float(jitted[1][key]), float(eager[1][key]), atol=1e-12)


@pytest.mark.parametrize("block_size", [None, 1, 7, 64])
def test_blockwise_equals_dense_value_and_grad(block_size):
  z, y = _batch(8, n=40, d=8, m=5)
  mask = jnp.asarray(np.arange(40) % 9 != 4)

  def fn(impl):
    return jax.value_and_grad(lambda z_: pj.losses.projnce(
        z_, jnp.asarray(y), impl=impl, block_size=block_size, mask=mask)[0])(jnp.asarray(z))

  (l_d, g_d), (l_b, g_b) = fn("dense"), fn("blockwise")
  np.testing.assert_allclose(float(l_b), float(l_d), atol=1e-12)
  np.testing.assert_allclose(np.asarray(g_b), np.asarray(g_d), atol=1e-12)


def test_nan_propagates_to_the_loss():
  z, y = _batch(0)
  z[3, 2] = np.nan
  loss, _ = pj.losses.projnce(jnp.asarray(z), jnp.asarray(y))
  assert np.isnan(float(loss))


def test_cross_entropy_matches_reference():
  rng = np.random.default_rng(0)
  logits, y = rng.standard_normal((16, 5)), rng.integers(0, 5, 16)
  loss, aux = pj.losses.cross_entropy(jnp.asarray(logits), jnp.asarray(y))
  expected = np.mean(logsumexp_np(logits)[:, 0] - logits[np.arange(16), y])
  np.testing.assert_allclose(float(loss), expected, atol=1e-12)
  np.testing.assert_allclose(float(aux["accuracy"]), np.mean(logits.argmax(1) == y))


@pytest.mark.parametrize("positive,negative", [(p, "sample") for p in pj.losses.DATA_DEPENDENT]
                         + [("centroid", "kernel"), ("median", "centroid"), ("kernel", "kernel")])
def test_streamed_class_slots_without_num_classes_equal_reference(positive, negative):
  """No num_classes: slots are the distinct labels, streamed 2 slots at a time."""
  z, y = _batch(12, n=20, d=8, m=5)
  y = y * 13 + 100
  fn = lambda z_: pj.losses.projnce(z_, jnp.asarray(y), positive=positive, negative=negative,
                                    temperature=0.2, beta=0.7, block_size=2, impl="blockwise")
  (loss, aux), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(jnp.asarray(z))
  ref_loss, ref_aux = ref.projnce(z, y, positive=positive, negative=negative, temperature=0.2,
                                  beta=0.7)
  np.testing.assert_allclose(float(loss), ref_loss, atol=1e-10)
  np.testing.assert_allclose(float(aux["adjustment"]), ref_aux["adjustment"], atol=1e-10)
  dense = jax.grad(lambda z_: pj.losses.projnce(
      z_, jnp.asarray(y) - 100, positive=positive, negative=negative, temperature=0.2,
      beta=0.7, num_classes=53)[0])(jnp.asarray(z))
  np.testing.assert_allclose(np.asarray(grad), np.asarray(dense), atol=1e-10)


def test_an_eager_call_runs_one_compiled_program_per_shape_and_setting():
  """Outside a trace the loss is one jitted program (not ~100 op-by-op dispatches), reused
  by later calls of the same setting; inside the user's jit it is traced in place; both
  give the same value."""
  import importlib  # pylint: disable=import-outside-toplevel
  mod = importlib.import_module("projnce_jax.losses.projnce")
  z = jax.random.normal(jax.random.key(3), (12, 5))
  y = jnp.asarray([0, 1, 2] * 4)
  kw = dict(temperature=0.37, positive="kernel", bandwidth=0.8)
  eager, aux = pj.losses.projnce(z, y, **kw)
  before = mod._compiled.cache_info()
  again, _ = pj.losses.projnce(z + 1.0, y, **kw)     # same setting: the same program
  after = mod._compiled.cache_info()
  assert after.hits == before.hits + 1 and after.currsize == before.currsize
  pj.losses.projnce(z, y, **dict(kw, temperature=0.5))  # another setting: another one
  assert mod._compiled.cache_info().currsize == after.currsize + 1
  traced = jax.jit(lambda a, b: pj.losses.projnce(a, b, **kw)[0])(z, y)
  np.testing.assert_allclose(float(eager), float(traced), rtol=1e-6)
  assert mod._compiled.cache_info().currsize == after.currsize + 1  # traced in place
  assert float(again) != float(eager) and set(aux) == set(pj.losses.AUX_KEYS)


# The bound on request (beta = 0 losses) ------------------------------------------------------
@pytest.mark.parametrize("kind", ["supcon", "supcon_nc", "infonce"])
def test_mi_bound_is_computed_only_when_asked(kind):
  """supcon / infonce skip the class-level LSE of g+ unless mi_bound=True: the loss and its
  gradient are the same either way, aux loses exactly the two keys that need it, and the
  compiled program has one matrix product fewer."""
  z, y = _batch(11, n=32)
  if kind == "infonce":
    zz = jnp.asarray(z).reshape(16, 2, 8)
    fn = lambda z_, **k: pj.losses.infonce(z_, temperature=0.3, **k)
  else:
    zz = jnp.asarray(z)
    nc = dict(num_classes=4) if kind == "supcon_nc" else {}
    fn = lambda z_, **k: pj.losses.supcon(z_, jnp.asarray(y), temperature=0.3, **nc, **k)
  grad = lambda **k: jax.jit(jax.value_and_grad(lambda z_: fn(z_, **k), has_aux=True))
  (l0, aux0), g0 = grad()(zz)
  (l1, aux1), g1 = grad(mi_bound=True)(zz)
  assert float(l0) == float(l1)
  np.testing.assert_array_equal(np.asarray(g0), np.asarray(g1))
  assert set(aux1) == set(pj.losses.AUX_KEYS)
  assert set(aux1) - set(aux0) == {"adjustment", "mi_lower_bound"}
  for key in aux0:
    assert float(aux0[key]) == float(aux1[key]), key
  # With the bound, aux equals projnce's with beta = 0 (the definition).
  ref = (pj.losses.projnce(zz.reshape(32, 8), jnp.repeat(jnp.arange(16), 2), temperature=0.3,
                           beta=0.0) if kind == "infonce" else
         pj.losses.projnce(zz, jnp.asarray(y), temperature=0.3, beta=0.0, **nc))
  for key in pj.losses.AUX_KEYS:
    np.testing.assert_allclose(float(aux1[key]), float(ref[1][key]), atol=1e-12, err_msg=key)
  dots = lambda **k: grad(**k).lower(zz).compile().as_text().count(" dot(")
  assert dots() < dots(mi_bound=True)
