import os
import sys

# Started with 0, 1 or 2 closed (`up >&-`, a bare launcher), the first files and sockets
# opened would take those numbers, and what is printed would go into them: `up`'s echo and
# log went into the event loop's epoll and wake-up socket pair. /dev/null takes each closed
# one first, as OpenSSH's sanitise_stdfd does.
for _fd in (0, 1, 2):
    try:
        os.fstat(_fd)
    except OSError:
        os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one

from .quickcli import run  # noqa: E402

# `status` takes the quick path when it can (quickcli.py); everything else, the full CLI.
code = run(sys.argv[1:])
if code is None:
    from .cli import main

    code = main()
raise SystemExit(code)
