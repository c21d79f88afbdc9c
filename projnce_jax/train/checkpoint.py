"""orbax checkpoints: train state + data-iterator state, periodic and final, keep-N, async.

Layout: DIR/checkpoints/<step>/{state, data}. `state` is the TrainState pytree
(StandardSave), `data` the loader's JSON state (JsonSave). A checkpoint that cannot be
restored (partially written, truncated or deleted files) is moved to
DIR/checkpoints_unreadable/<step> and the previous one is used instead.
"""
import os
import shutil
import time
from typing import Any, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` with the two items this trainer saves.

  Args:
    directory: where <step>/ folders go (created if missing).
    max_to_keep: keep the N newest checkpoints.
    async_save: write in a background thread (the step loop goes on).

  Example:
    >>> ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=3)
    >>> ckpt.save(100, state, loader.get_state())
    >>> state, data_state = ckpt.restore(ckpt.latest_step(), state)
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> Optional[int]:
    """The newest finished checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def path(self, step: Optional[int]) -> Optional[str]:
    """The folder of a checkpoint (None for None)."""
    return None if step is None else os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, data_state: Any, *, force: bool = True) -> bool:
    """Starts saving `state` and the JSON-able `data_state` at `step`."""
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_state)),
        force=force)

  def restore(self, step: int, target: Any) -> Tuple[Any, Any]:
    """Restores (state, data_state) at `step`; `target` gives structure, dtypes, shardings."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def restore_latest(self, target: Any) -> Optional[Tuple[int, Any, Any]]:
    """Restores the newest checkpoint that can be read, newest first.

    A checkpoint that fails to restore is logged as a warning and moved aside to
    `<directory>_unreadable/<step>` (kept, so nothing is lost; out of the way of the
    saves that re-create its step).

    Args:
      target: gives structure, dtypes and shardings (see `restore`).

    Returns:
      (step, state, data_state), or None when there is no readable checkpoint.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, data_state = self.restore(step, target)
      except Exception as e:  # orbax raises many types for missing or truncated files.
        moved = self._move_aside(step)
        logging.warning("checkpoint %s cannot be restored (%s: %s); moved it to %s and "
                        "trying the previous one", self.path(step), type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "", moved)
        continue
      return step, state, data_state
    return None

  def _move_aside(self, step: int) -> str:
    """Moves checkpoint `step` to <directory>_unreadable/ and returns its new path."""
    dest_dir = self.directory + "_unreadable"
    dest = os.path.join(dest_dir, str(step))
    if jax.process_index() == 0:   # one process moves it on a shared file system
      os.makedirs(dest_dir, exist_ok=True)
      if os.path.exists(dest):
        dest = f"{dest}.{int(time.time())}"
      shutil.move(self.path(step), dest)
    self._manager.reload()
    return dest

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases resources."""
    self._manager.wait_until_finished()
    self._manager.close()
