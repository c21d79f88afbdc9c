"""PyTorch SupCon reference for the loss benchmark (benchmarks/loss_bench.py).

The supervised contrastive loss L_out of Khosla et al. 2020 in the form of the
SupContrast `SupConLoss` (github.com/HobbitLong/SupContrast, losses.py) with
contrast_mode='all' and base_temperature = temperature, written from the formula:

  loss = mean over anchors i of
         -(1 / |P(i)|) * sum_{p in P(i)} [ s_ip - log sum_{a != i} exp(s_ia) ],
  s_ia = z_i . z_a / tau,

anchors and contrast set = every view of every example; P(i) = other rows with the
anchor's label. Like the original it shifts logits by their row max (detached) and
masks self-contrast; it has no guard for anchors without a positive (0/0 = NaN there),
so benchmark batches give every class at least two rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(features: torch.Tensor, labels: torch.Tensor,
                temperature: float = 0.1, normalize: bool = True) -> torch.Tensor:
  """SupConLoss(contrast_mode='all', base_temperature=temperature).

  Args:
    features: [bsz, n_views, d] embeddings.
    labels: [bsz] int class labels.
    temperature: tau.
    normalize: L2-normalise the features first (the loss itself assumes unit vectors;
      the JAX kernels normalise inside, so the benchmark includes it on both sides).

  Returns:
    Scalar loss.
  """
  bsz, n_views, _ = features.shape
  if normalize:
    features = F.normalize(features, dim=-1)
  labels = labels.contiguous().view(-1, 1)
  mask = torch.eq(labels, labels.T).float()                             # [bsz, bsz]
  contrast = torch.cat(torch.unbind(features, dim=1), dim=0)            # [N, d]
  anchor = contrast                                                     # mode 'all'
  logits = torch.matmul(anchor, contrast.T) / temperature               # [N, N]
  logits_max, _ = torch.max(logits, dim=1, keepdim=True)
  logits = logits - logits_max.detach()
  mask = mask.repeat(n_views, n_views)                                  # [N, N]
  logits_mask = torch.ones_like(mask)
  logits_mask.fill_diagonal_(0)
  mask = mask * logits_mask
  exp_logits = torch.exp(logits) * logits_mask
  log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
  mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
  loss = -mean_log_prob_pos                     # (temperature / base_temperature) == 1
  return loss.view(n_views, bsz).mean()
