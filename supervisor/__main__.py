import sys

from .quickcli import run

# `status` takes the quick path when it can (quickcli.py); everything else, the full CLI.
code = run(sys.argv[1:])
if code is None:
    from .cli import main

    code = main()
raise SystemExit(code)
