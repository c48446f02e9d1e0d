"""Entry point of ``make bench``: runs ``scoped_read.py`` (arguments are passed on);
``--engine`` first runs ``engine.py`` instead, ``--pages`` runs ``deep_pages.py`` (the
arguments after either are its own).

Benchmarks are not tests: they exit non-zero only when they could not run, never because a
figure missed its goal (the printed verdict says that).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if sys.argv[1:2] == ["--pages"]:  # sessions list at depth (benchmarks/deep_pages.py)
        from benchmarks import deep_pages

        return deep_pages.main(sys.argv[2:])
    if sys.argv[1:2] == ["--engine"]:  # the engine benchmark (benchmarks/engine.py)
        from benchmarks import engine

        return engine.main(sys.argv[2:])
    from benchmarks import scoped_read

    return scoped_read.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
