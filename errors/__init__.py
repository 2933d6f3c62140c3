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


def run_cli(app, argv: list[str] | None, prog_name: str, refusals: dict) -> int:
    """Run the typer ``app`` as a command line; its exit code. What the user can act on (an instance of a key
    of ``refusals``, worded by its value) is one line "error: ..." and exit 2, a usage error click's own
    line, Ctrl+C 130: never a traceback for them. Both CLIs (``python -m trainer``, ``python -m service``)."""
    import sys

    import click
    import typer

    try:
        app(args=argv, standalone_mode=False, prog_name=prog_name)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except click.exceptions.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:
        for kinds, worded in refusals.items():
            if isinstance(exc, kinds):
                print(f"error: {worded(exc)}", file=sys.stderr)
                return 2
        usage_error = click_usage_error(exc)
        if usage_error is None:
            raise
        usage_error.show()  # click's own one-line usage message
        return usage_error.exit_code
    return 0
