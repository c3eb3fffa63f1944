"""Errors that name the file, line or record and what is wrong with it."""


class ClinalignError(Exception):
    """A user-facing error: the CLI prints it without a traceback and exits non-zero."""


class InputError(ClinalignError):
    """Bad input data; carries where it was found."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 record: str | None = None):
        where = []
        if path:
            where.append(str(path) + (f":{line}" if line else ""))
        if record:
            where.append(f"record {record}")
        self.path, self.line, self.record = path, line, record
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
