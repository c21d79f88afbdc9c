"""Opt-in checked mode: NaN/inf embeddings raise instead of propagating to the loss.

By default a non-finite embedding makes the loss NaN (never hidden). For debugging, wrap
any loss of this package with `checked`; it works under jit via `jax.experimental.checkify`.
"""

import functools

import jax.numpy as jnp
from jax.experimental import checkify


def checked(loss_fn):
  """Wraps `loss_fn(z, ...)` so that NaN/inf entries in `z` raise a clear error.

  Args:
    loss_fn: a loss of this package whose first argument is the embeddings.

  Returns:
    A function with the same arguments returning `(error, (loss, aux))`; call
    `error.throw()` to raise (a `checkify.JaxRuntimeError` naming the count of bad
    entries). Jit the returned function, not the inner one.

  Example:
    >>> err, (loss, aux) = jax.jit(checked(projnce))(z, labels)
    >>> err.throw()
  """

  @functools.wraps(loss_fn)
  def fn(z, *args, **kwargs):
    bad = jnp.sum(~jnp.isfinite(z))
    checkify.check(bad == 0, "non-finite embeddings: {bad} of {total} entries of z are NaN "
                   "or inf", bad=bad, total=jnp.asarray(z.size))
    return loss_fn(z, *args, **kwargs)

  return checkify.checkify(fn)
