"""ANN baselines for the ImageNet and CIFAR recipes. (The ANN twins of the spiking models are
built by the same classes as the SNNs, with ``spiking=False``.)"""

from .mobilenet import MobileNetV1
from .resnet import CifarResNet, ConvClassifier, cifar_resnet18, cifar_resnet20, resnet50

__all__ = ["MobileNetV1", "CifarResNet", "ConvClassifier", "cifar_resnet18", "cifar_resnet20", "resnet50"]
