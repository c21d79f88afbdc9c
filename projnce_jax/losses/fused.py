"""The fused all-pairs kernel: a Pallas kernel that keeps every score tile on chip.

The `sample` negative needs lse_i = log sum_{j in A(i)} exp(q_i . k_j) over every valid key
j of the global batch except the anchor itself. The XLA paths (`dense`, `blockwise`, `ring`)
write each [n, block] score tile to device memory and read it back several times; on a
GPU/TPU that makes them memory-bound. Here each program instance owns a block of rows,
loops over column blocks and keeps the [block_r, block_c] tile in registers / shared memory
(GPU) or VMEM (TPU); it writes only [block_r] statistics or [block_r, d] outputs
(FlashAttention-2's scheme, with no value matrix: the keys are the values).

Three kernels, one tile body each (docs: ../shared fused_kernel notes, and `FUSED.md` in
docs/):

- forward: online max / sum-exp over column blocks -> lse [R] (float32).
- backward, one weighted-attention shape  out_r = sum_c w_rc y_c  with
    query side ("q"): w_rc = g_r exp(s_rc - lse_r)  (row r an anchor, column c its key),
    key side   ("k"): w_rc = g_c exp(s_rc - lse_c)  (row r a key of anchor c).
  Every exponent is <= 0 on the unmasked entries (lse_r >= s_rc), so nothing overflows and
  no shared shift is needed. `cross_lse` (queries against other keys: the gathered `dense`
  batch, each ring step) runs "q" over query blocks and "k" over key blocks; `self_lse`
  (rows against themselves, one device) uses s_rc = s_cr and runs both sides in one pass,
  the (W + W^T) form of the CPU kernel: three N^2 d products for forward + backward.

Masks: column c is a key of row r when kid_c >= 0 and kid_c != qid_r, where qid is the
row's id and kid its id if it is a valid key, else -1 (padding and `mask`ed rows).

Backends. Each kernel has two drivers over the same tile body:
- "loop": a 1-D grid over row blocks with an in-kernel `fori_loop` over column blocks
  (JAX's Pallas GPU flash attention); compiled through Triton on GPU, and the driver run in
  Pallas interpret mode on CPU.
- "grid": a 2-D grid (rows "parallel", columns "arbitrary") with VMEM scratch
  accumulators (JAX's Pallas TPU flash attention): compiled through Mosaic on TPU.
The driver is chosen by the *lowering* platform through `jax.lax.platform_dependent`, so
one program is interpreted on CPU and compiled on GPU/TPU. One exception on CPU: inside
`shard_map(check_vma=True)` with device-varying operands, Pallas's interpreter fails on
varying-axis checks (JAX 0.10), so the CPU branch runs the same tile bodies in a plain
`lax.scan` over column blocks there.

Temperature: callers pass rows already scaled (q = z / tau, or sqrt(1/tau) z on both sides
for `self_lse`); the temperature's gradient flows through that scaling.
"""

import functools
import inspect
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from projnce_jax.losses._common import compute_dtype
from projnce_jax.losses._common import to_varying
from projnce_jax.losses.sample import _ring_perm

# Block sizes per backend: (block_r, block_c) rows x columns of one score tile, plus the
# Triton launch settings. Each entry's reason is beside it. Untuned on a real chip until the
# accelerator check's block sweep (benchmarks/accelerator_check.py) has run there.
BLOCKS = {
    # FlashAttention-2's H100 choice at head dim 128: 128 x 64 tiles, 8 warps keep the
    # [128, 64] f32 tile plus a [128, 128] f32 accumulator in registers; 2 pipeline stages.
    "gpu": dict(block_r=128, block_c=64, num_warps=8, num_stages=2),
    # Mosaic: blocks aligned to (16, 128) for bfloat16; 256 x 512 tiles of f32 (512 KiB)
    # plus double-buffered [512, 128] key blocks fit the default 16-32 MiB scoped VMEM and
    # keep the 128x128 (v4/v5e) or 256x256 (v6e) MXU busy.
    "tpu": dict(block_r=256, block_c=512),
    # Interpret mode (CPU): each grid step is an XLA loop iteration; few, large tiles run
    # fastest there, and tiles of 128 x 128 keep the tests' padding small.
    "cpu": dict(block_r=128, block_c=128),
}

_SIDES = ("q", "k", "qk")


def _out_struct(shape, dtype, *like):
  """`jax.ShapeDtypeStruct` for a kernel output that varies over the same shard_map axes as
  its inputs (`check_vma=True` asks for it; the field is `manual_axis_type` in JAX >= 0.10,
  `vma` before)."""
  params = inspect.signature(jax.ShapeDtypeStruct).parameters
  avals = [jax.typeof(x) for x in like]
  for field in ("manual_axis_type", "vma"):
    if field in params and hasattr(avals[0], field):
      values = [getattr(a, field) for a in avals]
      size = lambda v: len(getattr(v, "varying", v))
      return jax.ShapeDtypeStruct(shape, dtype, **{field: max(values, key=size)})
  return jax.ShapeDtypeStruct(shape, dtype)


def _next_pow2(x: int) -> int:
  return 1 << max(0, (x - 1).bit_length())


def _dot_nt(a, b):
  """a [r, d] . b [c, d]^T -> [r, c] in float32 (float64 for float64 input)."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                             preferred_element_type=compute_dtype(a.dtype))


def _dot_nn(a, b):
  """a [r, c] . b [c, d] -> [r, d], a cast to b's dtype, accumulated in >= float32."""
  return jax.lax.dot_general(a.astype(b.dtype), b, (((1,), (0,)), ((), ())),
                             preferred_element_type=compute_dtype(b.dtype))


# ----------------------------------------------------------------------------------------
# Tile bodies (values in, values out; shared by both drivers). Row vectors are [br],
# column vectors [bc].


def _fwd_tile(x, y, row_qid, col_kid, m, l):
  """Folds one [br, bc] score tile into the running (max, sum-exp) of each row."""
  s = _dot_nt(x, y)  # [br, d] x [d, bc] -> [br, bc]
  mask = (col_kid[None, :] >= 0) & (col_kid[None, :] != row_qid[:, None])
  s = jnp.where(mask, s, -jnp.inf)
  m_new = jnp.maximum(m, jnp.max(s, axis=1))
  shift = jnp.where(m_new > -jnp.inf, m_new, 0.0)
  l_new = l * jnp.exp(m - shift) + jnp.sum(jnp.exp(s - shift[:, None]), axis=1)
  return m_new, l_new


def _finish(m, l):
  shift = jnp.where(m > -jnp.inf, m, 0.0)
  return jnp.where(l > 0, shift + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)


class _Stats(NamedTuple):
  """Per-row data of one side of a backward tile: ids, key ids, lse (safe) and g."""
  qid: jax.Array
  kid: jax.Array
  lse: jax.Array
  g: jax.Array


def _bwd_tile(x, y, row: _Stats, col: _Stats, sides: str):
  """One tile's contribution sum_c w_rc y_c -> [br, d] (float32 accumulation)."""
  s = _dot_nt(x, y)  # [br, d] x [d, bc] -> [br, bc]
  w = jnp.zeros_like(s)
  if "q" in sides:  # row r an anchor, column c one of its keys
    mask = (col.kid[None, :] >= 0) & (col.kid[None, :] != row.qid[:, None])
    w += jnp.where(mask, jnp.exp(s - row.lse[:, None]) * row.g[:, None], 0.0)
  if "k" in sides:  # row r a key of anchor c
    mask = (row.kid[:, None] >= 0) & (row.kid[:, None] != col.qid[None, :])
    w += jnp.where(mask, jnp.exp(s - col.lse[None, :]) * col.g[None, :], 0.0)
  return _dot_nn(w, y)  # [br, bc] x [bc, d] -> [br, d]


# ----------------------------------------------------------------------------------------
# "loop" driver: GPU (Triton) and CPU (interpret mode).


def _triton_params(blocks):
  from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
  return plgpu.CompilerParams(num_warps=blocks["num_warps"], num_stages=blocks["num_stages"])


def _loop_fwd(x, y, row_qid, col_kid, *, blocks, interpret):
  (r, d), c = x.shape, y.shape[0]
  br, bc = blocks["block_r"], blocks["block_c"]
  acc = compute_dtype(x.dtype)

  def kernel(x_ref, qid_ref, y_ref, kid_ref, lse_ref):
    xb, qid = x_ref[...], qid_ref[...]

    def body(j, carry):
      cols = pl.ds(pl.multiple_of(j * bc, bc), bc)
      return _fwd_tile(xb, y_ref[cols, :], qid, kid_ref[cols], *carry)

    init = (jnp.full((br,), -jnp.inf, acc), jnp.zeros((br,), acc))
    m, l = jax.lax.fori_loop(0, c // bc, body, init)
    lse_ref[...] = _finish(m, l).astype(lse_ref.dtype)

  return pl.pallas_call(
      kernel, grid=(r // br,),
      in_specs=[pl.BlockSpec((br, d), lambda i: (i, 0)), pl.BlockSpec((br,), lambda i: (i,)),
                pl.BlockSpec((c, d), lambda i: (0, 0)), pl.BlockSpec((c,), lambda i: (0,))],
      out_specs=pl.BlockSpec((br,), lambda i: (i,)),
      out_shape=_out_struct((r,), acc, x, y, row_qid, col_kid),
      compiler_params=None if interpret else _triton_params(blocks),
      interpret=interpret, name="projnce_fused_lse_fwd")(x, row_qid, y, col_kid)


def _loop_bwd(x, y, row: _Stats, col: _Stats, *, sides, blocks, interpret):
  (r, d), c = x.shape, y.shape[0]
  br, bc = blocks["block_r"], blocks["block_c"]
  acc = compute_dtype(x.dtype)

  def kernel(x_ref, rq_ref, rk_ref, rl_ref, rg_ref, y_ref, cq_ref, ck_ref, cl_ref, cg_ref,
             out_ref):
    xb = x_ref[...]
    row_b = _Stats(rq_ref[...], rk_ref[...], rl_ref[...], rg_ref[...])

    def body(j, out):
      cols = pl.ds(pl.multiple_of(j * bc, bc), bc)
      col_b = _Stats(cq_ref[cols], ck_ref[cols], cl_ref[cols], cg_ref[cols])
      return out + _bwd_tile(xb, y_ref[cols, :], row_b, col_b, sides)

    out = jax.lax.fori_loop(0, c // bc, body, jnp.zeros((br, d), acc))
    out_ref[...] = out.astype(out_ref.dtype)

  row_vec = pl.BlockSpec((br,), lambda i: (i,))
  col_vec = pl.BlockSpec((c,), lambda i: (0,))
  return pl.pallas_call(
      kernel, grid=(r // br,),
      in_specs=([pl.BlockSpec((br, d), lambda i: (i, 0))] + [row_vec] * 4
                + [pl.BlockSpec((c, d), lambda i: (0, 0))] + [col_vec] * 4),
      out_specs=pl.BlockSpec((br, d), lambda i: (i, 0)),
      out_shape=_out_struct((r, d), acc, x, y, *row, *col),
      compiler_params=None if interpret else _triton_params(blocks),
      interpret=interpret, name=f"projnce_fused_lse_bwd_{sides}")(x, *row, y, *col)


# ----------------------------------------------------------------------------------------
# "xla" driver: the same tiles in a `lax.scan` over column blocks, for CPU programs whose
# operands vary over shard_map axes under `check_vma=True` (Pallas's interpreter does not
# track varying axes in JAX 0.10: "Primitive ge requires varying manual axes to match").


def _varying_axes(*xs):
  """shard_map axes over which any of `xs` varies (`manual_axis_type.varying` in JAX
  0.10, `vma` before)."""
  axes = frozenset()
  for x in jax.tree_util.tree_leaves(xs):
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    axes |= frozenset((getattr(mat, "varying", None) if mat is not None
                       else getattr(aval, "vma", None)) or ())
  return axes


def _vary(x, axes):
  for axis in sorted(axes):
    x = to_varying(x, axis)
  return x


def _col_blocks(v, bc):
  return v.reshape((v.shape[0] // bc, bc) + v.shape[1:])


def _xla_fwd(x, y, row_qid, col_kid, *, blocks):
  bc, acc = blocks["block_c"], compute_dtype(x.dtype)
  axes = _varying_axes(x, y, row_qid, col_kid)
  init = (jnp.full((x.shape[0],), -jnp.inf, acc), jnp.zeros((x.shape[0],), acc))

  def step(carry, cols):
    return _fwd_tile(x, cols[0], row_qid, cols[1], *carry), None

  (m, l), _ = jax.lax.scan(step, _vary(init, axes), (_col_blocks(y, bc), _col_blocks(col_kid, bc)))
  return _finish(m, l)


def _xla_bwd(x, y, row: _Stats, col: _Stats, *, sides, blocks):
  bc, acc = blocks["block_c"], compute_dtype(x.dtype)
  axes = _varying_axes(x, y, row, col)

  def step(out, cols):
    return out + _bwd_tile(x, cols[0], row, _Stats(*cols[1:]), sides), None

  cols = (_col_blocks(y, bc),) + tuple(_col_blocks(v, bc) for v in col)
  out, _ = jax.lax.scan(step, _vary(jnp.zeros(x.shape, acc), axes), cols)
  return out


# ----------------------------------------------------------------------------------------
# "grid" driver: TPU (Mosaic). Row vectors travel as [R, 128] (lane-replicated), column
# vectors as [8, C] (sublane-replicated), the layouts of JAX's TPU flash attention.

_LANES, _SUBLANES = 128, 8


def _rows(v):
  return jnp.broadcast_to(v[:, None], (v.shape[0], _LANES))


def _cols(v):
  return jnp.broadcast_to(v[None, :], (_SUBLANES, v.shape[0]))


def _tpu_params(num_axes):
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  sem = ("parallel",) + ("arbitrary",) * (num_axes - 1)
  return pltpu.CompilerParams(dimension_semantics=sem)


def _vmem(shape, dtype):
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  return pltpu.VMEM(shape, dtype)


def _grid_fwd(x, y, row_qid, col_kid, *, blocks, interpret=False):
  (r, d), c = x.shape, y.shape[0]
  br, bc = blocks["block_r"], blocks["block_c"]
  acc = compute_dtype(x.dtype)

  def kernel(x_ref, qid_ref, y_ref, kid_ref, lse_ref, m_ref, l_ref):
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _():
      m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, acc)
      l_ref[...] = jnp.zeros(l_ref.shape, acc)

    m, l = _fwd_tile(x_ref[...], y_ref[...], qid_ref[...][:, 0], kid_ref[...][0, :],
                     m_ref[...][:, 0], l_ref[...][:, 0])
    m_ref[...] = jnp.broadcast_to(m[:, None], m_ref.shape)
    l_ref[...] = jnp.broadcast_to(l[:, None], l_ref.shape)

    @pl.when(j == pl.num_programs(1) - 1)
    def _():
      lse = _finish(m_ref[...][:, 0], l_ref[...][:, 0])
      lse_ref[...] = jnp.broadcast_to(lse[:, None], lse_ref.shape)

  out = pl.pallas_call(
      kernel, grid=(r // br, c // bc),
      in_specs=[pl.BlockSpec((br, d), lambda i, j: (i, 0)),
                pl.BlockSpec((br, _LANES), lambda i, j: (i, 0)),
                pl.BlockSpec((bc, d), lambda i, j: (j, 0)),
                pl.BlockSpec((_SUBLANES, bc), lambda i, j: (0, j))],
      out_specs=pl.BlockSpec((br, _LANES), lambda i, j: (i, 0)),
      out_shape=_out_struct((r, _LANES), acc, x, y, row_qid, col_kid),
      scratch_shapes=[_vmem((br, _LANES), acc), _vmem((br, _LANES), acc)],
      compiler_params=_tpu_params(2), interpret=interpret,
      name="projnce_fused_lse_fwd")(x, _rows(row_qid), y, _cols(col_kid))
  return out[:, 0]


def _grid_bwd(x, y, row: _Stats, col: _Stats, *, sides, blocks, interpret=False):
  (r, d), c = x.shape, y.shape[0]
  br, bc = blocks["block_r"], blocks["block_c"]
  acc = compute_dtype(x.dtype)

  def kernel(x_ref, rq_ref, rk_ref, rl_ref, rg_ref, y_ref, cq_ref, ck_ref, cl_ref, cg_ref,
             out_ref, acc_ref):
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _():
      acc_ref[...] = jnp.zeros(acc_ref.shape, acc)

    row_b = _Stats(*(ref[...][:, 0] for ref in (rq_ref, rk_ref, rl_ref, rg_ref)))
    col_b = _Stats(*(ref[...][0, :] for ref in (cq_ref, ck_ref, cl_ref, cg_ref)))
    acc_ref[...] += _bwd_tile(x_ref[...], y_ref[...], row_b, col_b, sides).astype(acc)

    @pl.when(j == pl.num_programs(1) - 1)
    def _():
      out_ref[...] = acc_ref[...].astype(out_ref.dtype)

  row_vec = pl.BlockSpec((br, _LANES), lambda i, j: (i, 0))
  col_vec = pl.BlockSpec((_SUBLANES, bc), lambda i, j: (0, j))
  return pl.pallas_call(
      kernel, grid=(r // br, c // bc),
      in_specs=([pl.BlockSpec((br, d), lambda i, j: (i, 0))] + [row_vec] * 4
                + [pl.BlockSpec((bc, d), lambda i, j: (j, 0))] + [col_vec] * 4),
      out_specs=pl.BlockSpec((br, d), lambda i, j: (i, 0)),
      out_shape=_out_struct((r, d), acc, x, y, *row, *col),
      scratch_shapes=[_vmem((br, d), acc)],
      compiler_params=_tpu_params(2), interpret=interpret,
      name=f"projnce_fused_lse_bwd_{sides}")(x, *map(_rows, row), y, *map(_cols, col))


# ----------------------------------------------------------------------------------------
# Padding and platform dispatch.


def _pad_to(v, size, fill):
  widths = ((0, size - v.shape[0]),) + ((0, 0),) * (v.ndim - 1)
  return jnp.pad(v, widths, constant_values=fill)


def _padded_dim(d: int) -> int:
  """Feature width inside the kernel: a power of two >= 16 (Triton's block and dot rule)."""
  return max(16, _next_pow2(d))


def _common_blocks(r: int, c: int, blocks: dict) -> dict:
  """Blocks no larger than the (power-of-two padded) problem, so small batches pad little."""
  out = dict(blocks)
  out["block_r"] = max(16, min(blocks["block_r"], _next_pow2(r)))
  out["block_c"] = max(16, min(blocks["block_c"], _next_pow2(c)))
  return out


def _pad_problem(x, y, br, bc):
  """Pads rows of x to a multiple of br, of y to bc, and the feature axis of both."""
  d = _padded_dim(x.shape[1])
  r_pad, c_pad = -(-x.shape[0] // br) * br, -(-y.shape[0] // bc) * bc
  xp = jnp.pad(x, ((0, r_pad - x.shape[0]), (0, d - x.shape[1])))
  yp = jnp.pad(y, ((0, c_pad - y.shape[0]), (0, d - y.shape[1])))
  return xp, yp


def _on_platform(run, *operands):
  """`run(backend, *operands)` for the platform the program is lowered for."""
  return jax.lax.platform_dependent(
      *operands,
      cpu=functools.partial(run, "cpu"),
      cuda=functools.partial(run, "gpu"),
      rocm=functools.partial(run, "gpu"),
      tpu=functools.partial(run, "tpu"),
      default=functools.partial(run, "cpu"))


def _blocks_for(backend, r, c, blocks):
  base = dict(BLOCKS[backend])
  if blocks and backend in blocks:
    base.update(blocks[backend])
  return _common_blocks(r, c, base)


def _fwd(x, y, row_qid, col_kid, blocks=None):
  """lse [R] of rows x against columns y (all kernels' forward), any platform."""
  r, c = x.shape[0], y.shape[0]

  def run(backend, x, y, row_qid, col_kid):
    b = _blocks_for(backend, r, c, blocks)
    xp, yp = _pad_problem(x, y, b["block_r"], b["block_c"])
    qid = _pad_to(row_qid, xp.shape[0], -2)
    kid = _pad_to(col_kid, yp.shape[0], -1)
    if backend == "tpu":
      return _grid_fwd(xp, yp, qid, kid, blocks=b)[:r]
    if backend == "cpu" and _varying_axes(xp, yp, qid, kid):
      return _xla_fwd(xp, yp, qid, kid, blocks=b)[:r]
    return _loop_fwd(xp, yp, qid, kid, blocks=b, interpret=backend == "cpu")[:r]

  return _on_platform(run, x, y, row_qid, col_kid)


def _bwd(x, y, row: _Stats, col: _Stats, sides, blocks=None):
  """sum_c w_rc y_c [R, d] in float32 for the given sides, any platform."""
  r, c = x.shape[0], y.shape[0]

  def run(backend, x, y, row, col):
    b = _blocks_for(backend, r, c, blocks)
    xp, yp = _pad_problem(x, y, b["block_r"], b["block_c"])
    # Padding rows/columns: no query id, never a key, g = 0 and lse = +inf (weight 0).
    fills = _Stats(-2, -1, jnp.inf, 0.0)
    row = _Stats(*(_pad_to(v, xp.shape[0], f) for v, f in zip(row, fills)))
    col = _Stats(*(_pad_to(v, yp.shape[0], f) for v, f in zip(col, fills)))
    if backend == "tpu":
      out = _grid_bwd(xp, yp, row, col, sides=sides, blocks=b)
    elif backend == "cpu" and _varying_axes(xp, yp, row, col):
      out = _xla_bwd(xp, yp, row, col, sides=sides, blocks=b)
    else:
      out = _loop_bwd(xp, yp, row, col, sides=sides, blocks=b, interpret=backend == "cpu")
    return out[:r, :x.shape[1]]

  return _on_platform(run, x, y, row, col)


def _stats(qid, kid, lse, g):
  """Backward statistics: anchors without a key or without a cotangent get weight 0."""
  acc = lse.dtype
  live = jnp.isfinite(lse) & (g != 0)
  return _Stats(qid, kid, jnp.where(live, lse, jnp.inf).astype(acc),
                jnp.where(live, g, 0).astype(acc))


def key_ids(ids: jax.Array, valid: jax.Array) -> jax.Array:
  """Key ids of the kernels: the row's id where it is a valid key, else -1."""
  return jnp.where(valid, ids, -1).astype(jnp.int32)


# ----------------------------------------------------------------------------------------
# Public kernels with custom VJPs.


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def cross_lse(q, k, q_ids, k_kids, blocks=None):
  """lse_i = log sum_{j : k_kids_j >= 0, k_kids_j != q_ids_i} exp(q_i . k_j), fused.

  Args:
    q: [n, d] queries (already scaled by 1 / tau), matmul dtype.
    k: [m, d] keys, same dtype.
    q_ids: [n] int32 non-negative query ids.
    k_kids: [m] int32 key ids (`key_ids`: -1 for a key that is not valid).
    blocks: optional {backend: {"block_r": .., "block_c": .., ...}} overrides of `BLOCKS`
      (a hashable tuple form is also accepted through `freeze_blocks`).

  Returns:
    [n] float32 (float64 for float64 input); -inf where a query has no valid key.
  """
  return _fwd(q, k, q_ids.astype(jnp.int32), k_kids.astype(jnp.int32), _thaw(blocks))


def _cross_fwd(q, k, q_ids, k_kids, blocks):
  lse = cross_lse(q, k, q_ids, k_kids, blocks)
  return lse, (q, k, q_ids, k_kids, lse)


def _cross_bwd(blocks, res, g):
  q, k, q_ids, k_kids, lse = res
  b = _thaw(blocks)
  q_ids, k_kids = q_ids.astype(jnp.int32), k_kids.astype(jnp.int32)
  rows = _stats(q_ids, jnp.full_like(q_ids, -1), lse, g.astype(lse.dtype))
  nk = k.shape[0]
  keys = _Stats(jnp.full((nk,), -2, jnp.int32), k_kids, jnp.full((nk,), jnp.inf, lse.dtype),
                jnp.zeros((nk,), lse.dtype))
  dq = _bwd(q, k, rows, keys, "q", b)  # [n, d]: sum_j g_i p_ij k_j
  dk = _bwd(k, q, keys, rows, "k", b)  # [m, d]: sum_i g_i p_ij q_i
  return dq.astype(q.dtype), dk.astype(k.dtype), None, None


cross_lse.defvjp(_cross_fwd, _cross_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def self_lse(x, ids, kids, blocks=None):
  """lse_i = log sum_{j : kids_j >= 0, kids_j != ids_i} exp(x_i . x_j): rows against
  themselves, fused, with the symmetric one-pass backward (W + W^T).

  Args:
    x: [n, d] rows scaled by sqrt(1 / tau) (so x_i . x_j = z_i . z_j / tau).
    ids: [n] int32 non-negative ids; kids: [n] key ids (`key_ids`).
    blocks: as `cross_lse`.

  Returns:
    [n] float32 (float64 for float64 input); -inf where a row has no valid key.
  """
  return _fwd(x, x, ids.astype(jnp.int32), kids.astype(jnp.int32), _thaw(blocks))


def _self_fwd(x, ids, kids, blocks):
  lse = self_lse(x, ids, kids, blocks)
  return lse, (x, ids, kids, lse)


def _self_bwd(blocks, res, g):
  x, ids, kids, lse = res
  st = _stats(ids.astype(jnp.int32), kids.astype(jnp.int32), lse, g.astype(lse.dtype))
  dx = _bwd(x, x, st, st, "qk", _thaw(blocks))  # [n, d]: sum_j (W + W^T)_ij x_j
  return dx.astype(x.dtype), None, None


self_lse.defvjp(_self_fwd, _self_bwd)


def freeze_blocks(blocks: Optional[dict]):
  """A hashable form of a {backend: {name: value}} block override (custom_vjp's static)."""
  if blocks is None:
    return None
  return tuple(sorted((k, tuple(sorted(v.items()))) for k, v in blocks.items()))


def _thaw(blocks):
  if blocks is None or isinstance(blocks, dict):
    return blocks
  return {k: dict(v) for k, v in blocks}


# ----------------------------------------------------------------------------------------
# Ring: each step calls the same kernels on (local anchors, the visiting key block).


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def ring_lse(q, k, q_ids, k_kids, axis_name, blocks=None):
  """`cross_lse` with the keys spread over the devices of `axis_name` and passed around the
  ring by `ppermute`; per-step LSEs merge with logaddexp. Memory per device O(n d)."""
  return _ring_fwd(q, k, q_ids, k_kids, axis_name, blocks)[0]


def _ring_fwd(q, k, q_ids, k_kids, axis_name, blocks):
  size, perm = _ring_perm(axis_name)
  b = _thaw(blocks)
  lse = _fwd(q, k, q_ids, k_kids, b)

  def body(_, state):
    lse, kk, kid = state
    kk, kid = jax.lax.ppermute((kk, kid), axis_name, perm)
    return jnp.logaddexp(lse, _fwd(q, kk, q_ids, kid, b)), kk, kid

  lse, _, _ = jax.lax.fori_loop(1, size, body, to_varying((lse, k, k_kids), axis_name))
  return lse, (q, k, q_ids, k_kids, lse)


def _ring_bwd(axis_name, blocks, res, g):
  q, k, q_ids, k_kids, lse = res
  size, perm = _ring_perm(axis_name)
  b = _thaw(blocks)
  rows = _stats(q_ids, jnp.full_like(q_ids, -1), lse, g.astype(lse.dtype))
  nk = k.shape[0]
  inert = (jnp.full((nk,), -2, jnp.int32), jnp.full((nk,), jnp.inf, lse.dtype),
           jnp.zeros((nk,), lse.dtype))

  def body(_, state):
    dq, kk, kid, dk = state
    keys = _Stats(inert[0], kid, inert[1], inert[2])
    dq = dq + _bwd(q, kk, rows, keys, "q", b)
    dk = dk + _bwd(kk, q, keys, rows, "k", b)
    # The key block and its gradient move on together; after `size` moves both are home.
    kk, kid, dk = jax.lax.ppermute((kk, kid, dk), axis_name, perm)
    return dq, kk, kid, dk

  acc = lse.dtype
  init = to_varying((jnp.zeros(q.shape, acc), k, k_kids, jnp.zeros(k.shape, acc)), axis_name)
  dq, _, _, dk = jax.lax.fori_loop(0, size, body, init)
  return dq.astype(q.dtype), dk.astype(k.dtype), None, None


ring_lse.defvjp(_ring_fwd, _ring_bwd)


def lowered_kernel_calls(text: str) -> dict:
  """Counts of the kernel custom calls in lowered StableHLO text, by backend."""
  return {"triton": text.count("__gpu$xla.gpu.triton"),
          "mosaic_gpu": text.count("mosaic_gpu"),
          "tpu": text.count("tpu_custom_call")}


__all__ = ["BLOCKS", "cross_lse", "freeze_blocks", "key_ids", "lowered_kernel_calls",
           "ring_lse", "self_lse"]
