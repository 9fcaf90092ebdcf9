"""Per-step FLOPs, HBM traffic and collective traffic read from a compiled program's HLO text.

XLA's `cost_analysis()` counts the body of a `while` loop once, whatever its trip count, so a
scanned layer stack or a micro-batch loop is undercounted by the number of layers or
micro-batches. This module walks the optimized HLO itself: every computation is weighted by how
often it runs per step (a loop body by its trip count, read from the loop condition's
`compare(counter, constant(N)), direction=LT`, as `lax.scan` / `fori_loop` lower), then

- FLOPs: 2 x multiply-adds of every `dot` and `convolution` (TPU lowers dots to
  convolutions), a convolution counting only window taps that land on real input (not on
  padding or the holes of a strided convolution's gradient) - the matrix-unit work, remat
  recomputation included;
- bytes accessed: operand + result bytes of every instruction outside fusions (a fusion's
  internals stay on chip), the quantity a roofline divides by HBM bandwidth: arrays in HBM
  only, not those the TPU compiler placed in another memory space (`S(1)` in the layout is
  VMEM, on chip: a prefetched embedding table counted again at each use had doubled a small
  model's total against XLA's own count); as in XLA's
  cost analysis, an operand only read through `dynamic-slice` (a scanned layer's weights)
  counts the slice, and an in-place `dynamic-update-slice` counts the update (one fusion
  level deep: a slice inside a nested fusion still counts its whole operand, so the total is
  an upper bound);
- collectives by kind: the bytes each chip sends or receives, taken as the result size for
  all-gather and the operand size for reduce-scatter, all-reduce, all-to-all and
  collective-permute (a TPU reduce-scatter is an all-reduce inside an `all-reduce-scatter`
  fusion, and counts as a reduce-scatter). Every collective instruction counts, times its computation's runs; the
  copies of one asynchronous collective in its start / update / done fusions count once.

All numbers are per device (an SPMD program is the program of one device).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
               "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "token": 0}

# Instructions that move no data of their own.
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "call",
         "conditional", "after-all", "partition-id", "replica-id", "iota", "opt-barrier",
         "copy-done", "all-gather-done", "all-reduce-done", "collective-permute-done",
         "async-done", "async-update", "send-done", "recv-done"}

# An array with its layout: `f32[8,128]{1,0:T(8,128)S(1)}`, memory space 1 (none: 0, HBM).
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_OTHER_MEMORY = re.compile(r"S\([1-9]\d*\)")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s")
_CALLEES = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation|"
                      r"branch_computations)=(\{[^}]*\}|%[\w.\-]+)")


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    args: str = ""  # the raw text between the parentheses (a parameter's number)


@dataclasses.dataclass
class HloStats:
    """Per-device totals of one execution of the module."""

    flops: float
    bytes_accessed: float
    collective_bytes: dict[str, float]
    collective_counts: dict[str, int]


def shape_bytes(shape: str) -> float:
    """Bytes of an HLO shape string (arrays and tuples of arrays; layouts ignored)."""
    return sum(DTYPE_BYTES.get(dtype, 0) * math.prod(_dims(dims))
               for dtype, dims, _ in _ARRAY.findall(shape))


def hbm_bytes(shape: str) -> float:
    """`shape_bytes` of the arrays of `shape` in memory space 0 (HBM; a layout without `S(n)`)."""
    return sum(shape_bytes(array.group(0)) for array in _ARRAY.finditer(shape)
               if not _OTHER_MEMORY.search(array.group(3) or ""))


def _dims(dims: str) -> list[int]:
    return [int(d) for d in dims.split(",") if d]


def _array_dims(shape: str) -> list[int]:
    match = _ARRAY.search(shape)
    return _dims(match.group(2)) if match else []


def _closing(text: str, start: int) -> int:
    """Index of the bracket closing the one at `start`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced HLO text: {text[start:start + 80]!r}")


def _parse_instruction(line: str) -> Instruction | None:
    line = line.strip()
    if line.startswith("ROOT "):
        line = line[5:]
    if " = " not in line or not line.startswith("%"):
        return None
    name, rest = line.split(" = ", 1)
    if rest.startswith("("):
        end = _closing(rest, 0)
        shape, rest = rest[:end + 1], rest[end + 1:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    paren = rest.find("(")
    if paren < 0:
        return None
    end = _closing(rest, paren)
    operands = re.findall(r"%([\w.\-]+)", rest[paren:end])
    return Instruction(name.lstrip("%"), shape, rest[:paren], operands, rest[end + 1:],
                       rest[paren + 1:end])


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """Computations (name -> instructions) of an HLO module's text, and the entry's name."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if not line.startswith((" ", "\t")) and line.rstrip().endswith("{"):
            match = _HEADER.match(line)
            if match and not line.startswith("HloModule"):
                current = match.group(1)
                computations[current] = []
                entry = current if line.startswith("ENTRY") else entry
            continue
        if line.startswith("}"):
            current = None
        elif current is not None:
            inst = _parse_instruction(line)
            if inst is not None:
                computations[current].append(inst)
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


def _constant_values(text: str) -> dict[str, int]:
    """Scalar integer constants by instruction name (`%c = s32[] constant(12)`)."""
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r"%([\w.\-]+) = [su]\d+\[\]\S* constant\((-?\d+)\)", text)}


def _multiplicities(computations: dict[str, list[Instruction]], entry: str,
                    constants: dict[str, int]) -> tuple[dict[str, float], set[str]]:
    """How often each computation runs per execution, and which are fusion bodies."""
    weight: dict[str, float] = defaultdict(float)
    fused: set[str] = set()

    def visit(name: str, times: float, inside_fusion: bool) -> None:
        weight[name] += times
        if inside_fusion:
            fused.add(name)
        for inst in computations.get(name, []):
            callees = {kind: re.findall(r"%([\w.\-]+)", names)
                       for kind, names in _CALLEES.findall(inst.attrs)}
            trips = 1
            if inst.opcode == "while" and "condition" in callees:
                trips = _loop_trips(computations.get(callees["condition"][0], []), constants)
            for kind, names in callees.items():
                if kind == "to_apply":
                    continue  # scalar reducers of reduce / all-reduce
                for callee in names:
                    visit(callee, times * (trips if kind == "body" else 1),
                          inside_fusion or inst.opcode == "fusion")

    visit(entry, 1.0, False)
    return weight, fused


def _loop_trips(condition: list[Instruction], constants: dict[str, int]) -> int:
    for inst in condition:
        if inst.opcode == "compare" and "direction=LT" in inst.attrs:
            bounds = [constants[o] for o in inst.operands if o in constants]
            if bounds:
                return max(1, bounds[-1])
    return 1


def _window(attrs: str, rank: int) -> dict[str, list]:
    """A convolution's `window={size=.. stride=.. pad=.. lhs_dilate=.. rhs_dilate=..}`."""
    match = re.search(r"window=\{([^}]*)\}", attrs)
    fields = dict(f.split("=", 1) for f in match.group(1).split()) if match else {}
    ints = lambda key, default: [int(v) for v in fields[key].split("x")] if key in fields \
        else [default] * rank  # noqa: E731
    pads = [[int(v) for v in p.split("_")] for p in fields["pad"].split("x")] \
        if "pad" in fields else [[0, 0]] * rank
    return {"size": ints("size", 1), "stride": ints("stride", 1), "pad": pads,
            "lhs_dilate": ints("lhs_dilate", 1), "rhs_dilate": ints("rhs_dilate", 1)}


def _valid_taps(size: int, out: int, window: int, stride: int, pad_lo: int, lhs_dilate: int,
                rhs_dilate: int) -> int:
    """(output position, kernel tap) pairs of one spatial dimension that land on a real input
    element, not on padding or on the holes of a dilated (transposed-convolution) input.

    Counted in closed form per output position: tap k of output o reads input position
    p = o*stride + k*rhs_dilate - pad_lo, real when 0 <= p <= (size-1)*lhs_dilate and
    lhs_dilate divides p. Counting pair by pair took hours on a weight gradient XLA writes as
    a convolution whose window is the batch (32,768 x 32,768 pairs: `clip-jax plan` of a
    chunked loss at batch 65,536 never ended)."""
    last = (size - 1) * lhs_dilate
    base = np.arange(out, dtype=np.int64) * stride - pad_lo  # p at k = 0, per o
    lo = np.maximum(0, -(base // rhs_dilate))  # first k with p >= 0: ceil(-base / rhs_dilate)
    hi = np.minimum(window - 1, (last - base) // rhs_dilate)  # last k with p <= last
    # p % lhs_dilate == 0 holds for k in one residue class modulo `period`, or for none.
    common = math.gcd(rhs_dilate, lhs_dilate)
    period = lhs_dilate // common
    solvable = base % common == 0
    first_k = (-(base // common) * pow(rhs_dilate // common, -1, period)) % period
    first = lo + (first_k - lo) % period
    counts = np.where(solvable & (first <= hi), (hi - first) // period + 1, 0)
    return int(counts.sum())


def _matmul_flops(inst: Instruction, shapes: dict[str, str]) -> float:
    """2 x multiply-adds of a dot, or of a convolution's valid window taps (as XLA counts)."""
    out = _array_dims(inst.shape)
    if inst.opcode == "dot":
        lhs = _array_dims(shapes.get(inst.operands[0], ""))
        match = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inst.attrs)
        contracted = math.prod(lhs[int(d)] for d in _dims(match.group(1))) if match else 1
        return 2.0 * math.prod(out) * contracted
    lhs = _array_dims(shapes.get(inst.operands[0], ""))
    rhs = _array_dims(shapes.get(inst.operands[1], ""))
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", inst.attrs)
    if not lhs or not rhs or not labels:
        return 0.0
    lhs_l, rhs_l, out_l = labels.groups()
    spatial = sorted(c for c in rhs_l if c.isdigit())
    win = _window(inst.attrs, len(spatial))
    taps = math.prod(
        _valid_taps(lhs[lhs_l.index(d)], out[out_l.index(d)], win["size"][n], win["stride"][n],
                    win["pad"][n][0], win["lhs_dilate"][n], win["rhs_dilate"][n])
        for n, d in enumerate(spatial))
    out_spatial = math.prod(out[out_l.index(d)] for d in spatial)
    return 2.0 * math.prod(out) / out_spatial * taps * rhs[rhs_l.index("i")]


_SLICING = ("dynamic-slice", "gather")


def _sliced_reads(fused: list[Instruction]) -> dict[int, float]:
    """Parameter number -> bytes read, for the fused parameters only read through slices."""
    params = {i.name: int(i.args) for i in fused if i.opcode == "parameter" and i.args.isdigit()}
    reads: dict[int, float] = {}
    for name, number in params.items():
        users = [i for i in fused if name in i.operands]
        if users and all(u.opcode in _SLICING and u.operands[0] == name for u in users):
            reads[number] = sum(hbm_bytes(u.shape) for u in users)
        elif users and all(u.opcode == "dynamic-update-slice" and u.operands[0] == name
                           for u in users):
            reads[number] = 0.0  # updated in place
    return reads


def _instruction_bytes(inst: Instruction, shapes: dict[str, str],
                       computations: dict[str, list[Instruction]]) -> float:
    operand_bytes = [hbm_bytes(shapes.get(o, "")) for o in inst.operands]
    if inst.opcode in _SLICING:
        return 2 * hbm_bytes(inst.shape)
    if inst.opcode == "dynamic-update-slice":
        return 2 * operand_bytes[1]
    if inst.opcode == "copy-start":  # (destination, source, context): the source is read once
        destination = _ARRAY.search(inst.shape)
        return sum(operand_bytes) + (hbm_bytes(destination.group(0)) if destination else 0.0)
    out = hbm_bytes(inst.shape)
    if inst.opcode == "fusion":
        callee = re.search(r"calls=%([\w.\-]+)", inst.attrs)
        fused = computations.get(callee.group(1), []) if callee else []
        for number, read in _sliced_reads(fused).items():
            if number < len(operand_bytes):  # an operand not in HBM stays 0
                operand_bytes[number] = min(operand_bytes[number], read)
        fused_shapes = {i.name: i.shape for i in fused}
        updates = [i for i in fused if i.opcode == "dynamic-update-slice"]
        if updates and fused and fused[-1].opcode in ("dynamic-update-slice", "tuple"):
            # In-place updates write their update, not the whole buffer.
            out -= sum(hbm_bytes(u.shape) - hbm_bytes(fused_shapes.get(u.operands[1], ""))
                       for u in updates)
    return out + sum(operand_bytes)


# The TPU compiler writes a reduce-scatter as a fusion of this name: an all-reduce whose
# result each chip slices to its shard, run as one reduce-scatter.
_REDUCE_SCATTER_FUSION = "all-reduce-scatter"


def _collective_key(computation: str, inst: Instruction, in_fusion: bool) -> tuple[str, ...]:
    """What makes a collective one transfer. Outside fusions every instruction is its own
    (the TPU compiler reuses `channel_id`s: in a CLIP step every collective had channel 1).
    Inside fusion bodies, the copies an asynchronous collective leaves in its start / update /
    done fusions are one: same kind, channel, shape and device groups."""
    if not in_fusion:
        return (computation, inst.name)
    groups = re.search(r"(?:replica_groups|source_target_pairs)=(\{[^=]*\})", inst.attrs)
    channel = re.search(r"channel_id=(\d+)", inst.attrs)
    return ("fused", inst.opcode.removesuffix("-start"), channel.group(1) if channel else "",
            inst.shape, groups.group(1) if groups else "")


def analyze(text: str) -> HloStats:
    """FLOPs, bytes accessed and collectives of one execution of a compiled module's text."""
    computations, entry = parse_module(text)
    weight, fused = _multiplicities(computations, entry, _constant_values(text))
    flops = bytes_accessed = 0.0
    channels: dict[tuple[str, ...], tuple[str, float, float]] = {}  # -> (kind, times, bytes)
    for name, instructions in computations.items():
        times = weight.get(name, 0.0)
        if not times:
            continue
        shapes = {i.name: i.shape for i in instructions}
        for inst in instructions:
            if inst.opcode in ("dot", "convolution"):
                flops += times * _matmul_flops(inst, shapes)
            kind = inst.opcode.removesuffix("-start")
            if kind == "all-reduce" and name.startswith(_REDUCE_SCATTER_FUSION):
                kind = "reduce-scatter"
            if kind in COLLECTIVES:
                size = (shape_bytes(inst.shape) if kind == "all-gather" else
                        sum(shape_bytes(shapes.get(o, "")) for o in inst.operands))
                if kind == "all-gather" and inst.opcode.endswith("-start"):
                    size = shape_bytes(inst.shape) - sum(shape_bytes(shapes.get(o, ""))
                                                         for o in inst.operands)
                key = _collective_key(name, inst, name in fused)
                seen = channels.get(key, (kind, 0.0, 0.0))
                channels[key] = (kind, max(seen[1], times), max(seen[2], times * size))
            if name not in fused and inst.opcode not in _FREE:
                bytes_accessed += times * _instruction_bytes(inst, shapes, computations)
    coll_bytes = {k: 0.0 for k in COLLECTIVES}
    coll_counts = {k: 0 for k in COLLECTIVES}
    for kind, times, size in channels.values():
        coll_bytes[kind] += size
        coll_counts[kind] += int(times)
    return HloStats(flops, bytes_accessed, coll_bytes, coll_counts)
