"""Replace a file atomically, with the permissions a plain ``open(path, "w")`` would leave, and
clean up after writers that were killed.

:func:`replace_atomically` writes a temporary file in the target's directory, flushes and fsyncs
it, then renames it over the target (``os.replace``) and fsyncs the directory, so the target always
holds either the old or the new content. The final file has the existing file's permissions, or
``0o666`` less the umask for a new one; the temporary is created with them (the umask applies), so
what it holds is never readable by anyone who cannot read the target, even when a killed writer
leaves it behind.

Temporaries of a target are named ``.<name>.<crc32 of name>.<16 random hex digits>.fastopt.tmp``,
and each writer holds an exclusive ``flock`` on its own until it is renamed;
:func:`remove_stale_temporaries` removes those of a target whose lock it can take, i.e. those no
live writer holds. Where ``fcntl`` is missing (Windows) it removes those untouched for 10 minutes,
which Windows refuses anyway while a writer still has the file open.
"""
import os
import re
import secrets
import time
import zlib

try:
    import fcntl
except ImportError:   # Windows
    fcntl = None

TEMP_SUFFIX = ".fastopt.tmp"
#: Without flock, a temporary untouched this long is taken as abandoned.
UNLOCKED_STALE_SECONDS = 600
_OPEN_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def replace_atomically(path, write):
    """Replace the file ``path`` with what ``write(f)`` writes to a binary file object."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = create_temporary(path, mode_of(path))
    try:
        with open(fd, "wb", closefd=False) as f:
            write(f)
            f.flush()
            os.fsync(fd)
        keep_mode_of(path, fd)
        if fcntl is None:      # Windows cannot rename a file that is still open
            os.close(fd)
            fd = None
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        if fd is not None:
            os.close(fd)      # releases the lock, now on the renamed file
    try:   # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def temporary_prefix(path):
    """``.<name>.<crc32 of name>.``: the start of every temporary file name of target ``path``."""
    name = os.path.basename(os.path.abspath(path))
    return f".{name[:80]}.{zlib.crc32(os.fsencode(name)):08x}."


def mode_of(path):
    """The permission bits the checkpoint at ``path`` ends up with: the existing file's, or 0o666
    (less the umask, which ``os.open`` applies) for a new one."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666


def create_temporary(path, mode):
    """Create with permission bits ``mode`` (under the umask) and lock this save's temporary file
    beside ``path``; returns ``(fd, name)``."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = temporary_prefix(path)
    while True:
        name = os.path.join(directory, prefix + secrets.token_hex(8) + TEMP_SUFFIX)
        # Created with the target's mode, never a wider one: a save killed mid-write leaves the
        # state behind in this file until the next save of the target removes it.
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, mode)
        if fcntl is None:
            return fd, name
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Between creating and locking, another save's cleanup may have taken the free lock and
            # removed the file: then start again with a new one.
            if os.path.samestat(os.fstat(fd), os.stat(name)):
                return fd, name
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def remove_stale_temporaries(path):
    """Remove the temporary files that killed saves of ``path`` left behind.

    Only files named as :func:`save` names the temporaries of this target are considered, and of
    those only the ones whose lock can be taken: a save in progress holds its own. Returns the
    number of files removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(temporary_prefix(path)) + r"[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + r"\Z")
    try:
        with os.scandir(directory) as entries:
            candidates = [e.path for e in entries if pattern.match(e.name) and e.is_file(follow_symlinks=False)]
    except OSError:
        return 0
    return sum(_remove_if_abandoned(name) for name in candidates)


def _remove_if_abandoned(name):
    """Remove the temporary file ``name`` if no live save holds it; True if removed."""
    if fcntl is None:
        try:
            if time.time() - os.stat(name).st_mtime < UNLOCKED_STALE_SECONDS:
                return False
            os.remove(name)       # Windows refuses while a save has the file open
            return True
        except OSError:
            return False
    try:
        fd = os.open(name, os.O_RDONLY | _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not os.path.samestat(os.fstat(fd), os.stat(name)):
            return False
        os.remove(name)
        return True
    except OSError:           # held by a live save, or already gone
        return False
    finally:
        os.close(fd)


def keep_mode_of(path, fd):
    """Give the temporary file the mode of the file it replaces, as writing into it would keep.

    The temporary was created with that mode, but under the umask, which may have cleared some of
    its bits (or the target's mode changed during the save)."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return                 # a new file: 0o666 under the umask, from os.open
    if hasattr(os, "fchmod") and os.fstat(fd).st_mode & 0o777 != mode:
        os.fchmod(fd, mode)
