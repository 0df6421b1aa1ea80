"""The spiking side: neuron factory and backend selection over SpikingJelly, spiking models
(each with an ANN twin of the same topology)."""

from .backends import BACKENDS, BackendChoice, BackendUnavailableError, probe_cupy, resolve_backend, spikingjelly_version
from .neurons import NEURON_KINDS, NeuronConfig, make_neuron, set_backend, spiking_neurons
from .twin import TwinNetwork, Voting, stateless

__all__ = ["BACKENDS", "BackendChoice", "BackendUnavailableError", "probe_cupy", "resolve_backend",
           "spikingjelly_version", "NEURON_KINDS", "NeuronConfig", "make_neuron", "set_backend", "spiking_neurons",
           "stateless", "TwinNetwork", "Voting"]
