"""`python -m refine ...`: the `refine` command (e.g. `accelerate launch -m refine distill --config FILE`)."""

from __future__ import annotations

from refine.cli.app import main

if __name__ == "__main__":
    main()
