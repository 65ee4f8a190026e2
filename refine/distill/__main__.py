"""`python -m refine.distill DATA --out DIR ...`: training without the CLI, for `accelerate launch -m` (see
`refine.distill.launch`).

accelerate launch --config_file examples/accelerate/fsdp.yaml -m refine.distill runs/synth --out runs/student
"""

from __future__ import annotations

import sys

from refine.distill.launch import main

if __name__ == "__main__":
    sys.exit(main())
