"""orbax checkpoints: train state + data-iterator state, periodic and final, keep-N, async.

Layout: DIR/checkpoints/<step>/{state, data}. `state` is the TrainState pytree
(StandardSave), `data` the loader's JSON state (JsonSave).
"""
import os
from typing import Any, Optional, Tuple

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

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases resources."""
    self._manager.wait_until_finished()
    self._manager.close()
