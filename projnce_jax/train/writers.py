"""Metric writers: JSON lines (always), TensorBoard (tensorboardX)."""
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np


def _to_python(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    v = v.item() if np.ndim(v) == 0 else np.asarray(v).tolist()
  if hasattr(v, "item") and np.ndim(v) == 0:
    v = v.item()
  return v


def read_metrics(path: str) -> List[Dict[str, Any]]:
  """The records of a metrics.jsonl file ([] when it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
  """Appends `{"step": s, ...}` records to DIR/metrics.jsonl and TensorBoard events.

  On resume from step `start_step`, records with step > start_step (written after the
  checkpoint the run resumes from) are dropped, so the file reads as one uninterrupted run.

  Args:
    workdir: output folder.
    start_step: the step training (re)starts from.
    tensorboard: also write TensorBoard events to DIR/tensorboard.
    enabled: False on processes other than 0 of a multi-host run.
  """

  def __init__(self, workdir: str, *, start_step: int = 0, tensorboard: bool = True,
               enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= start_step]
    with open(self.path, "w") as f:
      for r in kept:
        f.write(json.dumps(r) + "\n")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                               purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, metrics: Mapping[str, Any]) -> Dict[str, Any]:
    """Writes one record and returns it as plain Python values."""
    record = {"step": int(step)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    if not self.enabled:
      return record
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    return record

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
