"""Errors a user can act on. The CLI prints them as one line and exits 2; never a traceback."""


class UserError(Exception):
    """Something the user gave us is wrong (a file, an argument, a dataset name)."""


class DataError(UserError):
    """A data file is malformed. The message names the file, the row and what is wrong."""


class TrainingError(UserError):
    """Training could not produce a usable model (NaN loss, empty data)."""


def invalid_settings(exc: Exception) -> UserError:
    """A pydantic ``ValidationError`` of settings as one line naming the first bad setting."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
    return UserError(f"invalid settings: {where}: {first.get('msg')}")


def click_usage_error(exc: BaseException):
    """``exc`` if it is a usage error (missing argument, bad option value) from click or from
    the copy of click that typer >= 0.25 vendors, else None. Its ``show()`` prints click's line."""
    import click

    classes: tuple[type, ...] = (click.exceptions.ClickException,)
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        classes += (VendoredClickException,)
    except ImportError:
        pass
    return exc if isinstance(exc, classes) else None
