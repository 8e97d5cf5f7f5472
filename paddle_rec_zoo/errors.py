"""The one exception type for mistakes a user can fix (bad config, bad data, missing files).

The CLIs print its message on one line and exit with status 2, without a traceback; any other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    pass
