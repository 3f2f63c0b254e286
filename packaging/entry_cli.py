"""The frozen app's `delineo` command: the CLI, and the viewer when run without a sub-command.

`delineo -m MODULE ARGS` runs a bundled module as `python -m MODULE ARGS` would: the code starts
helpers with `sys.executable -m ...` (each `bench model` configuration in its own process), and
in the frozen app sys.executable is this command.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    if len(sys.argv) > 2 and sys.argv[1] == "-m":
        import runpy

        module = sys.argv[2]
        sys.argv = [sys.argv[0], *sys.argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        sys.exit(0)
    from app.cli import main

    sys.exit(main())
