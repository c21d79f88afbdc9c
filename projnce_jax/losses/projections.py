"""Class projections g_i(c) of the ProjNCE family (spec section 2) as class vectors.

Every projection is evaluated as a table of class vectors g(c) [K, d] for the K class slots
(what an anchor of another class sees) plus, per local anchor, the vector of its own class
with the anchor left out, g_i(y_i) [n, d] (data-dependent projections). The class-level
log-sum-exp then streams over the table (see `projnce`), so nothing here builds an [n, K]
or [n, N] matrix: `kernel`'s leave-one-out weights, which need each anchor's distance to
the rows of its own class, stream over blocks of rows (`kernel_own_sums`).

| name         | g_i(c)                                                          |
|--------------|-----------------------------------------------------------------|
| `centroid`   | mean of S_c \\ {i}                                              |
| `median`     | coordinate-wise median of S_c \\ {i}                            |
| `kernel`     | Epanechnikov Nadaraya-Watson mean of S_c \\ {i} around its mean |
| `orthogonal` | row c of a fixed matrix with orthonormal rows (needs d >= M)    |
| `mlp`        | normalise(centre(MLP(onehot(c)))), trained by the caller        |
"""

import functools
import hashlib
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from projnce_jax.losses import sample as sample_lib
from projnce_jax.losses._common import normalize, to_varying

DATA_DEPENDENT = ("centroid", "median", "kernel")
CLASS_TABLE = ("orthogonal", "mlp")
PROJECTIONS = DATA_DEPENDENT + CLASS_TABLE
NEGATIVES = PROJECTIONS + ("sample",)
ORTHOGONAL_SEED = 0

# Rows per block of the kernel projection's own-class weights ([n, block] at a time).
_KERNEL_BLOCK_BUDGET = 1 << 22


class ClassBatch(NamedTuple):
  """The batch as the projections see it (local anchors, global class statistics).

  Attributes:
    z: [n, d] local normalised rows (compute dtype).
    slots: [n] int class slot of each local row, in [0, K).
    valid: [n] bool rows that take part.
    offset: global index of the first local row (0 on one device).
    counts: [K] global number of valid rows per slot.
    sums: [K, d] global sum of the valid rows per slot.
    z_all, slots_all, valid_all: the gathered global batch [N, ...] (same as local on one
      device; `z_all` is gathered only for the projections that read rows: median, kernel).
    axis_name: data-parallel axis or None.
  """
  z: jax.Array
  slots: jax.Array
  valid: jax.Array
  offset: Any
  counts: jax.Array
  sums: jax.Array
  z_all: jax.Array
  slots_all: jax.Array
  valid_all: jax.Array
  axis_name: Optional[str]

  @property
  def own_count(self) -> jax.Array:
    """[n] n_{y_i}^(i) = |S_{y_i} \\ {i}| for valid anchors (|S_{y_i}| for padding rows)."""
    return self.counts[self.slots] - self.valid.astype(self.counts.dtype)


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def centroid_vectors(b: ClassBatch):
  """Class means [K, d] and each anchor's leave-one-out own-class mean [n, d], O((n + K) d)."""
  means = b.sums / jnp.maximum(b.counts, 1.0)[:, None]
  own = (b.sums[b.slots] - b.z * b.valid[:, None]) / jnp.maximum(b.own_count, 1.0)[:, None]
  return means, own


def median_vectors(b: ClassBatch):
  """Coordinate-wise class medians [K, d] and leave-one-out own-class medians [n, d].

  One sort of the gathered batch per coordinate, keyed by (slot, value): each class is a
  contiguous run whose middle elements are its median; the leave-one-out median of an
  anchor skips the anchor's own rank in that run. Gradients flow to the selected rows.
  Memory O(N d).
  """
  num, dim = b.z_all.shape
  k = b.counts.shape[0]
  counts = b.counts.astype(jnp.int32)
  key = jnp.where(b.valid_all, b.slots_all, k)  # invalid rows sort last
  rows = jnp.arange(num, dtype=jnp.int32)
  _, _, perm = jax.lax.sort(
      (jnp.broadcast_to(key[:, None], (num, dim)), jax.lax.stop_gradient(b.z_all),
       jnp.broadcast_to(rows[:, None], (num, dim))),
      dimension=0, num_keys=2)
  cols = jnp.arange(dim)[None, :]
  start = jnp.cumsum(counts) - counts  # [K] first sorted position of each class

  def pick(pos):  # values at sorted positions pos [m, d] (clamped): the selected rows of
    # z_all are gathered directly (differentiable), never a sorted [N, d] copy of z_all
    row = jnp.take_along_axis(perm, jnp.clip(pos, 0, num - 1), axis=0)  # [m, d] row ids
    return b.z_all[row, cols[:, :pos.shape[1]]]

  lo = start + (counts - 1) // 2
  hi = start + counts // 2
  med = 0.5 * (pick(jnp.broadcast_to(lo[:, None], (k, dim))) +
               pick(jnp.broadcast_to(hi[:, None], (k, dim))))  # [K, d]

  # Leave-one-out median of each local anchor's own class.
  rank_all = jnp.zeros((num, dim), jnp.int32).at[perm, cols].set(rows[:, None])
  n_loc = b.z.shape[0]
  rank = jax.lax.dynamic_slice_in_dim(rank_all, b.offset, n_loc, axis=0)  # [n, d]
  own_start = start[b.slots][:, None]
  own_count = counts[b.slots][:, None]
  rho = rank - own_start  # the anchor's rank inside its class run
  t1 = (own_count - 2) // 2
  t2 = (own_count - 1) // 2

  def skip(t):  # index in the run with the anchor removed
    return own_start + t + (t >= rho).astype(jnp.int32)

  loo = 0.5 * (pick(skip(t1)) + pick(skip(t2)))  # [n, d]
  return med, loo


def epanechnikov(sq_dist: jax.Array, bandwidth) -> jax.Array:
  """K(t) = max(0, 1 - t^2) with t = dist / h, from squared distances; no gradient."""
  w = jnp.maximum(0.0, 1.0 - sq_dist / (bandwidth * bandwidth))
  return jax.lax.stop_gradient(w)


def _kernel_block_weights(m_loo, slots, row_ids, zb, slots_b, valid_b, ids_b, bandwidth,
                          mdtype=None):
  """Own-class kernel weights of one row block: [n, B] (zero off the anchor's class).

  The cross term m . z runs in `mdtype` (the matmul dtype) with accumulation in m_loo's
  dtype; the squared norms stay in m_loo's dtype.
  """
  mdtype = mdtype or m_loo.dtype
  cross = sample_lib.dot_nt(m_loo.astype(mdtype), zb.astype(mdtype)).astype(m_loo.dtype)
  sq = (jnp.sum(jnp.square(zb), axis=1)[None, :] - 2.0 * cross +
        jnp.sum(jnp.square(m_loo), axis=1)[:, None])  # [n, B]
  member = ((slots_b[None, :] == slots[:, None]) & valid_b[None, :] &
            (ids_b[None, :] != row_ids[:, None]))
  return jnp.where(member, epanechnikov(jnp.maximum(sq, 0.0), bandwidth), 0.0)


def _row_blocks(block, *xs):
  num = xs[0].shape[0]
  num_blocks = -(-num // block)
  pad = num_blocks * block - num

  def split(x, fill):
    x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1), constant_values=fill)
    return x.reshape((num_blocks, block) + x.shape[1:])

  fills = (0, -1, False, -1)
  return tuple(split(x, f) for x, f in zip(xs, fills))


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _kernel_stream(m_loo, z_all, slots, slots_all, valid_all, row_ids, bandwidth, block,
                   axis_name, mdtype):
  """(sum_j w_ij z_j [n, d], sum_j w_ij [n]) over row blocks; w under stop_gradient."""
  num_rows = z_all.shape[0]
  blocks = _row_blocks(block, z_all, slots_all, valid_all, jnp.arange(num_rows))

  def step(carry, xs):
    num, den = carry
    w = _kernel_block_weights(m_loo, slots, row_ids, *xs, bandwidth, mdtype)
    wz = sample_lib.dot_nn(w, xs[0].astype(mdtype)).astype(m_loo.dtype)  # [n, B] x [B, d]
    return (num + wz, den + jnp.sum(w, axis=1)), None

  init = to_varying((jnp.zeros_like(m_loo), jnp.zeros(m_loo.shape[:1], m_loo.dtype)),
                    axis_name)
  (num, den), _ = jax.lax.scan(step, init, blocks)
  return num, den


def _kernel_stream_fwd(m_loo, z_all, slots, slots_all, valid_all, row_ids, bandwidth, block,
                       axis_name, mdtype):
  out = _kernel_stream(m_loo, z_all, slots, slots_all, valid_all, row_ids, bandwidth, block,
                       axis_name, mdtype)
  return out, (m_loo, z_all, slots, slots_all, valid_all, row_ids, bandwidth)


def _kernel_stream_bwd(block, axis_name, mdtype, res, g):
  m_loo, z_all, slots, slots_all, valid_all, row_ids, bandwidth = res
  g_num = g[0].astype(mdtype)
  blocks = _row_blocks(block, z_all, slots_all, valid_all, jnp.arange(z_all.shape[0]))

  def step(_, xs):
    w = _kernel_block_weights(m_loo, slots, row_ids, *xs, bandwidth, mdtype)
    return None, sample_lib.dot_tn(w, g_num).astype(z_all.dtype)  # [B, n] x [n, d]

  del axis_name  # the scan carries nothing
  _, dz = jax.lax.scan(step, None, blocks)
  dz = dz.reshape(-1, z_all.shape[1])[:z_all.shape[0]]
  return (jnp.zeros_like(m_loo), dz, None, None, None, None, jnp.zeros_like(bandwidth))


_kernel_stream.defvjp(_kernel_stream_fwd, _kernel_stream_bwd)


def kernel_own_sums(m_loo, b: ClassBatch, bandwidth, matmul_dtype=None):
  """Weighted sums of each anchor's own class around m_loo: ([n, d], [n]).

  Rows are read in blocks of B (memory O(n * B)); a single block is evaluated directly.
  The products run in `matmul_dtype` (default: m_loo's dtype) with accumulation in m_loo's.
  """
  n, num_rows = b.z.shape[0], b.z_all.shape[0]
  mdtype = matmul_dtype or m_loo.dtype
  row_ids = b.offset + jnp.arange(n)
  block = max(128, _KERNEL_BLOCK_BUDGET // max(n, 1))
  if num_rows <= block and jnp.dtype(mdtype) == m_loo.dtype:
    w = _kernel_block_weights(m_loo, b.slots, row_ids, b.z_all, b.slots_all, b.valid_all,
                              jnp.arange(num_rows), bandwidth)
    return w @ b.z_all, jnp.sum(w, axis=1)  # [n, N] x [N, d] -> [n, d]
  # Streamed, or narrower products (one block then): the custom VJP keeps the backward
  # products in `mdtype` too (autodiff would run them on the float32 cotangent).
  block = min(block, num_rows)
  bandwidth = jnp.asarray(bandwidth, b.z.dtype)
  args = to_varying((m_loo, b.z_all, b.slots, b.slots_all, b.valid_all, row_ids),
                    b.axis_name)
  return _kernel_stream(*args, bandwidth, block, b.axis_name, jnp.dtype(mdtype).name)


def kernel_vectors(b: ClassBatch, bandwidth: float = 1.0, matmul_dtype=None):
  """Nadaraya-Watson class means [K, d] and leave-one-out own-class ones [n, d].

  Weights w_j = K(||z_j - m|| / h), m the class mean (leave-one-out for the anchor's own
  class), under stop_gradient; all-zero weights fall back to m. The table uses local
  segment sums (psum'd); the own class streams over the gathered rows (`kernel_own_sums`),
  its [n, N]-sized products in `matmul_dtype` (bfloat16 on bfloat16 input) with
  accumulation in the rows' dtype.
  """
  k = b.counts.shape[0]
  axis = b.axis_name
  means = b.sums / jnp.maximum(b.counts, 1.0)[:, None]  # [K, d]

  # Every class: weights of local rows around their class mean, then psum.
  sq = jnp.sum(jnp.square(b.z - means[b.slots]), axis=1)
  w = epanechnikov(sq, bandwidth) * b.valid
  num = _psum(jax.ops.segment_sum(w[:, None] * b.z, b.slots, num_segments=k), axis)
  den = _psum(jax.ops.segment_sum(w, b.slots, num_segments=k), axis)
  proj = jnp.where(den[:, None] > 0, num / jnp.where(den > 0, den, 1.0)[:, None], means)

  # Own class, leaving the anchor out: m_i = (sum - z_i) / (n - 1).
  own_count = b.counts[b.slots] - 1.0
  m_loo = (b.sums[b.slots] - b.z) / jnp.maximum(own_count, 1.0)[:, None]  # [n, d]
  num_own, den_own = kernel_own_sums(m_loo, b, bandwidth, matmul_dtype)
  g_own = jnp.where(den_own[:, None] > 0,
                    num_own / jnp.where(den_own > 0, den_own, 1.0)[:, None], m_loo)
  return proj, g_own


def orthogonal_table(num_classes: int, dim: int, seed: int = ORTHOGONAL_SEED) -> np.ndarray:
  """A fixed [num_classes, dim] matrix with orthonormal rows (QR of a seeded Gaussian).

  Raises:
    ValueError: if dim < num_classes (no M orthonormal vectors exist in R^d).

  Example:
    >>> q = orthogonal_table(10, 128)  # [10, 128], q @ q.T == I
  """
  if dim < num_classes:
    raise ValueError(
        f"The 'orthogonal' projection needs embedding dim d >= num_classes, got d={dim} < "
        f"num_classes={num_classes}.")
  gauss = np.random.default_rng(seed).standard_normal((dim, num_classes))
  q, _ = np.linalg.qr(gauss)  # [d, M], orthonormal columns
  return q.T


MLP_INITS = ("random", "simplex")


def simplex_table(num_classes: int, dim: int, seed: int = ORTHOGONAL_SEED) -> np.ndarray:
  """The `orthogonal` table centred over classes and renormalised: a regular simplex.

  Its [num_classes, dim] unit rows have pairwise cosine -1 / (num_classes - 1), the
  most spread configuration of M unit vectors.

  Raises:
    ValueError: if dim < num_classes.
  """
  q = orthogonal_table(num_classes, dim, seed)
  if num_classes < 2:
    return q
  c = q - q.mean(0, keepdims=True)
  return c / np.linalg.norm(c, axis=1, keepdims=True)


def _flax_fold_in(key: jax.Array, *data) -> jax.Array:
  """flax's `LazyRng` derivation of a parameter key: fold in the first 4 bytes of the SHA-1
  of the path (strings as UTF-8, ints big-endian), so `init_mlp_params` gives the values
  `ClassEmbeddingMLP(...).init(key)` gives, with or without flax installed (tested)."""
  digest = hashlib.sha1()
  for x in data:
    digest.update(x.encode("utf-8") if isinstance(x, str)
                  else x.to_bytes((x.bit_length() + 7) // 8, byteorder="big"))
  return jax.random.fold_in(key, jnp.uint32(int.from_bytes(digest.digest()[:4], "big")))


def _mlp_forward(params, num_classes: int, center: bool) -> jax.Array:
  """normalise(centre(relu(onehot W1 + b1) W2 + b2)): the `mlp` projection's table."""
  onehot = jnp.eye(num_classes, dtype=jnp.float32)
  hidden = params["hidden"]
  h = jax.nn.relu(jnp.dot(onehot, hidden["kernel"]) + hidden["bias"])  # [M, M] x [M, H]
  table = jnp.dot(h, params["out"]["kernel"]) + params["out"]["bias"]   # [M, H] x [H, d]
  if center and num_classes > 1:
    table = table - jnp.mean(table, axis=0, keepdims=True)
  return normalize(table)


_CLASS_EMBEDDING_DOC = '''The learnable `mlp` projection: g(c) = normalise(centre(MLP(onehot(c)))).

  The MLP's [M, d] output table is centred over the classes (its class mean is
  subtracted) before each row is normalised. Without the centring the table collapses:
  the encoder's outputs start almost parallel, every class vector follows them (helped
  by the output layer's shared bias, which moves all rows together) and nothing in the
  loss keeps the rows apart, so the mean pairwise cosine of the class vectors went from
  0.4 to 0.96 within 10 steps on MNIST-5k. A centred table has no common direction to
  drift along: its rows sum to zero before normalisation, and for M >= 2 their mean
  pairwise cosine is at most about -1 / (M - 1) when the rows have similar norms.
  Measured on MNIST-5k, 6 epochs, 2 seeds (experiments/ablations/mlp_projection.py,
  results in experiments/ablations/mlp_projection/results.md), linear probe: uncentred
  62.6 %, centred 90.4 %, its own Adam (lr 1e-3, uncentred) 87.5 % with the table still at
  mean cosine 0.45, a simplex initialisation (uncentred) 73.8 % and collapsed again by step
  50, centred + simplex 88.8 %, `centroid` 92.0 %. Centring alone is kept: the best result,
  no extra hyper-parameter, and the only fix that rules the collapse out by construction.

  The losses use the plain-JAX `init_mlp_params` / `mlp_table` (same parameters, same
  values); this flax module (needs flax, the `[train]` extra) is the same MLP for use
  inside flax models.

  Attributes:
    num_classes: M.
    dim: output dimension d (the embedding dimension).
    hidden: width of the hidden layer.
    center: subtract the class mean of the table before normalising (default True;
      False only reproduces the collapsing variant for measurements).
  '''


@functools.lru_cache(maxsize=None)
def _class_embedding_mlp():
  """The flax module, built on first use (flax is not a core dependency)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class ClassEmbeddingMLP(nn.Module):  # pylint: disable=missing-class-docstring
    num_classes: int
    dim: int
    hidden: int = 256
    center: bool = True

    @nn.compact
    def __call__(self) -> jax.Array:
      """Returns the [num_classes, dim] table of unit class vectors."""
      onehot = jnp.eye(self.num_classes, dtype=jnp.float32)
      h = nn.relu(nn.Dense(self.hidden, name="hidden")(onehot))  # [M, M] x [M, H] -> [M, H]
      table = nn.Dense(self.dim, name="out")(h)                  # [M, H] x [H, d] -> [M, d]
      if self.center and self.num_classes > 1:
        table = table - jnp.mean(table, axis=0, keepdims=True)
      return normalize(table)

  ClassEmbeddingMLP.__doc__ = _CLASS_EMBEDDING_DOC
  ClassEmbeddingMLP.__module__ = __name__
  return ClassEmbeddingMLP


def __getattr__(name):
  if name == "ClassEmbeddingMLP":
    return _class_embedding_mlp()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def init_mlp_params(key: jax.Array, *, num_classes: int, dim: int, hidden: int = 256,
                    init: str = "random"):
  """Initialises the parameters of the `mlp` projection (pass them as `params=`).

  Args:
    key: PRNG key.
    num_classes: M.
    dim: d.
    hidden: hidden width H.
    init: "random" (flax.linen.Dense's initialisers: LeCun-normal kernels, zero biases,
      the keys flax would derive, so the values equal `ClassEmbeddingMLP(...).init(key)`)
      or "simplex": the hidden layer maps
      onehot(c) to e_c (needs H >= M), the output layer's first M rows are the simplex
      table (`simplex_table`, needs d >= M) and the biases are zero, so the initial table
      is the regular simplex; the remaining output rows keep their random values.

  Raises:
    ValueError: unknown `init`, or "simplex" with hidden < M or dim < M.

  Example:
    >>> params = init_mlp_params(jax.random.key(0), num_classes=10, dim=128)
    >>> loss, aux = projnce(z, labels, positive="mlp", num_classes=10, params=params)
  """
  if init not in MLP_INITS:
    raise ValueError(f"unknown mlp init {init!r}; expected one of {MLP_INITS}")
  lecun = jax.nn.initializers.lecun_normal()  # flax.linen.Dense's default kernel init
  params = {
      "hidden": {"kernel": lecun(_flax_fold_in(key, "hidden", 1), (num_classes, hidden)),
                 "bias": jnp.zeros((hidden,), jnp.float32)},
      "out": {"kernel": lecun(_flax_fold_in(key, "out", 1), (hidden, dim)),
              "bias": jnp.zeros((dim,), jnp.float32)},
  }
  if init == "simplex":
    if hidden < num_classes:
      raise ValueError(f"init='simplex' needs hidden >= num_classes, got hidden={hidden} < "
                       f"num_classes={num_classes}")
    table = jnp.asarray(simplex_table(num_classes, dim), jnp.float32)  # raises if d < M
    out_kernel = params["out"]["kernel"].at[:num_classes].set(table)
    params = {
        "hidden": {"kernel": jnp.eye(num_classes, hidden, dtype=jnp.float32),
                   "bias": jnp.zeros((hidden,), jnp.float32)},
        "out": {"kernel": out_kernel, "bias": jnp.zeros((dim,), jnp.float32)},
    }
  return params


def mlp_table(params, num_classes: int, *, center: bool = True) -> jax.Array:
  """The [num_classes, d] table of the `mlp` projection for `params`.

  Args:
    params: from `init_mlp_params` (or trained).
    num_classes: M.
    center: subtract the class mean of the table before normalising (see
      `ClassEmbeddingMLP`; False only reproduces the collapsing variant).

  Example:
    >>> table = mlp_table(init_mlp_params(key, num_classes=10, dim=128), 10)  # [10, 128]
  """
  try:
    hidden, dim = params["hidden"]["kernel"].shape[1], params["out"]["kernel"].shape[1]
    in_dim = params["hidden"]["kernel"].shape[0]
  except (KeyError, TypeError, IndexError) as e:
    raise ValueError("params for the 'mlp' projection must come from init_mlp_params(); "
                     f"got {jax.tree_util.tree_map(jnp.shape, params)}") from e
  if in_dim != num_classes:
    raise ValueError(f"mlp params were built for {in_dim} classes, but num_classes="
                     f"{num_classes}.")
  return _mlp_forward(params, num_classes, center)


def mean_offdiagonal_cosine(table: jax.Array) -> jax.Array:
  """Mean cosine between distinct rows of a [M, d] table (1.0: collapsed; M >= 2)."""
  t = normalize(jnp.asarray(table, jnp.float32))
  m = t.shape[0]
  cos = t @ t.T  # [M, d] x [d, M] -> [M, M]
  return (jnp.sum(cos) - jnp.trace(cos)) / (m * (m - 1))
