"""One module per meta-learning algorithm; each registers itself in `l2l_app.registry.ALGORITHMS`.

Importing this package imports every module in it, so adding an algorithm is adding a file.
"""
from ..registry import import_submodules

import_submodules(__name__)
