"""The neuromorphic chips ``snn-stp deploy-report`` reports on: what each one's tool chain takes of a
NIR graph, its published per-core limits and energy per synaptic operation, each with its source.

Every number here is a published figure with a citation string (title and year); one that could
not be checked against its source says ``unconfirmed`` in its citation, and an assumption made to
turn a figure into a count (bits per stored synapse) says ``assumption``. Units are in each
:class:`Figure`'s ``unit``. Nothing here imports torch: the command checks ``--target`` with it
before it reads a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import UsageError


@dataclass(frozen=True)
class Figure:
    """One number of a chip with its unit and where it comes from (``confirmed`` False: the
    citation says what could not be checked)."""

    value: float
    unit: str
    source: str
    confirmed: bool = True

    def as_dict(self) -> dict:
        return {"value": self.value, "unit": self.unit, "source": self.source, "confirmed": self.confirmed}


@dataclass(frozen=True)
class Toolchain:
    """The NIR node types a hardware tool chain's NIR import takes, and where that is documented."""

    name: str
    node_types: frozenset[str]
    source: str


#: NIR node types each hardware tool chain takes, one entry per ``--target`` (the counterpart of
#: :data:`snn_stp.export.nir_graph.READER_NODE_TYPES`, which lists the software readers). The
#: hardware team's reading of each tool chain's documented NIR support; a node type of the graph
#: that is not in a set is reported as one the target cannot take.
TOOLCHAIN_NODE_TYPES: dict[str, Toolchain] = {
    "loihi2": Toolchain(
        "Lava (lava-dl / lava-nc)",
        frozenset({"Input", "Output", "Conv2d", "Flatten", "Affine", "Linear", "CubaLIF", "IF", "LIF", "SumPool2d"}),
        "the hardware team's reading of Lava's documented NIR support for Loihi 2 (not re-checked here)"),
    "spinnaker2": Toolchain(
        "py-spinnaker2",
        frozenset({"Input", "Output", "Conv2d", "Flatten", "Affine", "Linear", "CubaLIF", "IF", "LIF", "SumPool2d"}),
        "the hardware team's reading of py-spinnaker2's documented NIR support for SpiNNaker2 (not re-checked "
        "here)"),
    "speck": Toolchain(
        "Sinabs (sinabs-dynapcnn)",
        frozenset({"Input", "Output", "Conv2d", "Flatten", "Affine", "Linear", "CubaLIF", "IF", "LIF", "LI",
                   "SumPool2d"}),
        "the hardware team's reading of Sinabs' documented NIR support for Speck (not re-checked here)"),
    "xylo": Toolchain(
        "Rockpool",
        frozenset({"Input", "Output", "Affine", "Linear", "CubaLIF", "LI", "LIF"}),
        "the hardware team's reading of Rockpool's documented NIR support for Xylo (not re-checked here)"),
}

_LOIHI2_BRIEF = ("Intel Labs, 'Taking Neuromorphic Computing to the Next Level with Loihi 2', technology brief, "
                 "2021")
_SPINNAKER2_DATASHEET = "'SpiNNaker2 - a chip multiprocessor for neural network simulation', datasheet v0.03, 2021"
_SINABS_SPECK = ("Sinabs documentation, 'Speck overview: Memory Constraints and Network Sizing', and "
                 "sinabs.backend.dynapcnn DynapcnnConfigBuilder.get_constraints, 2024")
_ROCKPOOL_XYLO = ("Rockpool documentation, 'Overview of the Xylo family' and 'Quick-start with Xylo SNN core' "
                  "(Xylo Audio 2, SYNS61201), 2024")
_TANG_2023 = ("as tabulated in Tang et al., 'SENECA: building a fully digital neuromorphic processor, design "
              "trade-offs and challenges', Front. Neurosci. 17, 2023, Table 3")

#: Energy per synaptic operation (pJ) of the chips the report prices a SOP count with: the
#: targets' own where one is published, and reference chips.
ENERGY_PER_SOP: dict[str, Figure] = {
    "Loihi": Figure(23.6, "pJ/SOP", "Davies et al., 'Loihi: A Neuromorphic Manycore Processor with On-Chip "
                                    f"Learning', IEEE Micro, 2018 (energy per synaptic spike op; {_TANG_2023})"),
    "SpiNNaker2": Figure(10.0, "pJ/SOP", "Höppner et al., 'The SpiNNaker 2 Processing Element Architecture for "
                                         "Hybrid Digital Neuromorphic Computing', arXiv:2103.08392, 2021 "
                                         f"({_TANG_2023})"),
    "TrueNorth": Figure(2.5, "pJ/SOP", "Akopyan et al., 'TrueNorth: Design and Tool Flow of a 65 mW 1 Million "
                                       f"Neuron Programmable Neurosynaptic Chip', IEEE TCAD, 2015 ({_TANG_2023}; "
                                       "Merolla et al., Science 2014, not checked)"),
    "Tianjic": Figure(1.54, "pJ/SOP", "Deng et al., 'Tianjic: A Unified and Scalable Chip Bridging Spike-Based and "
                                      f"Continuous Neural Computation', IEEE JSSC, 2020 ({_TANG_2023}; Pei et al., "
                                      "Nature 2019, not checked)"),
}


@dataclass(frozen=True)
class Target:
    """A chip the report maps a network onto.

    ``storage`` is how the chip stores synapses, which decides whether pruning saves memory:
    ``sparse`` (only non-zero synapses are stored: pruned weights save memory), ``channels``
    (dense kernels per channel: only a whole zero channel, removed by ``snn-stp export --format
    compact``, saves memory) or ``dense`` (dense weight matrices: likewise only removed neurons).
    ``figures`` holds the published numbers the mapping uses (keys per target, see
    :mod:`.report`). ``energy`` names an entry of :data:`ENERGY_PER_SOP`, or is None with
    ``energy_note`` saying why.
    """

    name: str
    chip: str
    storage: str
    figures: dict[str, Figure]
    mapping_rule: str
    memory_rule: str
    energy: str | None
    energy_note: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def toolchain(self) -> Toolchain:
        return TOOLCHAIN_NODE_TYPES[self.name]


#: Speck's nine cores (sinabs DynapcnnConfigBuilder.get_constraints): kernel memory and neuron
#: memory of each, in entries (Ki = 1024).
SPECK_KERNEL_MEMORY = (16, 16, 16, 32, 32, 64, 64, 16, 16)
SPECK_NEURON_MEMORY = (64, 64, 64, 32, 32, 16, 16, 16, 16)

TARGETS: dict[str, Target] = {
    "loihi2": Target(
        "loihi2", "Intel Loihi 2", "sparse",
        {
            "cores_per_chip": Figure(128, "neuromorphic cores per chip", _LOIHI2_BRIEF),
            "neurons_per_core": Figure(8192, "neurons per core",
                                       f"{_LOIHI2_BRIEF}; unconfirmed: the brief's table could not be read here, "
                                       "secondary summaries of it give 'up to ~8,000 per core' and 1 million "
                                       "neurons per chip", confirmed=False),
            "synapse_memory_per_core": Figure(131072, "bytes (128 KiB) per core",
                                              f"{_LOIHI2_BRIEF}; unconfirmed: secondary coverage of the brief gives "
                                              "128 KB of local SRAM per core, flexibly partitioned between "
                                              "synapses, neuron state and routing", confirmed=False),
            "bits_per_synapse": Figure(8, "bits per stored synapse",
                                       "assumption: one 8-bit weight per stored synapse, index and format "
                                       "overhead not counted (so the memory-bound core count is a lower bound)",
                                       confirmed=False),
            "synapses_per_chip": Figure(120_000_000, "synapses per chip (with synapse compression)", _LOIHI2_BRIEF),
        },
        "each layer (a weight layer and the neurons it feeds) on whole cores: "
        "cores = max(ceil(neurons / neurons_per_core), ceil(stored synapses x bits_per_synapse / 8 / "
        "synapse_memory_per_core)); chips = ceil(total cores / cores_per_chip)",
        "sparse: only non-zero synapses are stored, so every pruned weight saves memory; a convolution is "
        "counted unrolled (non-zero weights x output positions), a tool chain that shares kernel weights "
        "stores less",
        "Loihi", "no per-SOP energy is published for Loihi 2; Loihi (first generation, IEEE Micro 2018) is used",
    ),
    "spinnaker2": Target(
        "spinnaker2", "SpiNNaker2", "sparse",
        {
            "cores_per_chip": Figure(152, "processing elements (ARM Cortex-M4F) per chip",
                                     f"{_SPINNAKER2_DATASHEET}; Gonzalez et al., 'SpiNNaker2: A Large-Scale "
                                     "Neuromorphic System for Event-Based and Asynchronous Machine Learning', "
                                     "arXiv:2401.04491, 2024; Mayr, Höppner, Furber, 'SpiNNaker 2: A 10 Million Core "
                                     "Processor System for Brain Simulation and Machine Learning', arXiv, "
                                     "2019"),
            "synapse_memory_per_core": Figure(131072, "bytes (128 KiB) of local SRAM per processing element",
                                              f"{_SPINNAKER2_DATASHEET} ('128 Kbytes of local code and data memory')"),
            "bits_per_synapse": Figure(8, "bits per stored synapse",
                                       "assumption: one 8-bit weight per stored synapse; the SRAM also holds code, "
                                       "neuron state and synapse indices, so the core count is a lower bound",
                                       confirmed=False),
        },
        "each layer on whole processing elements: cores = ceil(stored synapses x bits_per_synapse / 8 / "
        "synapse_memory_per_core) (neurons per processing element are a software setting, not a published chip "
        "limit, so they do not enter); chips = ceil(total cores / cores_per_chip)",
        "sparse: only non-zero synapses are stored, so every pruned weight saves memory; a convolution is "
        "counted unrolled (non-zero weights x output positions)",
        "SpiNNaker2", "",
    ),
    "speck": Target(
        "speck", "SynSense Speck (DYNAP-CNN)", "channels",
        {
            "cores_per_chip": Figure(9, "convolutional cores (layers) per chip", _SINABS_SPECK),
            "kernel_memory_per_core": Figure(64 * 1024, "kernel-memory entries in the largest core; by core "
                                             f"{', '.join(f'{k}Ki' for k in SPECK_KERNEL_MEMORY)}", _SINABS_SPECK),
            "neuron_memory_per_core": Figure(64 * 1024, "neuron-memory entries in the largest core; by core "
                                             f"{', '.join(f'{n}Ki' for n in SPECK_NEURON_MEMORY)}", _SINABS_SPECK),
            "bits_per_weight": Figure(8, "bits per kernel-memory entry (weight)", _SINABS_SPECK),
            "bits_per_neuron": Figure(16, "bits per neuron-memory entry (state)", _SINABS_SPECK),
        },
        "each layer (convolution, its neurons, its pooling) on one core whose memory holds it: kernel memory "
        "K = c x 2^(ceil(log2(kx*ky)) + ceil(log2(f))) and neuron memory N = f x 2^(ceil(log2(fx)) + "
        "ceil(log2(fy))) (c input and f output channels, kx x ky kernel, fx x fy output map; a Linear layer is "
        "a convolution whose kernel covers its whole input map, as Sinabs maps it), layers matched to distinct "
        "cores with enough of both",
        "per channel: kernels are stored densely, so zero weights inside a kept channel save nothing; a zero "
        "output channel removed by snn-stp export --format compact shrinks f here and c of the next layer",
        None, "none published: no energy per synaptic operation is given in the Sinabs documentation or the "
              "Speck paper (Yao et al., Nat. Commun., 2024) as far as checked",
    ),
    "xylo": Target(
        "xylo", "SynSense Xylo Audio 2 (SYNS61201)", "dense",
        {
            "input_channels": Figure(16, "input channels", _ROCKPOOL_XYLO),
            "hidden_neurons": Figure(1000, "hidden neurons (one pool for all hidden layers)", _ROCKPOOL_XYLO),
            "output_neurons": Figure(8, "output neurons", _ROCKPOOL_XYLO),
            "max_fanout": Figure(64, "non-zero outgoing weights per hidden neuron (max.)", _ROCKPOOL_XYLO),
            "bits_per_weight": Figure(8, "bits per weight", _ROCKPOOL_XYLO),
        },
        "one SNN core: the first layer reads at most input_channels inputs, every spiking layer but the last "
        "shares the hidden_neurons pool, the last layer is the readout (at most output_neurons), and each hidden "
        "neuron has at most max_fanout non-zero outgoing weights to other hidden neurons; a convolution cannot "
        "be mapped",
        "dense matrices: input, recurrent and readout weights are dense 8-bit matrices, so pruned weights save "
        "no memory (they lower the fan-out, which the chip limits); removed zero neurons shrink the matrices",
        None, "none published: Rockpool's documentation and Bos & Muir (arXiv:2406.15112, 2024) give energy per "
              "inference of a benchmark, not per synaptic operation",
    ),
}

ALL = "all"


def parse_targets(text: str) -> list[str]:
    """``--target``: one target, several separated by commas, or ``all`` (every target, in the
    order of :data:`TARGETS`). An unknown name is a :class:`UsageError` listing the valid ones."""
    names = [name.strip().lower() for name in str(text).split(",") if name.strip()]
    if ALL in names:
        return list(TARGETS)
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        raise UsageError(f"unknown target {unknown[0] if unknown else text!r}; valid: {', '.join(TARGETS)}, {ALL} "
                         "(several separated by commas)")
    return list(dict.fromkeys(names))


def targets_table() -> str:
    """The Markdown table of the targets and their figures (docs/deployment.md holds it)."""
    lines = ["| target | chip | NIR tool chain | figure | value | source |", "|---|---|---|---|---|---|"]
    for target in TARGETS.values():
        first = True
        for key, figure in target.figures.items():
            value = f"{int(figure.value):,}" if figure.value == int(figure.value) else f"{figure.value:g}"
            value = f"{value} {figure.unit}"
            head = f"| `{target.name}` | {target.chip} | {target.toolchain.name} " if first else "| | | "
            lines.append(f"{head}| {key} | {value} | {figure.source} |")
            first = False
        energy = (f"{ENERGY_PER_SOP[target.energy].value:g} pJ/SOP ({target.energy})" if target.energy
                  else "none")
        source = ENERGY_PER_SOP[target.energy].source if target.energy else target.energy_note
        if target.energy and target.energy_note:
            source = f"{target.energy_note}: {source}"
        lines.append(f"| | | | energy per SOP | {energy} | {source} |")
    return "\n".join(lines) + "\n"
