"""The one exception type for user mistakes, and how the environment's failures read.

Anything a user can get wrong (a file, a flag, a checkpoint, a corpus) raises
`UserError` with a message that names the problem and the fix. The CLI prints it
on one line and exits with status 2; so are operating-system errors (a full disk,
a read-only or unwritable location, a file where a folder should be), described
by `describe_os_error`. Everything else is a bug and keeps its traceback.
"""

import errno
import math
import shutil


class UserError(Exception):
    """A problem with the user's input, explained in the message."""


_FIXES = {
    errno.ENOSPC: ("no space left on the device", "free some space or choose a location "
                   "on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another location"),
    errno.EROFS: ("the file system is read-only", "choose a location you can write to"),
    errno.EACCES: ("permission denied", "choose a location you can write to, or fix its "
                   "permissions"),
    errno.EPERM: ("operation not permitted", "choose a location you can write to"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose a path whose "
                    "parents are folders"),
    errno.EISDIR: ("is a folder, not a file", "give a file path"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
}


def describe_os_error(e: OSError) -> str:
    """One line for an operating-system error: the path, what happened, the fix.
    (The multi-file outputs were staged, so nothing half-written is left.)"""
    if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        src, dst, why = e.args[0][0]
        return f"{dst}: could not copy {src} ({why}); check the disk space and permissions " \
               f"of the destination"
    what, fix = _FIXES.get(e.errno, (e.strerror or str(e), "check the path and try again"))
    path = e.filename if e.filename is not None else "?"
    return f"{path}: {what}; {fix}"


def check_ranges(positive=(), fractions=(), at_least=(), choices=()) -> None:
    """The range checks of the config dataclasses, one mechanism for all of them
    (so the Python API refuses what the flags refuse). Each item names its flag;
    a None value is "not set" and passes.

    Args:
      positive: (flag, value): finite and > 0 (learning rates, limits).
      fractions: (flag, value): in [0, 1) (warm-up, weight decay, dropout).
      at_least: (flag, value, minimum): integers such as steps and sizes.
      choices: (flag, value, allowed): one of `allowed` (the compute dtype).
    """
    for flag, value in positive:
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise UserError(f"{flag} must be positive and finite, got {value}")
    for flag, value in fractions:
        if value is not None and not 0 <= value < 1:
            raise UserError(f"{flag} must be in [0, 1), got {value}")
    for flag, value, minimum in at_least:
        if value is not None and value < minimum:
            raise UserError(f"{flag} must be >= {minimum}, got {value}")
    for flag, value, allowed in choices:
        if value not in allowed:
            raise UserError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
