"""`refine.synth`, the old import path of `refine.synthesis.runner`: the very same module object (so its names,
and patches of them, are shared)."""

import sys

from refine.synthesis import runner

sys.modules[__name__] = runner
