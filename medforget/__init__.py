"""medforget: remove patients from trained image + clinical-text fusion models, and prove it."""

__version__ = "0.1.0"
