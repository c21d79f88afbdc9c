"""The docstring examples of the package run as doctests.

Each module's examples run with the module's own names plus a small shared namespace of
the inputs the examples name (embeddings `z`, `labels`, a `key`, a `config`, a `workdir`).
"""
import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import projnce_jax

MODULES = sorted(m.name for m in pkgutil.walk_packages(projnce_jax.__path__, "projnce_jax.")
                 if not m.name.endswith("__main__"))


def _namespace(tmp_path):
  import optax  # pylint: disable=g-import-not-at-top
  from projnce_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  key = jax.random.key(0)
  z = jax.random.normal(key, (256, 128))
  labels = jax.random.randint(jax.random.key(1), (256,), 0, 10)
  config = config_lib.base_config()
  import projnce_jax as pj  # pylint: disable=g-import-not-at-top
  return dict(jax=jax, jnp=jnp, np=np, optax=optax, pj=pj, projnce=pj.losses.projnce,
              key=key, z=z, labels=labels,
              view1=z[:128], view2=z[128:], config=config, workdir=str(tmp_path),
              beta=1.0, supcon_loss=jnp.float32(0.0))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path):
  module = importlib.import_module(name)
  tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  if not tests:
    pytest.skip("no examples")
  for test in tests:
    test.globs = {**vars(module), **_namespace(tmp_path)}
    report = []
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)[-3000:]
