"""An exclusive, atomic claim on the converter's output directory: nothing is ever half-written or lost.

    with OutputClaim.acquire(output_dir, overwrite, protected={"the source checkpoint": src}) as claim:
        ... write everything into claim.staging ...
        claim.publish()

* `output_path` fixes the output once: its parent resolved (symbolic links in the parents are followed once, so
  every later step works in the real folder), its own name kept; `..` as the last component is refused.
* `acquire` refuses an output that is a symlink or a file, or lies below a file, a non-empty one without
  `overwrite`, and, with
  `overwrite`, one that is, contains or lies inside a protected folder (the source, the vision tower) or that is
  or contains the current directory. It takes a lock file `.<name>.lock` beside the output (`O_EXCL`: a second conversion to the same
  output fails at once, naming the running one), removes the staging folders of conversions that were killed
  (their lock names a dead process) and names, without touching them, backups a killed `--overwrite` left.
* Everything is written into a staging folder `.<name>.converting-*` beside the output (same filesystem).
* `publish` renames the staging folder onto the output. A new or empty output is replaced atomically by
  `rename(2)`, which fails when files appeared in it meanwhile; with `overwrite`, the old output is first
  compared with what it held when claimed (refused if anything changed), moved aside, and deleted only if it
  still holds exactly what was claimed. The published folder gets the permissions of the user's umask.
* Leaving the block without publishing (an error, Ctrl-C) removes the staging folder; the lock always goes.
* Every refusal and every failure to create the lock or the staging folder (a read-only or unwritable folder) is a
  one-line `ConversionError`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ConversionError, os_error_reason

logger = logging.getLogger("deepstack_hf.conversion")


def _listing(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Relative path -> (inode, size, mtime_ns) of everything under `directory` (symlinks not followed)."""
    result = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root) / name
            stat = path.lstat()
            result[path.relative_to(directory).as_posix()] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return result


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_not_overlapping(output: Path, protected: dict[str, Path]) -> None:
    """Refuse an output that is, contains or lies inside a protected folder, or is or contains the cwd."""
    out = output.resolve()
    for what, folder in {**protected, "the current directory": Path.cwd()}.items():
        folder = folder.resolve()
        inside = what != "the current directory" and out.is_relative_to(folder)
        if out == folder or folder.is_relative_to(out) or inside:
            relation = "is" if out == folder else ("lies inside" if inside else "contains")
            raise ConversionError(f"Output directory {output} {relation} {what} ({folder}); choose another output.")


class OutputClaim:
    """See the module docstring. Use `acquire`, then `with claim:`; write into `staging`; call `publish()`."""

    def __init__(self, output: Path, overwrite: bool, lock: Path, claimed: dict | None):
        self.output, self.overwrite, self.lock, self.claimed = output, overwrite, lock, claimed
        self.staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.converting-", dir=output.parent))
        self.published = False

    @classmethod
    def acquire(cls, output_dir: str | os.PathLike, overwrite: bool, protected: dict[str, Path]) -> OutputClaim:
        output = cls.output_path(output_dir)
        cls.check_output(output, overwrite)
        if overwrite:  # without it, an output that is or contains a protected folder is non-empty, so refused
            check_not_overlapping(output, protected)
        claimed = _listing(output) if output.is_dir() else None
        lock = output.parent / f".{output.name}.lock"
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            cls._take_lock(lock, output)
        except OSError as error:
            raise ConversionError(f"Cannot write the output {output}: {os_error_reason(error)}.") from None
        try:
            cls._clean_leftovers(output)
            return cls(output, overwrite, lock, claimed)
        except OSError as error:
            lock.unlink(missing_ok=True)
            raise ConversionError(f"Cannot write the output {output}: {os_error_reason(error)}.") from None
        except BaseException:
            lock.unlink(missing_ok=True)
            raise

    @staticmethod
    def output_path(output_dir: str | os.PathLike) -> Path:
        """The absolute output path, its parent resolved (no symbolic link or `..` left above the output itself)."""
        output = Path(output_dir).expanduser().absolute()
        if output.name in ("", ".."):
            raise ConversionError(f"Output path {output} does not name a folder; give the output folder's own name.")
        return output.parent.resolve() / output.name

    @staticmethod
    def check_output(output: Path, overwrite: bool) -> None:
        """The checks that need no plan: not a symlink, not a file nor below one, empty unless `overwrite`."""
        if output.is_symlink():
            raise ConversionError(f"Output path {output} is a symbolic link; give the real directory.")
        if output.exists() and not output.is_dir():
            raise ConversionError(f"Output path {output} exists and is not a directory.")
        blocking = next((parent for parent in output.parents if parent.exists() and not parent.is_dir()), None)
        if blocking is not None:
            raise ConversionError(f"Output path {output} cannot be created: {blocking} is a file, not a directory.")
        if output.is_dir() and not overwrite and any(output.iterdir()):
            raise ConversionError(f"Output directory {output} is not empty; pass --overwrite to replace its contents.")

    @staticmethod
    def _take_lock(lock: Path, output: Path) -> None:
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(json.loads(lock.read_text()).get("pid", 0))
                except (ValueError, AttributeError, TypeError, OSError):
                    pid = -1  # being written this instant, or not ours: never taken over
                if pid < 0 or _process_alive(pid):
                    raise ConversionError(
                        f"Another conversion (pid {pid if pid > 0 else '?'}) is writing {output}; wait for it, or delete {lock} if no "
                        "such conversion runs."
                    ) from None
                logger.warning("Removing the lock %s of an interrupted conversion (pid %s).", lock, pid)
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump({"pid": os.getpid()}, handle)
            return
        raise ConversionError(f"Could not lock {output}: another conversion took {lock} at the same moment.")

    @staticmethod
    def _clean_leftovers(output: Path) -> None:
        """Staging folders of killed runs are ours to delete; backups of a killed --overwrite are only named."""
        for path in sorted(output.parent.glob(f".{output.name}.converting-*")):
            logger.warning("Removing %s, left by an interrupted conversion.", path)
            shutil.rmtree(path, ignore_errors=True)
        for path in sorted(output.parent.glob(f".{output.name}.old-*")):
            logger.warning(
                "%s holds the previous contents of %s, left by an interrupted --overwrite; it is kept, delete it "
                "yourself once you have checked it.", path, output
            )

    def __enter__(self) -> OutputClaim:
        return self

    def __exit__(self, *exc) -> None:
        if not self.published:
            shutil.rmtree(self.staging, ignore_errors=True)
        self.lock.unlink(missing_ok=True)

    def publish(self) -> None:
        """Move the finished staging folder to the output (see the module docstring)."""
        os.chmod(self.staging, 0o777 & ~_umask())
        if self.claimed:
            self._replace_existing()
        else:
            try:
                os.rename(self.staging, self.output)
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise
                raise ConversionError(
                    f"{self.output} was created or filled by someone else during the conversion; nothing in it was "
                    "touched and the converted files were discarded."
                ) from None
        self.published = True

    def _replace_existing(self) -> None:
        if self.output.is_symlink() or not self.output.is_dir() or _listing(self.output) != self.claimed:
            raise ConversionError(
                f"{self.output} changed during the conversion; nothing in it was replaced and the converted files "
                "were discarded."
            )
        backup = Path(tempfile.mkdtemp(prefix=f".{self.output.name}.old-", dir=self.output.parent))
        backup.rmdir()
        os.rename(self.output, backup)
        try:
            os.rename(self.staging, self.output)
        except OSError:
            os.rename(backup, self.output)
            raise
        if _listing(backup) == self.claimed:
            shutil.rmtree(backup)
        else:
            logger.warning("Files appeared in %s while it was replaced; they are kept in %s.", self.output, backup)


__all__ = ["OutputClaim", "check_not_overlapping"]
