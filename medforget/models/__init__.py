"""Plain ``nn.Module``s: image and text encoders and the fusion network."""

from medforget.models.fusion import FusionNet, build_fusion_net
from medforget.models.image import create_image_encoder
from medforget.models.text import TextEncoder, tokenize_batch, train_wordpiece_tokenizer

__all__ = [
    "FusionNet",
    "TextEncoder",
    "build_fusion_net",
    "create_image_encoder",
    "tokenize_batch",
    "train_wordpiece_tokenizer",
]
