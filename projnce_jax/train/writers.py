"""Metric writers: JSON lines (always), TensorBoard (tensorboardX).

Why not a library's writer: `clu.metric_writers` would bring TensorFlow or a second
TensorBoard stack; tensorboardX writes the event files alone and the JSON-lines file
below needs the set-aside-on-resume rule no writer library has.

Durability: records are appended and flushed one per line, and `sync()` (called at every
checkpoint) fsyncs them, so a checkpoint never refers to metrics that could still be lost.
Nothing is ever deleted: on resume, records written after the restored step and a torn
last line (a crash in the middle of an append) are moved to
`metrics.set_aside.jsonl` before `metrics.jsonl` is rewritten atomically.
"""
import json
import math
import os
import time
from typing import Any, Dict, List, Mapping, Tuple

from absl import logging
import numpy as np

SET_ASIDE = "metrics.set_aside.jsonl"


def _to_python(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    v = v.item() if np.ndim(v) == 0 else np.asarray(v).tolist()
  if hasattr(v, "item") and np.ndim(v) == 0:
    v = v.item()
  return v


def _parse(path: str) -> Tuple[List[Tuple[str, Dict[str, Any]]], List[str]]:
  """The (line, record) pairs of a JSON-lines file and its unreadable lines."""
  good, bad = [], []
  if not os.path.exists(path):
    return good, bad
  with open(path) as f:
    lines = f.read().split("\n")
  for line in lines:
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    except ValueError:
      bad.append(line)
      continue
    good.append((line, record))
  return good, bad


def read_metrics(path: str) -> List[Dict[str, Any]]:
  """The records of a metrics.jsonl file ([] when it does not exist).

  Lines that are not JSON objects (a torn last line after a crash) are skipped with a
  warning.
  """
  good, bad = _parse(path)
  if bad:
    logging.warning("%s: skipped %d unreadable line(s) (a torn write?): %s", path,
                    len(bad), [b[:80] for b in bad])
  return [r for _, r in good]


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file, fsync and rename."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


class MetricWriter:
  """Appends `{"step": s, ...}` records to DIR/metrics.jsonl and TensorBoard events.

  On resume from step `start_step`, records with step > start_step (written after the
  checkpoint the run resumes from) and unreadable lines are moved to
  DIR/metrics.set_aside.jsonl (each as {"set_aside_at", "resumed_from_step", "record"
  or "unreadable_line"}), so metrics.jsonl reads as one uninterrupted run and nothing is
  lost. A file that needs no change is left untouched.

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
    self._file = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._set_aside_later_records(start_step)
    self._file = open(self.path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                               purge_step=start_step + 1 if start_step else None)

  def _set_aside_later_records(self, start_step: int) -> None:
    if not os.path.exists(self.path):
      return
    good, bad = _parse(self.path)
    kept = [line for line, r in good if r.get("step", 0) <= start_step]
    later = [r for _, r in good if r.get("step", 0) > start_step]
    with open(self.path) as f:
      ends_cleanly = f.read().endswith("\n") or os.path.getsize(self.path) == 0
    if not later and not bad and ends_cleanly:
      return
    if bad:
      logging.warning("%s: %d unreadable line(s) (a torn write?) moved to %s", self.path,
                      len(bad), SET_ASIDE)
    if later:
      logging.warning("%s: %d record(s) after the restored step %d (steps %d..%d) moved "
                      "to %s", self.path, len(later), start_step, later[0].get("step"),
                      later[-1].get("step"), SET_ASIDE)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    aside = [{"set_aside_at": stamp, "resumed_from_step": start_step, "record": r}
             for r in later]
    aside += [{"set_aside_at": stamp, "resumed_from_step": start_step,
               "unreadable_line": line} for line in bad]
    if aside:
      with open(os.path.join(os.path.dirname(self.path), SET_ASIDE), "a") as f:
        for entry in aside:
          f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    write_text_atomic(self.path, "".join(line + "\n" for line in kept))

  def write(self, step: int, metrics: Mapping[str, Any]) -> Dict[str, Any]:
    """Writes one record (flushed) and returns it as plain Python values."""
    record = {"step": int(step)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    if not self.enabled:
      return record
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    return record

  def sync(self) -> None:
    """Flushes and fsyncs the records written so far (called at every checkpoint)."""
    if self._file is not None:
      self._file.flush()
      os.fsync(self._file.fileno())

  def close(self) -> None:
    if self._file is not None:
      self.sync()
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


# Results written to TensorBoard at the end of a run (the scalars of results.json).
FINAL_METRICS = ("linear_probe_accuracy", "knn_accuracy", "linear_probe_accuracy_clean_labels",
                 "knn_accuracy_clean_labels", "heldout_mi_bound", "heldout_mi_bound_se",
                 "online_probe_accuracy", "train_seconds")


def _hparam_value(v: Any):
  if isinstance(v, bool) or isinstance(v, (int, float, str)):
    return v
  return None if v is None else str(v)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """{"a.b": value} for a nested config; values TensorBoard's hparams accept (lists as
  strings, None dropped)."""
  flat = {}
  for k, v in config.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      flat.update(flatten_config(v, key + "."))
    else:
      value = _hparam_value(v)
      if value is not None:
        flat[key] = value
  return flat


def write_final_tensorboard(workdir: str, results: Mapping[str, Any],
                            config: Mapping[str, Any], step: int) -> None:
  """Adds the run's final metrics (`final/<name>` at `step`) and its config as hparams
  (WORKDIR/tensorboard/hparams, the final metrics as the hparams' metrics)."""
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  metrics = {f"final/{k}": float(results[k]) for k in FINAL_METRICS
             if isinstance(results.get(k), (int, float)) and math.isfinite(results[k])}
  tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
  try:
    for k, v in metrics.items():
      tb.add_scalar(k, v, step)
    tb.add_hparams(flatten_config(config), metrics, name="hparams", global_step=step)
  finally:
    tb.close()
