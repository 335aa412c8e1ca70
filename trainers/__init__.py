"""The repository's ``trainers/`` folder, as in every Dassl plugin; the code lives in ``vlprompt.trainers``.

Each module here stands for its namesake in ``vlprompt.trainers``: ``import trainers.<module>`` gives the very
module object of ``vlprompt.trainers.<module>`` (one identity per class, so nothing registers twice and
``isinstance`` agrees under either name).
"""

from vlprompt.trainers import *
