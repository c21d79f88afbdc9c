"""orbax checkpoints: train state + data-iterator state, periodic and final, keep-N, async.

Layout: DIR/checkpoints/<step>/{state, data, manifest.json}. `state` is the TrainState
pytree (StandardSave), `data` the loader's JSON state (JsonSave), `manifest.json` the size
and CRC-32 of every file of the checkpoint. The manifest is part of the save's commit:
orbax writes a checkpoint into a temporary folder and commits it by renaming that folder;
the manifest is written into the temporary folder just before the rename
(`_ManifestedRename`), so every committed checkpoint has one. (With an orbax that does not
offer this hook, the manifest is written right after the commit; a run killed in between
leaves an "unverified" checkpoint, handled as `restore_latest` says.)

Restoring never guesses. A checkpoint whose restore fails is set aside (moved to
DIR/checkpoints_unreadable/<step>, the previous one is used instead) only when it is
*shown* to be incomplete or corrupt: orbax's commit record is missing, or a file listed in
its manifest is missing or differs in size or checksum. Any other restore error (a
transient I/O error, out of memory, a state of another shape) stops with
`CheckpointRestoreError` naming the cause, and nothing is moved.

With several processes every process takes part in saving and restoring (orbax
coordinates them); process 0 writes manifests and moves checkpoints aside.

Why a manifest of our own: orbax verifies neither sizes nor checksums of a committed
checkpoint on restore (its commit record says a save finished, not that the bytes are
intact); CRC-32 from the standard library (zlib) is enough to detect damage, not tampering.
"""
import errno
import inspect
import json
import os
import shutil
import time
import zlib
from typing import Any, Optional, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

MANIFEST = "manifest.json"
COMMIT_RECORD = "_CHECKPOINT_METADATA"   # written by orbax when a checkpoint is committed


class CheckpointRestoreError(RuntimeError):
  """A checkpoint could not be restored and is not shown to be damaged; nothing moved."""


def _crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      crc = zlib.crc32(chunk, crc)
  return crc


# orbax's own records, which its commit writes or updates after the manifest is written.
_COMMIT_FILES = (COMMIT_RECORD, "commit_success.txt")


def _files(folder: str, exclude=()):
  """Relative paths of the files under `folder` (the manifest and `exclude` left out)."""
  out = []
  for dirpath, _, names in os.walk(folder):
    for name in names:
      rel = os.path.relpath(os.path.join(dirpath, name), folder)
      if rel != MANIFEST and rel not in exclude:
        out.append(rel)
  return sorted(out)


def write_manifest(folder: str, exclude=()) -> None:
  """Writes `folder`/manifest.json: {relative path: [size, crc32]} (atomically)."""
  entries = {rel: [os.path.getsize(os.path.join(folder, rel)),
                   _crc32(os.path.join(folder, rel))] for rel in _files(folder, exclude)}
  tmp = os.path.join(folder, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"files": entries}, f, indent=0, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(folder, MANIFEST))


def disk_full(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from, is "no space left on device"."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _exists(path: str) -> bool:
  """Whether `path` exists; only "no such file" means False (a permission or I/O error
  raises instead of passing for a missing file)."""
  try:
    os.stat(path)
  except FileNotFoundError:
    return False
  return True


def find_damage(folder: str) -> Optional[str]:
  """What shows that the checkpoint in `folder` is incomplete or corrupt, or None.

  None means nothing is shown to be wrong (including: no manifest to check against).

  Raises:
    OSError: the checkpoint cannot be read (permissions, I/O): not evidence of damage.
  """
  if not _exists(folder):
    return f"{folder} is missing"
  if not _exists(os.path.join(folder, COMMIT_RECORD)):
    return f"orbax's commit record {COMMIT_RECORD} is missing (an incomplete save)"
  manifest_path = os.path.join(folder, MANIFEST)
  if not _exists(manifest_path):
    return None
  with open(manifest_path) as f:
    text = f.read()
  try:
    entries = json.loads(text)["files"]
  except (ValueError, KeyError, TypeError) as e:
    return f"its manifest is corrupt ({type(e).__name__}: {e})"
  for rel, (size, crc) in sorted(entries.items()):
    path = os.path.join(folder, rel)
    if not _exists(path):
      return f"file {rel} is missing"
    if os.path.getsize(path) != size:
      return f"file {rel} has {os.path.getsize(path)} bytes, {size} were written"
    if _crc32(path) != crc:
      return f"file {rel} differs from what was written (CRC-32)"
  return None


def is_verified(folder: str) -> bool:
  """Whether the checkpoint has a manifest to check it against."""
  return _exists(os.path.join(folder, MANIFEST))


_RENAME = getattr(getattr(getattr(ocp, "path", None), "atomicity", None),
                  "AtomicRenameTemporaryPath", None)


def _write_tmp_manifest(temporary_path) -> None:
  """The manifest of a step's temporary folder (orbax's step metadata marks it; the items'
  own temporary folders inside it, finalized first, get none)."""
  folder = os.fspath(temporary_path.get())
  if os.path.exists(os.path.join(folder, COMMIT_RECORD)):
    write_manifest(folder, exclude=_COMMIT_FILES)


if _RENAME is not None and inspect.iscoroutinefunction(getattr(_RENAME, "finalize", None)):

  class _ManifestedRename(_RENAME):
    """orbax's atomic-rename commit, with the manifest written just before the rename."""

    async def finalize(self, *args, **kwargs):
      import asyncio  # pylint: disable=g-import-not-at-top
      await asyncio.to_thread(_write_tmp_manifest, self)
      await super().finalize(*args, **kwargs)

elif _RENAME is not None and callable(getattr(_RENAME, "finalize", None)):

  class _ManifestedRename(_RENAME):  # orbax versions whose finalize is synchronous
    """orbax's atomic-rename commit, with the manifest written just before the rename."""

    def finalize(self, *args, **kwargs):
      _write_tmp_manifest(self)
      super().finalize(*args, **kwargs)

else:
  _ManifestedRename = None


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` with the two items this trainer saves.

  Args:
    directory: where <step>/ folders go (created if missing).
    max_to_keep: keep the N newest checkpoints.
    async_save: write in a background thread (the step loop goes on).

  Example:
    >>> ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=3)
    >>> state = {"params": jnp.ones(3)}       # a TrainState in the trainer
    >>> ckpt.save(100, state, {"next_index": 256})   # the data loader's state
    True
    >>> ckpt.wait()
    >>> state, data_state = ckpt.restore(ckpt.latest_step(), state)
    >>> data_state
    {'next_index': 256}
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    extra = {} if _ManifestedRename is None else {"temporary_path_class": _ManifestedRename}
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save, **extra)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))
    self._unmanifested = []   # steps saved by this object whose manifest is not written

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
    self.wait()   # orbax waits for the previous save anyway; finish its manifest first
    saved = self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_state)),
        force=force)
    if saved:
      self._unmanifested.append(step)
    return saved

  def restore(self, step: int, target: Any) -> Tuple[Any, Any]:
    """Restores (state, data_state) at `step`; `target` gives structure, dtypes, shardings."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def restore_latest(self, target: Any) -> Optional[Tuple[int, Any, Any]]:
    """Restores the newest checkpoint that is intact, checking it before orbax reads it.

    Each checkpoint, newest first, is checked against its manifest (`find_damage`: commit
    record, then every file's size and CRC-32) before it is restored. One shown to be
    incomplete or corrupt is logged as a warning naming the file and moved aside to
    `<directory>_unreadable/<step>` (kept, so nothing is lost); the previous one is tried
    next. A checkpoint without a manifest (a save whose manifest was not yet written when
    the run was killed) is "unverified": the newest verified checkpoint is preferred, with
    a warning, and the unverified newer ones are moved to `<directory>_unverified/<step>`
    (kept); an unverified one is used only when none is verified. None is called damaged
    without evidence.

    Args:
      target: gives structure, dtypes and shardings (see `restore`).

    Returns:
      (step, state, data_state), or None when there is no checkpoint.

    Raises:
      CheckpointRestoreError: a checkpoint cannot be read (permissions, I/O) or restored
        and is not shown to be damaged (e.g. out of memory, a model of another shape);
        names the checkpoint and the cause. Nothing is moved.
    """
    try:
      self.finish_cleanups()
    except OSError as e:
      raise self._unreadable(None, e) from e
    steps = sorted(self.all_steps(), reverse=True)
    verified = {}
    for step in steps:
      try:
        verified[step] = is_verified(self.path(step))
      except OSError as e:
        raise self._unreadable(step, e) from e
    unverified_skipped = []
    for step in steps:
      if not verified[step] and any(verified[s] for s in steps if s < step):
        unverified_skipped.append(step)
        continue
      try:
        damage = find_damage(self.path(step))
      except OSError as e:
        raise self._unreadable(step, e) from e
      if damage is not None:
        moved = self._move_aside(step)
        logging.warning("checkpoint %s is damaged: %s; moved it to %s and trying the "
                        "previous one", self.path(step), damage, moved)
        continue
      if unverified_skipped:
        # Kept (not called damaged) but out of the way of the saves that re-create them.
        moved = [self._move_aside(s, "_unverified") for s in unverified_skipped]
        logging.warning("checkpoint(s) %s have no manifest (unverified: the run stopped "
                        "before it was written); resuming from the newest verified one, "
                        "step %d; the unverified ones were moved to %s", unverified_skipped,
                        step, moved)
      elif not verified[step]:
        logging.warning("checkpoint %s has no manifest (unverified) and no verified one "
                        "exists; restoring it unchecked", self.path(step))
      try:
        state, data_state = self.restore(step, target)
      except Exception as e:  # orbax raises many types for missing or truncated files.
        cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        damage = find_damage(self.path(step))
        if damage is None:
          raise CheckpointRestoreError(
              f"checkpoint {self.path(step)} cannot be restored ({cause}), and it is not "
              "shown to be incomplete or corrupt, so nothing was moved; fix the cause "
              "and rerun (or move the checkpoint away to resume from an older one)"
          ) from e
        moved = self._move_aside(step)
        logging.warning("checkpoint %s cannot be restored (%s): %s; moved it to %s and "
                        "trying the previous one", self.path(step), cause, damage, moved)
        continue
      return step, state, data_state
    return None

  def finish_cleanups(self) -> list:
    """Deletes old checkpoints that a stopped keep-N cleanup left half-deleted.

    orbax deletes the oldest checkpoints after a save; a run killed during that deletion
    leaves a folder without its commit record. Such a folder older than a committed
    checkpoint can never be restored (and is older than what would be kept), so its
    deletion is finished here, with a warning. Returns the steps deleted.
    """
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return []
    folders = {int(n): os.path.join(self.directory, n) for n in os.listdir(self.directory)
               if n.isdigit() and os.path.isdir(os.path.join(self.directory, n))}
    committed = [s for s, f in folders.items() if _exists(os.path.join(f, COMMIT_RECORD))]
    if not committed:
      return []
    done = []
    for step, folder in sorted(folders.items()):
      if step < max(committed) and step not in committed:
        shutil.rmtree(folder)
        done.append(step)
    if done:
      logging.warning("%s: finished deleting old checkpoint(s) %s, left half-deleted by a "
                      "cleanup that was stopped", self.directory, done)
      self._manager.reload()
    return done

  def _unreadable(self, step: Optional[int], error: OSError) -> CheckpointRestoreError:
    where = self.path(step) if step is not None else self.directory
    what = "checkpoint" if step is not None else "the checkpoints in"
    return CheckpointRestoreError(
        f"{what} {where} cannot be read ({type(error).__name__}: "
        f"{error.strerror or error} on {error.filename or where}); nothing was "
        "moved: fix the permissions or the file system and rerun")

  def _move_aside(self, step: int, suffix: str = "_unreadable") -> str:
    """Moves checkpoint `step` to <directory><suffix>/ and returns its new path."""
    dest_dir = self.directory + suffix
    dest = os.path.join(dest_dir, str(step))
    if os.path.exists(dest):
      dest = f"{dest}.{int(time.time())}"
    if jax.process_index() == 0:   # one process moves it on a shared file system
      try:
        os.makedirs(dest_dir, exist_ok=True)
        shutil.move(self.path(step), dest)
      except OSError as e:
        raise CheckpointRestoreError(
            f"checkpoint {self.path(step)} cannot be moved aside to {dest} "
            f"({type(e).__name__}: {e}); move it away by hand and rerun") from e
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"projnce_move_aside_{step}")
    self._manager.reload()
    return dest

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk, and writes their manifests.

    Raises:
      WorkdirError: the disk filled up during an asynchronous save (one line naming the
        last good checkpoint).
    """
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if not disk_full(e):
        raise
      self._unmanifested = []
      from projnce_jax.train.validate import WorkdirError  # pylint: disable=g-import-not-at-top
      good = [s for s in self.all_steps() if is_verified(self.path(s))]
      last = self.path(max(good)) if good else None
      raise WorkdirError(f"the disk filled up while saving a checkpoint in "
                         f"{self.directory}; the last good checkpoint is {last}; free some "
                         "space and rerun to resume") from e
    pending, self._unmanifested = self._unmanifested, []
    if jax.process_index() != 0:
      return
    for step in pending:  # committed with its manifest, unless this orbax lacks the hook
      folder = self.path(step)
      if (os.path.exists(os.path.join(folder, COMMIT_RECORD))
          and not os.path.exists(os.path.join(folder, MANIFEST))):
        write_manifest(folder, exclude=_COMMIT_FILES)

  def close(self) -> None:
    """Waits for pending saves (and their manifests) and releases resources."""
    self.wait()
    self._manager.close()
