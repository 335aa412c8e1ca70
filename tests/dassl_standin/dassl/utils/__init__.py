from vlprompt.engine.checkpoint import load_checkpoint, save_checkpoint  # noqa: F401
from vlprompt.engine.logging import setup_logger  # noqa: F401
from vlprompt.engine.seeding import set_random_seed  # noqa: F401
