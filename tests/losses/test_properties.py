"""Property-based tests of the loss API: finite results or a clear error, never a silent NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import projnce_jax as pj

SETTINGS = settings(max_examples=6, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw):
  n = draw(st.integers(1, 24))
  d = draw(st.integers(1, 12))
  pattern = draw(st.sampled_from(["random", "single_class", "all_distinct", "sparse_ids"]))
  m = draw(st.integers(1, 6))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  if pattern == "single_class":
    y = np.zeros(n, int)
  elif pattern == "all_distinct":
    y = np.arange(n)
  elif pattern == "sparse_ids":  # absent classes between the present ones
    y = rng.choice([0, m + 3, 5 * m + 1], n)
  else:
    y = rng.integers(0, m, n)
  scale = draw(st.sampled_from([0.0, 1e-6, 1.0, 1e3]))
  z = rng.standard_normal((n, d)) * scale
  return z, y


@SETTINGS
@given(batch=batches(),
       positive=st.sampled_from(pj.losses.DATA_DEPENDENT),
       negative=st.sampled_from(pj.losses.DATA_DEPENDENT + ("sample",)),
       temperature=st.floats(0.01, 5.0),
       beta=st.sampled_from([0.0, 1.0, 10.0]),
       dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
       impl=st.sampled_from(["dense", "blockwise"]))
def test_data_dependent_losses_are_finite(batch, positive, negative, temperature, beta, dtype,
                                          impl):
  z, y = batch
  loss, aux = pj.losses.projnce(jnp.asarray(z, dtype), jnp.asarray(y), positive=positive,
                                negative=negative, temperature=temperature, beta=beta,
                                impl=impl)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(float(v)) for v in aux.values())
  assert 0 <= int(aux["num_anchors"]) <= len(y)


@SETTINGS
@given(batch=batches(), positive=st.sampled_from(pj.losses.CLASS_TABLE),
       num_classes=st.integers(1, 40), temperature=st.floats(0.01, 5.0))
def test_class_table_losses_are_finite_or_refused(batch, positive, num_classes, temperature):
  z, y = batch
  kw = {}
  if positive == "mlp":
    kw["params"] = pj.losses.init_mlp_params(jax.random.key(0), num_classes=num_classes,
                                             dim=z.shape[1], hidden=8)
  try:
    loss, aux = pj.losses.projnce(jnp.asarray(z, jnp.float32), jnp.asarray(y),
                                  positive=positive, num_classes=num_classes,
                                  temperature=temperature, **kw)
  except ValueError as e:
    # The only refusals: labels outside [0, num_classes) or d < num_classes (orthogonal).
    assert "labels must lie in" in str(e) or "d >= num_classes" in str(e), str(e)
    return
  assert np.isfinite(float(loss))
  assert all(np.isfinite(float(v)) for v in aux.values())


@SETTINGS
@given(n=st.integers(1, 10), d=st.integers(1, 6), bad=st.sampled_from([np.nan, np.inf]))
def test_non_finite_input_is_never_hidden(n, d, bad):
  z = np.random.default_rng(n * d).standard_normal((n + 1, d))
  z[0, 0] = bad
  y = np.zeros(n + 1, int)
  loss, _ = pj.losses.supcon(jnp.asarray(z, jnp.float32), jnp.asarray(y))
  assert not np.isfinite(float(loss))


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), 0.0, -0.1])
def test_invalid_temperatures_are_refused(temperature):
  with pytest.raises(ValueError, match="temperature"):
    pj.losses.supcon(jnp.ones((4, 2)), jnp.zeros(4, jnp.int32), temperature=temperature)
