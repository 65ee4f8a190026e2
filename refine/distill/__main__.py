"""`python -m refine.distill DATA --out DIR ...`: the `refine distill` command as a module, for `accelerate launch -m`.

accelerate launch --config_file examples/accelerate/fsdp.yaml -m refine.distill runs/synth --out runs/student
"""

from __future__ import annotations

import sys

from refine.cli.app import main

if __name__ == "__main__":
    sys.argv = ["refine", "distill", *sys.argv[1:]]
    main()
