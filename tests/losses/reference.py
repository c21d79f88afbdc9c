"""Literal float64 NumPy references of the loss formulas (spec sections 2-4), loop by loop."""

import numpy as np
from scipy.special import logsumexp


def l2n(z):
  z = np.asarray(z, np.float64)
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def projection(z, y, i, c, name, *, table=None, bandwidth=1.0):
  """g_i(c): the projection of class c seen by anchor i (None when undefined)."""
  if not isinstance(name, str) or name in ("orthogonal", "mlp"):
    return np.asarray(table)[c]
  members = [j for j in range(len(y)) if y[j] == c and j != i]
  if not members:
    return None
  zs = z[members]
  mean = zs.mean(axis=0)
  if name == "centroid":
    return mean
  if name == "median":
    return np.median(zs, axis=0)
  if name == "kernel":
    t2 = np.sum((zs - mean) ** 2, axis=1) / bandwidth**2
    w = np.maximum(0.0, 1.0 - t2)
    return mean if w.sum() == 0 else (w[:, None] * zs).sum(0) / w.sum()
  raise ValueError(name)


def projnce(z, y, *, positive="centroid", negative="sample", temperature=0.1, beta=1.0,
            pos_table=None, neg_table=None, bandwidth=1.0, normalize=True):
  """Returns (loss, aux) by the formula of spec section 3, anchor by anchor."""
  z = l2n(z) if normalize else np.asarray(z, np.float64)
  y = np.asarray(y)
  n = len(y)
  tau = temperature
  infonce, adjust, pos = [], [], []
  for i in range(n):
    keys = [j for j in range(n) if j != i]
    if not keys:
      continue
    g_own = projection(z, y, i, y[i], positive, table=pos_table, bandwidth=bandwidth)
    if g_own is None:
      continue
    p = z[i] @ g_own / tau
    s_pos = [z[i] @ projection(z, y, i, y[j], positive, table=pos_table,
                               bandwidth=bandwidth) / tau for j in keys]
    if negative == "sample":
      s_neg = [z[i] @ z[j] / tau for j in keys]
    else:
      s_neg = [z[i] @ projection(z, y, i, y[j], negative, table=neg_table,
                                 bandwidth=bandwidth) / tau for j in keys]
    lp, ln = logsumexp(s_pos), logsumexp(s_neg)
    infonce.append(-p + ln)
    adjust.append(np.exp(lp - ln) - 1.0)
    pos.append(p * tau)
  if not infonce:
    return 0.0, dict(infonce_term=0.0, adjustment=0.0, num_anchors=0)
  it, adj = float(np.mean(infonce)), float(np.mean(adjust))
  return it + beta * adj, dict(infonce_term=it, adjustment=adj,
                               mi_lower_bound=np.log(n - 1) - it - adj,
                               num_anchors=len(infonce), positive_score=float(np.mean(pos)))


def supcontrast_l_out(z, y, temperature):
  """SupContrast's SupConLoss (contrast_mode='all', base_temperature=temperature)."""
  z = l2n(z)
  y = np.asarray(y)
  logits = z @ z.T / temperature
  logits = logits - logits.max(axis=1, keepdims=True)
  n = len(y)
  logits_mask = 1.0 - np.eye(n)
  pos_mask = (y[:, None] == y[None, :]).astype(np.float64) * logits_mask
  exp_logits = np.exp(logits) * logits_mask
  log_prob = logits - np.log(exp_logits.sum(1, keepdims=True))
  mean_log_prob_pos = (pos_mask * log_prob).sum(1) / pos_mask.sum(1)
  return float(np.mean(-mean_log_prob_pos))


def nt_xent(z_views, temperature):
  """NT-Xent for [b, 2, d] views: mean_i -z_i.z_i'/tau + LSE_{a != i} z_i.z_a/tau."""
  b = z_views.shape[0]
  z = l2n(z_views.reshape(2 * b, -1))
  partner = np.arange(2 * b) ^ 1  # rows are (x0v0, x0v1, x1v0, ...)
  sims = z @ z.T / temperature
  out = []
  for i in range(2 * b):
    others = np.delete(sims[i], i)
    out.append(-sims[i, partner[i]] + logsumexp(others))
  return float(np.mean(out))
