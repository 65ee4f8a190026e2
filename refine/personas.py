"""`refine.personas`, the old import path of `refine.synthesis.persona_loading`: the very same module object."""

import sys

from refine.synthesis import persona_loading

sys.modules[__name__] = persona_loading
