"""Scale: planned memory without N x N buffers, the ring's program size, bfloat16 error.

The memory tests only compile (nothing runs): XLA's planned temporary bytes for one
forward+backward at N = 16,384 rows (d = 32) must stay below a quarter of a single N x N
float32 matrix (one device) or half of the local n x N block (8 devices, ring; its key block is n x n = n x N/8), for the paths
users call: no `num_classes` for the data-dependent projections, InfoNCE's instance path,
every projection as positive and as negative under `blockwise` and `ring`.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import projnce_jax as pj

N, D, M = 16384, 32, 16
AXIS = "data"
DEVICES = 8


def _mesh():
  return jax.make_mesh((DEVICES,), (AXIS,), devices=jax.devices()[:DEVICES],
                       axis_types=(jax.sharding.AxisType.Auto,))


def _kwargs(positive, negative):
  """Data-dependent pairs run as users call them (no num_classes); tables need M."""
  kw = dict(positive=positive, negative=negative)
  if {positive, negative} & set(pj.losses.CLASS_TABLE):
    kw["num_classes"] = M
  if "mlp" in (positive, negative):
    kw["params"] = pj.losses.init_mlp_params(jax.random.key(0), num_classes=M, dim=D,
                                             hidden=16)
  return kw


def _planned_temp_bytes(fn, *args) -> int:
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def _fwd_bwd(loss_fn):
  return lambda z, y: jax.value_and_grad(lambda z_: loss_fn(z_, y)[0])(z)


def _one_device_bytes(loss_fn, rows=N):
  z = jax.ShapeDtypeStruct((rows, D), jnp.float32)
  y = jax.ShapeDtypeStruct((rows,), jnp.int32)
  return _planned_temp_bytes(_fwd_bwd(loss_fn), z, y)


def _ring_bytes(loss_fn):
  """Per-device planned bytes of a shard_map'd fwd+bwd over 8 devices (n = N / 8)."""
  f = jax.shard_map(_fwd_bwd(lambda z, y: loss_fn(z, y, AXIS)), mesh=_mesh(),
                    in_specs=(P(AXIS), P(AXIS)), out_specs=(P(), P(AXIS)), check_vma=True)
  return _planned_temp_bytes(f, jax.ShapeDtypeStruct((N, D), jnp.float32),
                             jax.ShapeDtypeStruct((N,), jnp.int32))


ONE_DEVICE_BOUND = 0.25 * N * N * 4        # a quarter of one N x N float32 matrix
RING_BOUND = 0.5 * (N // DEVICES) * N * 4  # half the local n x N block (n = N / 8)

PROJ = pj.losses.PROJECTIONS
# Every projection as positive against SupCon's negatives and against a class negative,
# and every class negative against the centroid (the class-level path for both roles).
BLOCKWISE_PAIRS = sorted({(p, "sample") for p in PROJ} | {(p, "centroid") for p in PROJ} |
                         {("centroid", n) for n in PROJ} | {("kernel", "median")})


@pytest.mark.parametrize("positive,negative", BLOCKWISE_PAIRS)
def test_blockwise_plans_no_n_by_n_buffer(positive, negative):
  kw = _kwargs(positive, negative)
  planned = _one_device_bytes(
      lambda z, y: pj.losses.projnce(z, y, impl="blockwise", **kw))
  assert planned < ONE_DEVICE_BOUND, (planned / (N * N * 4), "of an N x N f32 matrix")


@pytest.mark.parametrize("positive", PROJ)
def test_ring_plans_no_n_by_n_buffer(positive):
  kw = _kwargs(positive, "sample")
  planned = _ring_bytes(
      lambda z, y, axis: pj.losses.projnce(z, y, impl="ring", axis_name=axis, **kw))
  assert planned < RING_BOUND, (planned / ((N // DEVICES) * N * 4), "of the n x N block")


@pytest.mark.parametrize("num_classes", [None, 100])
@pytest.mark.parametrize("impl", ["blockwise", "ring"])
def test_supcon_plans_no_n_by_n_buffer(impl, num_classes):
  if impl == "ring":
    planned = _ring_bytes(lambda z, y, axis: pj.losses.supcon(
        z, y, impl=impl, axis_name=axis, num_classes=num_classes))
    assert planned < RING_BOUND
  else:
    planned = _one_device_bytes(
        lambda z, y: pj.losses.supcon(z, y, impl=impl, num_classes=num_classes))
    assert planned < ONE_DEVICE_BOUND


@pytest.mark.parametrize("impl", ["blockwise", "ring"])
def test_infonce_plans_no_n_by_n_buffer(impl):
  def loss_fn(z, y, axis=None):
    del y
    return pj.losses.infonce(z.reshape(-1, 2, D), impl=impl, axis_name=axis)

  if impl == "ring":
    assert _ring_bytes(loss_fn) < RING_BOUND
  else:
    assert _one_device_bytes(loss_fn) < ONE_DEVICE_BOUND


def test_dense_class_negatives_plan_no_n_by_n_buffer():
  """With class negatives the impl is irrelevant: even 'dense' holds no [n, K] block."""
  planned = _one_device_bytes(
      lambda z, y: pj.losses.projnce(z, y, positive="median", negative="kernel"))
  assert planned < ONE_DEVICE_BOUND


# The ring's compiled program does not grow with the device count --------------------------

_RING_SIZE_SCRIPT = textwrap.dedent("""
    import json, re, jax, jax.numpy as jnp
    from jax.sharding import PartitionSpec as P
    import projnce_jax as pj
    out = {}
    for devices in (8, 64):
      mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices],
                           axis_types=(jax.sharding.AxisType.Auto,))
      f = jax.shard_map(
          lambda z, y: jax.value_and_grad(lambda z_: pj.losses.supcon(
              z_, y, impl="ring", axis_name="data", block_size=16)[0])(z),
          mesh=mesh, in_specs=(P("data"), P("data")), out_specs=(P(), P("data")))
      args = (jax.ShapeDtypeStruct((devices * 32, 16), jnp.float32),
              jax.ShapeDtypeStruct((devices * 32,), jnp.int32))
      text = jax.jit(f).lower(*args).compile().as_text()
      ops = re.findall(r"= [a-z0-9\\[\\]{},]+ ([a-z][a-z0-9-]*)\\(", text)
      out[devices] = dict(chars=len(text), ops=len(ops),
                          permutes=text.count("collective-permute"))
    print(json.dumps(out))
""")


def test_ring_program_size_does_not_grow_with_devices():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=64"
  env["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run([sys.executable, "-c", _RING_SIZE_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=600, check=True)
  import json
  sizes = {int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
  small, large = sizes[8], sizes[64]
  assert small["ops"] > 0 and small["permutes"] > 0
  # The same permutes at 8 and 64 devices (an unrolled ring has 8x as many) and nearly
  # the same instructions (collectives over more devices may lower to a few more).
  assert large["permutes"] == small["permutes"], sizes
  assert large["ops"] <= 1.05 * small["ops"], sizes
  # Only the permutation tables grow (a few characters per device).
  assert large["chars"] < 1.2 * small["chars"], sizes


# bfloat16 -------------------------------------------------------------------------------

BF16_RTOL = 1e-2  # loss, relative to float32 on the same (bf16-rounded) input
BF16_GRAD_RTOL = 5e-2  # gradient, relative Frobenius error


def _bf16_cases():
  cases = []
  for impl in ("dense", "blockwise", "ring"):
    cases.append(("supcon", impl, None))
    cases.append(("infonce", impl, None))
  cases += [("supcon", "blockwise", 10), ("projnce-kernel-median", "blockwise", None),
            ("projnce-mlp-sample", "ring", 10)]
  return cases


def _loss(kind, impl, num_classes, axis):
  def fn(z, y):
    kw = dict(impl=impl, axis_name=axis, block_size=16)
    if kind == "supcon":
      return pj.losses.supcon(z, y, num_classes=num_classes, **kw)[0]
    if kind == "infonce":
      return pj.losses.infonce(z.reshape(-1, 2, z.shape[1]), **kw)[0]
    _, positive, negative = kind.split("-")
    extra = {}
    if "mlp" in (positive, negative):
      extra["params"] = pj.losses.init_mlp_params(jax.random.key(0), num_classes=num_classes,
                                                  dim=z.shape[1], hidden=16)
    return pj.losses.projnce(z, y, positive=positive, negative=negative,
                             num_classes=num_classes, **extra, **kw)[0]
  return fn


@pytest.mark.parametrize("kind,impl,num_classes", _bf16_cases())
def test_bfloat16_matches_float32(kind, impl, num_classes):
  rng = np.random.default_rng(0)
  n, d = 128, 32
  y = jnp.asarray(np.repeat(rng.integers(0, 10, n // 2), 2), jnp.int32)
  z16 = jnp.asarray(rng.standard_normal((n, d)) + 2.0 * np.eye(10, d)[np.asarray(y)],
                    jnp.bfloat16)
  axis = AXIS if impl == "ring" else None
  fn = _loss(kind, impl, num_classes, axis)
  if axis is not None:
    fn = jax.shard_map(fn, mesh=_mesh(), in_specs=(P(AXIS), P(AXIS)), out_specs=P(),
                       check_vma=True)
  vg = jax.jit(jax.value_and_grad(fn))
  l16, g16 = vg(z16, y)
  l32, g32 = vg(z16.astype(jnp.float32), y)
  assert l16.dtype == jnp.float32 and g16.dtype == jnp.bfloat16
  np.testing.assert_allclose(float(l16), float(l32), rtol=BF16_RTOL)
  g16, g32 = np.asarray(g16, np.float32), np.asarray(g32)
  assert np.linalg.norm(g16 - g32) <= BF16_GRAD_RTOL * np.linalg.norm(g32)


def test_bfloat16_similarities_are_bfloat16_matmuls():
  """The N x N similarity products run on bf16 operands with float32 accumulation."""
  z = jax.ShapeDtypeStruct((256, 32), jnp.bfloat16)
  y = jax.ShapeDtypeStruct((256,), jnp.int32)
  text = jax.jit(jax.grad(lambda z_, y_: pj.losses.supcon(z_, y_, impl="blockwise")[0])).lower(
      z, y).as_text()
  dots = [line for line in text.splitlines() if "dot_general" in line]
  assert dots
  assert any("bf16" in line.split("->")[0] and "f32" in line.split("->")[-1] for line in dots)


@pytest.mark.parametrize("impl,reduced", [("dense", False), ("blockwise", False),
                                          ("ring", True)])
def test_supcon_without_num_classes_gathers_rows_instead_of_reducing_a_table(impl, reduced):
  """Without num_classes there is one class slot per row of the global batch: dense and
  blockwise gather the rows (their all-pairs term gathers the same rows) and sum each class
  locally; no [N, d] table is all-reduced. The ring, which never gathers rows, keeps the
  all-reduce."""
  n = 1024

  def loss(z, y):
    return pj.losses.supcon(z, y, axis_name=AXIS, impl=impl)

  fn = jax.shard_map(_fwd_bwd(loss), mesh=_mesh(), in_specs=(P(AXIS), P(AXIS)),
                     out_specs=(P(), P(AXIS)), check_vma=True)
  text = jax.jit(fn).lower(jax.ShapeDtypeStruct((n, D), jnp.float32),
                           jax.ShapeDtypeStruct((n,), jnp.int32)).compile().as_text()
  table = f"f32[{n},{D}]"
  reduces = [l for l in text.splitlines() if " all-reduce(" in l and table in l.split("=")[1]
             .split("all-reduce(")[0]]
  assert bool(reduces) == reduced, reduces
  if not reduced:
    gathers = [l for l in text.splitlines() if " all-gather(" in l and table in l]
    assert len(gathers) == 1, gathers   # one gather of the rows serves both terms


@pytest.mark.parametrize("n", [256, 8192])   # one row block; streamed row blocks
def test_bfloat16_kernel_projection_products_are_bfloat16(n):
  """On bfloat16 input the matrix products the kernel projection adds (its own-class
  weights m . z and weighted sums w z, and both again in the backward pass) run on
  bfloat16 operands with float32 accumulation, like the similarity products: the program
  of positive="kernel" has every product of positive="centroid" plus >= 4 such ones."""
  import collections  # pylint: disable=g-import-not-at-top
  z = jax.ShapeDtypeStruct((n, 32), jnp.bfloat16)
  y = jax.ShapeDtypeStruct((n,), jnp.int32)

  def dots(positive):
    fn = jax.grad(lambda z_, y_: pj.losses.projnce(z_, y_, positive=positive,
                                                   impl="blockwise")[0])
    text = jax.jit(fn).lower(z, y).as_text()
    return collections.Counter(line.split(":")[-1].strip() for line in text.splitlines()
                               if "dot_general" in line)

  added = dots("kernel") - dots("centroid")
  assert sum(added.values()) >= 4, added
  for signature in added:
    operands, result = signature.split("->")
    assert operands.count("bf16") == 2 and "f32" in result, signature


@pytest.mark.parametrize("num_classes", [None, 10])
def test_bfloat16_class_level_products_are_bfloat16_in_both_passes(num_classes):
  """The class-level LSE evaluated as one [n, K] block (K <= 512 slots) runs its forward
  and backward products on bfloat16 operands (float32 accumulation): every product of
  ProjNCE's fwd+bwd program on bfloat16 input does."""
  z = jax.ShapeDtypeStruct((256, 32), jnp.bfloat16)
  y = jax.ShapeDtypeStruct((256,), jnp.int32)
  fn = jax.grad(lambda z_, y_: pj.losses.projnce(z_, y_, num_classes=num_classes,
                                                 impl="blockwise")[0])
  text = jax.jit(fn).lower(z, y).as_text()
  dots = [line.split(":")[-1] for line in text.splitlines() if "dot_general" in line]
  assert len(dots) >= 5
  for signature in dots:
    operands, result = signature.split("->")
    assert operands.count("bf16") == 2 and "f32" in result, signature
