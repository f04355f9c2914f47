"""The one exception type for user mistakes.

Anything a user can get wrong (a file, a flag, a checkpoint, a corpus) raises
`UserError` with a message that names the problem and the fix. The CLI prints it
on one line and exits with status 2; everything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A problem with the user's input, explained in the message."""
