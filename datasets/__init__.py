"""The repository's ``datasets/`` folder, as in every Dassl plugin; the code lives in ``vlprompt.datasets``.

Each module here stands for its namesake in ``vlprompt.datasets``: ``import datasets.<module>`` gives the very
module object of ``vlprompt.datasets.<module>`` (one identity per class, so nothing registers twice and
``isinstance`` agrees under either name).
"""

from vlprompt.datasets import *
