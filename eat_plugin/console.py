"""What every command-line tool of the plugin shares: the error wrapper, the progress bar, skip reasons.

One home for the scripts' plumbing (``scripts/*``, ``eat_plugin.cli``, ``eat_plugin.data.prepare``).
Imports nothing from the plugin; the plugin's input errors subclass :class:`InputError` here.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, Optional, Sequence, Type


class InputError(Exception):
    """Bad input a user can fix (a file, a field, a layout); the message names it and what was expected."""


def run_cli(run: Callable[[], int], *errors: Type[BaseException]) -> int:
    """Run a script body: an ``InputError``, ``OSError`` (or one of ``errors``) is ``error: ...`` on stderr
    and exit status 1, Ctrl-C is status 130; no traceback. Anything else is a bug and keeps its traceback."""
    try:
        return run()
    except (InputError, OSError, *errors) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def progress(items: Sequence, desc: str, enable: Optional[bool] = None, unit: str = "clip") -> Iterable:
    """A tqdm progress bar on stderr (tqdm comes with fairseq) over ``items``; by default only for more
    than one item on a terminal."""
    if enable is None:
        enable = len(items) > 1 and sys.stderr.isatty()
    if not enable:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def failure_reason(err: BaseException, path) -> str:
    """Why ``path`` failed: the error's message without its leading ``path: `` (the type name if empty)."""
    message = str(err) or type(err).__name__
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message
