"""Compact dense models: a network's zero channels physically removed.

A channel-pruned network (``pruning.granularity: channel``) keeps its zero output channels as
zeros: the same dense tensors, the same time. Here a chain network of the model zoo (``encoder``
then ``body``: the MLP, the STDS and N-MNIST nets, their ANN twins) is rewritten with those
channels gone: the layer's output channels (conv) or output neurons (linear), their BatchNorm
entries, and the next layer's input channels (or, after a ``Flatten``, the input features those
channels spread to).

A channel is removed only when everything downstream of it is exactly zero, which the weights
alone do not guarantee: its pre-activation is its bias (0 without one), and BatchNorm turns that
into the constant ``(b - mean) / sqrt(var + eps) * gamma + beta``. The channel goes when that
constant cannot reach the next layer: a ReLU of a constant <= 0; a LIF or PLIF neuron that charges
towards its input (``decay_input``) from ``v = 0`` and never reaches a constant below its
threshold; any other spiking neuron for a constant <= 0; no activation, a constant of exactly 0. A
zero channel that fails this test is kept (it is reported, with its constant). The last weight
layer's outputs (the classes) are never removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import SnnStpError
from ..pruning.statistics import zero_output_channels
from ..snn.neurons import is_spiking_neuron
from .nir_graph import _flatten, _shapes


class NotCompactableError(SnnStpError, ValueError):
    """The model is not a chain network this compaction understands; the message says why."""


@dataclass
class Compaction:
    """What :func:`compact` did: per weight layer (its module name), the output channels kept (in
    order) and how many it had; the zero channels kept because their constant reaches the next
    layer (name, channel, constant)."""

    kept: dict[str, list[int]] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    kept_zero: list[tuple[str, int, float]] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return sum(self.channels[name] - len(kept) for name, kept in self.kept.items())

    @property
    def shrunk(self) -> dict[str, list[int]]:
        """The channels kept by each layer that loses some (what :func:`shrink` takes)."""
        return {name: kept for name, kept in self.kept.items() if len(kept) < self.channels[name]}


@dataclass
class _Block:
    """A weight layer and what follows it up to the next weight layer."""

    name: str
    layer: nn.Module
    norm: nn.Module | None = None
    norm_name: str | None = None
    activation: nn.Module | None = None
    spatial: int | None = None  # positions per channel where a Flatten joins it to a Linear
    next_name: str | None = None
    next_layer: nn.Module | None = None


def _blocks(model: nn.Module, sample_shape: tuple[int, ...]) -> list[_Block]:
    if not (isinstance(getattr(model, "encoder", None), nn.Module) and isinstance(getattr(model, "body", None), nn.Module)):
        raise NotCompactableError(f"{type(model).__name__} is not a chain network (encoder, then body): compaction "
                                  "supports spiking_mlp, stds_cifarnet, nmnist_net, dvsgesture_net, cifar10dvs_net "
                                  "and their ANN twins (a residual network would need its channels removed along "
                                  "every shortcut)")
    steps = _flatten(model)
    training = model.training
    model.eval()  # shapes traced through BatchNorm with its running statistics (one sample)
    try:
        shapes = _shapes(steps, sample_shape)
    finally:
        model.train(training)
    blocks: list[_Block] = []
    for index, step in enumerate(steps):
        module = step.module
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if blocks:
                blocks[-1].next_name, blocks[-1].next_layer = step.name, module
            blocks.append(_Block(step.name, module))
        elif not blocks:
            continue
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and blocks[-1].norm is None \
                and blocks[-1].activation is None:
            blocks[-1].norm, blocks[-1].norm_name = module, step.name
        elif is_spiking_neuron(module) or isinstance(module, nn.ReLU):
            blocks[-1].activation = module
        elif isinstance(module, nn.Flatten):
            blocks[-1].spatial = math.prod(shapes[index][1:])
        elif not isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.Dropout)) and \
                type(module).__name__ not in ("Dropout", "Voting"):
            raise NotCompactableError(f"{step.name}: {type(module).__name__} between two weight layers is not "
                                      "known to act on each channel alone; cannot remove channels across it")
    return blocks


def _reaches_next_layer(block: _Block, constant: float) -> bool:
    """Whether a channel whose pre-activation is ``constant`` (after BatchNorm) can make anything
    but zeros reach the next layer (see the module doc)."""
    activation = block.activation
    if activation is None:
        return constant != 0
    if isinstance(activation, nn.ReLU):
        return constant > 0
    from spikingjelly.activation_based import neuron

    charges_towards_input = isinstance(activation, (neuron.LIFNode, neuron.ParametricLIFNode)) and \
        getattr(activation, "decay_input", False) and float(getattr(activation, "v_reset", 0.0) or 0.0) == 0.0
    if charges_towards_input:
        return constant >= float(activation.v_threshold)
    return constant > 0


@torch.no_grad()
def _constants(block: _Block) -> torch.Tensor:
    """Each output channel's pre-activation when its weights are all zero (float64)."""
    layer = block.layer
    out = layer.weight.shape[0]
    value = layer.bias.double() if layer.bias is not None else torch.zeros(out, dtype=torch.float64)
    norm = block.norm
    if norm is not None:
        mean = norm.running_mean.double() if norm.running_mean is not None else torch.zeros(out, dtype=torch.float64)
        var = norm.running_var.double() if norm.running_var is not None else torch.ones(out, dtype=torch.float64)
        value = (value - mean) / torch.sqrt(var + norm.eps)
        if norm.affine:
            value = value * norm.weight.double() + norm.bias.double()
    return value


@torch.no_grad()
def plan_compaction(model: nn.Module, sample_shape: tuple[int, ...]) -> Compaction:
    """Which output channels of each weight layer of ``model`` (baked or sparsified; in eval mode
    its BatchNorm uses running statistics) can go, without changing the model."""
    blocks = _blocks(model, sample_shape)
    plan = Compaction()
    for block in blocks[:-1]:  # the last layer's outputs are the classes
        weight = block.layer.weight
        zero = zero_output_channels(weight)
        constants = _constants(block)
        keep = []
        for channel in range(weight.shape[0]):
            if not zero[channel]:
                keep.append(channel)
            elif _reaches_next_layer(block, float(constants[channel])):
                keep.append(channel)
                plan.kept_zero.append((block.name, channel, float(constants[channel])))
        if not keep:
            keep = [0]  # a layer of no channel at all: keep one zero channel (its output is constant anyway)
        plan.kept[block.name] = keep
        plan.channels[block.name] = weight.shape[0]
    return plan


@torch.no_grad()
def shrink(model: nn.Module, kept: dict[str, list[int]], sample_shape: tuple[int, ...]) -> nn.Module:
    """Keep only the ``kept`` output channels of each named weight layer of ``model`` (in place;
    returns it): the layer's rows, its BatchNorm entries, the next layer's inputs. A baked model
    (plain weights); the same ``kept`` rebuilds a compact model from its config."""
    blocks = {block.name: block for block in _blocks(model, sample_shape)}
    unknown = sorted(set(kept) - set(blocks))
    if unknown:
        raise NotCompactableError(f"no weight layer {unknown} in {type(model).__name__}; its weight layers: "
                                  f"{', '.join(blocks)}")
    for name, channels in kept.items():
        block, index = blocks[name], torch.tensor(channels, dtype=torch.long)
        layer = block.layer
        layer.weight = nn.Parameter(layer.weight[index].clone())
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias[index].clone())
        if isinstance(layer, nn.Conv2d):
            layer.out_channels = len(channels)
        else:
            layer.out_features = len(channels)
        if block.norm is not None:
            _shrink_norm(block.norm, index)
        following = block.next_layer
        if following is None:
            raise NotCompactableError(f"{name} is the last weight layer: its outputs (the classes) stay")
        columns = index if block.spatial is None else \
            (index[:, None] * block.spatial + torch.arange(block.spatial)[None, :]).flatten()
        following.weight = nn.Parameter(following.weight[:, columns].clone())
        if isinstance(following, nn.Conv2d):
            following.in_channels = len(channels)
        else:
            following.in_features = len(columns)
    return model


def _shrink_norm(norm: nn.Module, index: torch.Tensor) -> None:
    if norm.affine:
        norm.weight = nn.Parameter(norm.weight[index].clone())
        norm.bias = nn.Parameter(norm.bias[index].clone())
    for buffer in ("running_mean", "running_var"):
        if getattr(norm, buffer, None) is not None:
            setattr(norm, buffer, getattr(norm, buffer)[index].clone())
    norm.num_features = len(index)


def compact(model: nn.Module, sample_shape: tuple[int, ...]) -> Compaction:
    """Remove every zero output channel of ``model`` (a baked chain network; in place) whose
    output cannot reach the next layer (see the module doc); returns what was kept."""
    plan = plan_compaction(model, sample_shape)
    shrink(model, plan.shrunk, sample_shape)
    return plan


def save_compact(model: nn.Module, config, plan: Compaction, sample: tuple[int, ...], path, metadata: dict) -> dict:
    """Write a compacted, baked ``model`` with what rebuilds it: its run's config, the channels each
    layer kept, and ``metadata`` (the checkpoint's training progress). Read back by
    :func:`load_compact` with ``torch.load(weights_only=True)``: tensors and plain values only."""
    from ..files import atomic_path
    from ..train.checkpoint import COMPACT_FORMAT

    payload = {"format": COMPACT_FORMAT, "config": config.to_dict(), "sample_shape": list(sample),
               "kept": {name: list(kept) for name, kept in plan.shrunk.items()},
               "channels": dict(plan.channels), "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "metadata": dict(metadata)}
    with atomic_path(Path(path)) as temporary:
        torch.save(payload, temporary)
    return payload


def load_compact(path, device: torch.device | str = "cpu") -> tuple[nn.Module, object, dict]:
    """A compact model file: (the model, baked and shrunk, in eval mode; its run's config; the
    file's contents)."""
    from ..errors import CheckpointError
    from ..pruning import bake
    from ..train.builders import make_model
    from ..train.checkpoint import COMPACT_FORMAT, load_file
    from ..data import dataset_spec
    from ..train.config import from_dict

    payload = load_file(path)
    if not isinstance(payload, dict) or payload.get("format") != COMPACT_FORMAT:
        raise CheckpointError(f"{path} is not a compact model (snn-stp export --format compact)")
    config = from_dict(payload["config"])
    model = make_model(config, dataset_spec(config.data.name).num_classes, torch.device(device),
                       load_initial_weights=False)
    bake(model)
    shrink(model, {name: list(kept) for name, kept in payload["kept"].items()}, tuple(payload["sample_shape"]))
    model.load_state_dict(payload["model"])
    return model.eval(), config, payload


def evaluate_compact(path) -> dict:
    """Accuracy, sparsity and operation counts of a compact model file on its run's test split,
    measured with the training loop's own code (as ``snn-stp eval`` of a checkpoint)."""
    from ..train.engine import evaluate_on_test_split

    model, config, payload = load_compact(path)
    test, analysis = evaluate_on_test_split(model, config)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    zeros, numel = sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)
    training = payload["metadata"].get("training", {})
    return {"path": str(path), "epoch": training.get("epoch"), "checkpoint": training.get("checkpoint"),
            "test_loss": test["loss"], "test_acc": test["acc"], "test_top5": test["top5"],
            "weight_sparsity": zeros / numel, "weights": numel, "parameters": sum(p.numel() for p in model.parameters()),
            "removed_channels": sum(payload["channels"][n] - len(k) for n, k in payload["kept"].items()),
            **analysis}
