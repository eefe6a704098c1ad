"""Model definitions: MLP, CIFAR and ImageNet ResNets, VGG, ViT (dense nn.Linear/nn.Conv2d; sparsify swaps them)."""
from .registry import MODELS, build_model, model_options

__all__ = ["MODELS", "build_model", "model_options"]
