"""Opt-in checked mode: bad inputs under jit raise instead of giving a number.

By default a non-finite embedding makes the loss NaN (never hidden), and under jit a label
outside [0, num_classes) makes its row invalid (counted in aux["num_invalid_labels"]). For
debugging, wrap any loss of this package with `checked`; it works under jit via
`jax.experimental.checkify`.
"""

import functools

import jax.numpy as jnp
from jax.experimental import checkify


def checked(loss_fn):
  """Wraps `loss_fn(z, ...)` so that bad inputs or a non-finite loss raise a clear error.

  Checked: NaN/inf entries of `z`, a `temperature=` that is not > 0 (traced too), labels
  outside [0, num_classes) (`aux["num_invalid_labels"]`), and a loss that is not finite.

  Args:
    loss_fn: a loss of this package whose first argument is the embeddings.

  Returns:
    A function with the same arguments returning `(error, (loss, aux))`; call
    `error.throw()` to raise (a `checkify.JaxRuntimeError` naming what was wrong). Jit
    the returned function, not the inner one.

  Example:
    >>> err, (loss, aux) = jax.jit(checked(projnce))(z, labels)
    >>> err.throw()
  """

  @functools.wraps(loss_fn)
  def fn(z, *args, **kwargs):
    bad = jnp.sum(~jnp.isfinite(z))
    checkify.check(bad == 0, "non-finite embeddings: {bad} of {total} entries of z are NaN "
                   "or inf", bad=bad, total=jnp.asarray(z.size))
    if kwargs.get("temperature") is not None:
      t = jnp.asarray(kwargs["temperature"], jnp.float32)
      checkify.check(jnp.all(t > 0), "temperature must be > 0, got {t}", t=t)
    loss, aux = loss_fn(z, *args, **kwargs)
    if "num_invalid_labels" in aux:
      checkify.check(aux["num_invalid_labels"] == 0, "{k} row(s) have labels outside "
                     "[0, num_classes)", k=aux["num_invalid_labels"])
    checkify.check(jnp.isfinite(loss), "the loss is not finite: {loss}", loss=loss)
    return loss, aux

  return checkify.checkify(fn)
