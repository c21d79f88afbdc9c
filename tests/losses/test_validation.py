"""Bad input to the loss API raises ValueError/TypeError naming the problem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import projnce_jax as pj

Z = jnp.ones((8, 4)) + jnp.arange(32.0).reshape(8, 4)
Y = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])


@pytest.mark.parametrize("call,exc,words", [
    (lambda: pj.losses.projnce(Z[0], Y), ValueError, "rank 2"),
    (lambda: pj.losses.projnce(Z, Y[:5]), ValueError, "length 5"),
    (lambda: pj.losses.projnce(Z, Y[:, None]), ValueError, "rank 1"),
    (lambda: pj.losses.projnce(Z, Y.astype(jnp.float32)), TypeError, "integers"),
    (lambda: pj.losses.projnce(Z.astype(jnp.int32), Y), TypeError, "floating"),
    (lambda: pj.losses.projnce(Z, Y, temperature=0.0), ValueError, "temperature must be > 0"),
    (lambda: pj.losses.projnce(Z, Y, temperature=-1.0), ValueError, "temperature"),
    (lambda: pj.losses.projnce(Z, Y, positive="centriod"), ValueError,
     "Unknown positive projection 'centriod'"),
    (lambda: pj.losses.projnce(Z, Y, positive="sample"), ValueError, "positive projection"),
    (lambda: pj.losses.projnce(Z, Y, negative="nope"), ValueError, "negative projection"),
    (lambda: pj.losses.projnce(Z, Y, impl="fast"), ValueError, "Unknown impl 'fast'"),
    (lambda: pj.losses.projnce(Z, Y, impl="ring"), ValueError, "needs axis_name"),
    (lambda: pj.losses.projnce(Z, Y, positive="orthogonal", num_classes=5), ValueError,
     "d >= num_classes, got d=4 < num_classes=5"),
    (lambda: pj.losses.projnce(Z, Y, positive="orthogonal"), ValueError, "need num_classes"),
    (lambda: pj.losses.projnce(Z, Y, positive="mlp", num_classes=4), ValueError, "params"),
    (lambda: pj.losses.projnce(Z, Y, num_classes=3), ValueError,
     "labels must lie in [0, num_classes=3), got values in [0, 3]"),
    (lambda: pj.losses.projnce(Z, Y - 1, num_classes=4), ValueError, "[-1, 2]"),
    (lambda: pj.losses.projnce(Z, Y, block_size=0), ValueError, "block_size"),
    (lambda: pj.losses.projnce(Z, Y, mask=jnp.ones(3, bool)), ValueError, "mask"),
    (lambda: pj.losses.projnce(Z, Y, positive=jnp.ones((4, 3)), num_classes=4), ValueError,
     "[num_classes, d] = [4, 4]"),
    (lambda: pj.losses.infonce(Z), ValueError, "rank 3"),
    (lambda: pj.losses.infonce(Z[:, None, :]), ValueError, "at least 2 views"),
    (lambda: pj.losses.cross_entropy(Z[:, :3], Y), ValueError, "[0, 3), got values in [0, 3]"),
    (lambda: pj.losses.cross_entropy(Z, Y[:3]), ValueError, "labels must have shape [8]"),
])
def test_bad_input_is_named(call, exc, words):
  with pytest.raises(exc) as info:
    call()
  assert words in str(info.value)


def test_traced_labels_are_not_range_checked_but_jit_works():
  loss, _ = jax.jit(lambda z, y: pj.losses.projnce(z, y, num_classes=4))(Z, Y)
  assert np.isfinite(float(loss))


def test_checked_mode_names_non_finite_embeddings():
  from jax.experimental import checkify
  z = Z.at[2, 1].set(jnp.nan).at[5, 0].set(jnp.inf)
  err, (loss, _) = jax.jit(pj.losses.checked(pj.losses.projnce))(z, Y)
  assert np.isnan(float(loss))  # unchecked value still propagates NaN
  with pytest.raises(checkify.JaxRuntimeError, match="2 of 32 entries of z are NaN or inf"):
    err.throw()
  err, _ = jax.jit(pj.losses.checked(pj.losses.supcon))(Z, Y)
  err.throw()  # finite input: no error
