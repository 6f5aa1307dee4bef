"""``python -m lrkit``: the ``lrkit`` command (the same as the console script)."""
from lrkit.cli import main

if __name__ == "__main__":
    main(prog_name="lrkit")
