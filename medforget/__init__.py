"""medforget: remove patients from trained image + clinical-text fusion models, and prove it."""

import logging

__version__ = "0.1.0"

# torchao (imported by transformers when installed) registers an Enum with torch's pytree, and torch logs a
# deprecation notice for it at import time: noise in every command's output
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
