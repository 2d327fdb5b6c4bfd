"""The masked choice as ONNX nodes: the guardrails of a manifest as constant tensors and the
choice of ``serve/choice.py`` over them, appended to an exported graph so that onnxruntime
decides in one call. Export side only (needs numpy and onnx; the runtime reads the outputs).

The nodes read ``obs`` (float32 [batch, 63], the features after consent) and ``logits`` (float32
[batch, 19], the network's scores) and add three outputs:

* ``choice`` int64 [batch, 4]: the best allowed (slot, tone, channel, content), (0, 0, 0, 0) for
  no-send;
* ``choice_probability`` float64 [batch]: its probability among the allowed actions (within
  about 1e-6 of the numpy choice's: the weights are summed in float32);
* ``choice_doubtful`` bool [batch]: rows the runtime decides again in numpy.

The masks are the numpy choice's (opt-outs, per-channel and weekly caps, quiet hours, the consent
tier each content needs, a channel quiet all day closed). Scores are compared in float64 as the
numpy choice compares them: additive scores as given (the same sums in the same order, so the
same bits), log-probabilities as the score minus its component's max minus the log of the summed
weights. Only that log, the summed weights of the allowed sends and the probability are taken in
float32 (onnxruntime's float64 exp and log are twenty times slower). So a row is doubtful, and
numpy makes its choice, where a float32 digit or the last float64 bit could decide:

* any score not finite (+inf, -inf, NaN: numpy's rules for them hold, see ``serve/choice.py``);
* a tie, or a near tie within :data:`TIE` (relative), between the best allowed (slot, channel)
  pair and the next, the best tone and the next, or the best allowed content and the next (the
  graph takes the first of equals over the pairs in (slot, channel) order, numpy per channel
  first; the two agree wherever the best is alone);
* a send decision within :data:`SEND` (log-probabilities: the allowed sends' summed weight
  against no-send's) or :data:`TIE` (additive: the best send against no-send);
* a summed weight of allowed sends below :data:`TINY` (float32 underflow).

The runtime also checks every action the graph gives against the manifest's rules.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serve.choice import GRAPH_OUTPUTS as OUTPUTS
from serve.guards import Guards

TIE = 1e-12
"""relative gap under which two scores count as tied: ties, and near ties that rounding could
turn, are left to the numpy choice (float64 rounding is about 1e-16)"""
SEND = 1e-5
"""relative gap under which the send decision of log-probabilities is left to numpy (the summed
weight of the allowed sends is taken in float32, about 1e-7)"""
FAR = 1e300
"""subtracted from a best entry to find the runner-up (above any float32 score's magnitude)"""
TINY = 1e-30
"""a float32 summed weight below this has lost its precision (or vanished): numpy decides"""


class _Builder:
    """Collects nodes and constant tensors under one name prefix. Tensors are laid out one row
    per choice and one column per client (``(m, N)``), so that onnxruntime's element-wise kernels
    run over long rows of clients; reductions are over axis 0."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: Any, dtype: Any, hint: str = "const") -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, kind: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        out = out or self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, list(inputs), [out], name=out, **attrs))
        return out

    def ops(self, kind: str, inputs: list[str], count: int, **attrs: Any) -> list[str]:
        outs = [self.name(kind.lower()) for _ in range(count)]
        self.nodes.append(helper.make_node(kind, inputs, outs, name=outs[0], **attrs))
        return outs

    def rows(self, x: str, first: int, end: int) -> str:
        """Rows ``first:end`` of ``x``."""
        return self.op(
            "Slice", x, self.const([first], np.int64), self.const([end], np.int64), self.axis0
        )

    @property
    def axis0(self) -> str:
        return self.const([0], np.int64, "axis0")

    def rmax(self, x: str, keep: int = 1) -> str:
        return self.op("ReduceMax", x, axes=[0], keepdims=keep)

    def rsum(self, x: str) -> str:
        return self.op("ReduceSum", x, self.axis0, keepdims=1)

    def argmax(self, x: str) -> str:
        """Index along axis 0 of the first of the largest entries (keepdims)."""
        return self.op("ArgMax", x, axis=0, keepdims=1, select_last_index=0)

    def penalty(self, allowed: str) -> str:
        """float64 0 where ``allowed``, -inf where not (added to scores, it masks them)."""
        as_float = self.op("Cast", allowed, to=TensorProto.FLOAT)
        return self.op("Cast", self.op("Log", as_float), to=TensorProto.DOUBLE)

    def near(self, top: str, other: str, tolerance: float) -> str:
        """``other`` (at most ``top``) within ``tolerance`` of ``top``, relative to ``top``'s
        magnitude (at least 1); False where they differ infinitely, or for -inf and -inf."""
        gap = self.op("Sub", top, other)
        scale = self.op("Max", self.op("Abs", top), self.const(1.0, np.float64))
        return self.op("LessOrEqual", gap, self.op("Mul", scale, self.const(tolerance, np.float64)))

    def runner_up_near(self, x: str, top: str, best: str, rows: int, tolerance: float) -> str:
        """Whether the best entry along axis 0 of ``x`` (value ``top`` at index ``best``) has a
        rival within ``tolerance`` (:meth:`near`), an exact tie included."""
        index = self.const(np.arange(rows)[:, None], np.int64)
        best_entry = self.op("Cast", self.op("Equal", index, best), to=TensorProto.DOUBLE)
        drop = self.op("Mul", best_entry, self.const(FAR, np.float64))
        second = self.rmax(self.op("Sub", x, drop))  # the best of the others
        return self.near(top, second, tolerance)


def choice_nodes(manifest: dict[str, Any], prefix: str = "choice/") -> _Builder:
    """The nodes from ``obs`` and ``logits`` to :data:`OUTPUTS` under ``manifest``'s rules, layout
    and ``score_rule`` (the steps and their precision: the module notes)."""
    guards = Guards(manifest)
    nvec = [int(k) for k in manifest["nvec"]]
    n_slots, n_channels = guards.quiet.shape
    c, k = n_channels, len(guards.contents)
    n_pairs = n_slots * n_channels
    log_probs = manifest["score_rule"] == "log_probs"
    b = _Builder(prefix)
    neg_inf = b.const(-np.inf, np.float64, "neg_inf")

    # the guard inputs as (rows, N): one product with a 0/1 selector (exact on finite features)
    columns = [*guards.i_opted, *guards.i_sent, *guards.i_tier]
    selector = np.zeros((len(columns), len(manifest["feature_names"])), dtype=np.float32)
    selector[np.arange(len(columns)), columns] = 1.0
    inputs = b.op("Gemm", b.const(selector, np.float32, "guard_columns"), "obs", transB=1)
    opted = b.op("Greater", b.rows(inputs, 0, c), b.const(0.5, np.float32))
    sent = b.op("Round", b.rows(inputs, c, 2 * c))
    weekly_ok = b.op("Less", b.rsum(sent), b.const(guards.max_per_week, np.float32))
    has_open = (~guards.quiet).any(axis=0)[:, None]  # a channel quiet all day takes nothing
    channel_ok = b.op(
        "And",
        b.op(
            "And",
            b.op("Not", opted),
            b.op("Less", sent, b.const(guards.channel_cap[:, None], np.float32, "channel_cap")),
        ),
        b.op("And", weekly_ok, b.const(has_open, np.bool_, "has_open_slot")),
    )  # (c, N)
    tier = b.argmax(b.rows(inputs, 2 * c, 2 * c + 4))  # (1, N)
    content_ok = b.op(
        "GreaterOrEqual",
        tier,
        b.const(guards.content_min_tier[:, None], np.int64, "content_min_tier"),
    )  # (k, N)

    # the scores, (19, N); rows with a score that is not finite are left to numpy. The transpose
    # is a product with the identity (exact on finite scores), which onnxruntime runs as is
    n_scores = sum(nvec)
    not_finite = b.op(  # x * 0 is NaN for +-inf and NaN only
        "IsNaN",
        b.op(
            "ReduceSum",
            b.op("Mul", "logits", b.const(0.0, np.float32)),
            b.const([1], np.int64),
            keepdims=0,
        ),
    )  # (N,)
    scores = b.op("Gemm", b.const(np.eye(n_scores), np.float32, "identity"), "logits", transB=1)
    raw = b.op("Cast", scores, to=TensorProto.DOUBLE)
    u, weight, top_u = [], [], []  # per component: scores compared, exp(score - max), max score
    for first, end in zip(np.cumsum([0, *nvec[:-1]]), np.cumsum(nvec), strict=True):
        part = b.rows(raw, int(first), int(end))
        top = b.rmax(part)
        shifted = b.op("Sub", part, top)  # float64, as numpy's
        e = b.op("Exp", b.op("Cast", shifted, to=TensorProto.FLOAT))  # float32: in [0, 1]
        if log_probs:  # log-probabilities: minus the log of the summed weights
            log_total = b.op("Cast", b.op("Log", b.rsum(e)), to=TensorProto.DOUBLE)
            u.append(b.op("Sub", shifted, log_total))
            top_u.append(b.op("Neg", log_total))
        else:
            u.append(part)
            top_u.append(top)
        weight.append(e)
    slot, tone, channel, content = u
    no_send = b.rows(slot, 0, 1)  # (1, N)
    sends = b.rows(slot, 1, n_slots + 1)  # (s, N)

    # the best allowed (slot, channel) pair, lowest slot then channel among equals
    quiet = np.where(guards.quiet, -np.inf, 0.0)[:, :, None]  # (s, c, 1)
    channel_penalty = b.penalty(channel_ok)  # (c, N)
    pairs = b.op(
        "Add",
        b.op(
            "Add",
            b.op(
                "Add",
                b.op("Unsqueeze", sends, b.const([1], np.int64)),
                b.op("Unsqueeze", channel, b.axis0),
            ),
            b.op("Unsqueeze", channel_penalty, b.axis0),
        ),
        b.const(quiet, np.float64, "quiet_hours"),
    )
    pairs = b.op("Reshape", pairs, b.const([n_pairs, -1], np.int64))  # (s * c, N)
    pair_top, best_pair = b.rmax(pairs), b.argmax(pairs)  # (1, N)
    masked_content = b.op("Add", content, b.penalty(content_ok))
    tone_top, content_top = b.rmax(tone), b.rmax(masked_content)
    best_tone, best_content = b.argmax(tone), b.argmax(masked_content)
    best_send = b.op("Add", b.op("Add", pair_top, tone_top), content_top)  # (1, N)

    # the summed weight of the allowed sends: per channel, its weight times its open slots'
    e_slot, e_tone, e_channel, e_content = weight
    open_by_channel = b.const((~guards.quiet).T, np.float32, "open_by_channel")  # (c, s)
    inner = b.op("MatMul", open_by_channel, b.rows(e_slot, 1, n_slots + 1))  # (c, N)
    channel_weight = b.op(
        "Mul", b.op("Mul", e_channel, inner), b.op("Cast", channel_ok, to=TensorProto.FLOAT)
    )
    pair_mass = b.rsum(channel_weight)
    content_mass = b.rsum(b.op("Mul", e_content, b.op("Cast", content_ok, to=TensorProto.FLOAT)))
    tiny = b.const(TINY, np.float32)
    underflow = b.op(
        "Or",
        b.op("And", b.op("Less", pair_mass, tiny), b.op("Greater", pair_top, neg_inf)),
        b.op("And", b.op("Less", content_mass, tiny), b.op("Greater", content_top, neg_inf)),
    )  # allowed sends whose float32 weights vanished: numpy decides
    log_mass = b.op(
        "Cast",
        b.op(
            "Add",
            b.op("Add", b.op("Log", pair_mass), b.op("Log", b.rsum(e_tone))),
            b.op("Log", content_mass),
        ),
        to=TensorProto.DOUBLE,
    )
    offsets = b.op("Add", b.op("Add", top_u[0], top_u[2]), b.op("Add", top_u[1], top_u[3]))
    all_sends = b.op("Add", offsets, log_mass)  # log of the allowed sends' summed weight
    deciding = all_sends if log_probs else best_send
    send = b.op(
        "And", b.op("Greater", best_send, neg_inf), b.op("Greater", deciding, no_send)
    )  # (1, N)

    n_ch = b.const(n_channels, np.int64)
    chosen_parts = [
        b.op("Add", b.op("Div", best_pair, n_ch), b.const([[1]], np.int64)),
        best_tone,
        b.op("Sub", best_pair, b.op("Mul", b.op("Div", best_pair, n_ch), n_ch)),
        best_content,
    ]
    sending = b.op("Cast", send, to=TensorProto.INT64)
    columns_out = [b.op("Mul", part, sending) for part in chosen_parts]
    b.op("Transpose", b.op("Concat", *columns_out, axis=0), perm=[1, 0], out=OUTPUTS[0])
    # probability: exp(chosen - logaddexp(no_send, all_sends)), in float32 after the difference
    high = b.op("Max", no_send, all_sends)
    low = b.op("Min", no_send, all_sends)
    chosen = b.op("Where", send, best_send, no_send)
    relative = b.op("Cast", b.op("Sub", chosen, high), to=TensorProto.FLOAT)
    spread = b.op("Cast", b.op("Sub", low, high), to=TensorProto.FLOAT)
    probability = b.op(
        "Div",
        b.op("Exp", relative),
        b.op("Add", b.const(1.0, np.float32), b.op("Exp", spread)),
    )
    probability = b.op(
        "Min", b.op("Max", probability, b.const(0.0, np.float32)), b.const(1.0, np.float32)
    )
    b.op(
        "Reshape",
        b.op("Cast", probability, to=TensorProto.DOUBLE),
        b.const([-1], np.int64),
        out=OUTPUTS[1],
    )

    # rows left to numpy: a near tie, a near send decision, an underflow, a score not finite
    doubts = [
        underflow,
        b.runner_up_near(pairs, pair_top, best_pair, n_pairs, TIE),
        b.runner_up_near(tone, tone_top, best_tone, nvec[1], TIE),
        b.runner_up_near(masked_content, content_top, best_content, k, TIE),
    ]
    if log_probs:
        high_low = b.op("Max", all_sends, no_send), b.op("Min", all_sends, no_send)
        doubts.append(b.near(*high_low, SEND))
    else:
        doubts.append(b.near(b.op("Max", best_send, no_send), b.op("Min", best_send, no_send), TIE))
    doubtful = doubts[0]
    for more in doubts[1:]:
        doubtful = b.op("Or", doubtful, more)
    doubtful = b.op("Reshape", doubtful, b.const([-1], np.int64))
    b.op("Or", doubtful, not_finite, out=OUTPUTS[2])
    return b


def _outputs() -> list[onnx.ValueInfoProto]:
    return [
        helper.make_tensor_value_info(OUTPUTS[0], TensorProto.INT64, ["batch", 4]),
        helper.make_tensor_value_info(OUTPUTS[1], TensorProto.DOUBLE, ["batch"]),
        helper.make_tensor_value_info(OUTPUTS[2], TensorProto.BOOL, ["batch"]),
    ]


def append_choice(model: onnx.ModelProto, manifest: dict[str, Any]) -> onnx.ModelProto:
    """``model`` (inputs ``obs``, outputs including ``logits``) with the masked choice's nodes and
    :data:`OUTPUTS` added, checked by ``onnx.checker``."""
    names = {o.name for o in model.graph.output}
    if "logits" not in names or [i.name for i in model.graph.input] != ["obs"]:
        raise ValueError(f"the graph must map obs to logits, it gives {sorted(names)}")
    b = choice_nodes(manifest)
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    model.graph.output.extend(_outputs())
    onnx.checker.check_model(model)
    return model


def standalone(manifest: dict[str, Any]) -> onnx.ModelProto:
    """A graph of the masked choice alone: inputs ``obs`` float32 [batch, features] and
    ``logits`` float32 [batch, 19], outputs :data:`OUTPUTS` (to drive it with any scores)."""
    b = choice_nodes(manifest)
    graph = helper.make_graph(
        b.nodes,
        "masked_choice",
        [
            helper.make_tensor_value_info(
                "obs", TensorProto.FLOAT, ["batch", len(manifest["feature_names"])]
            ),
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", sum(manifest["nvec"])]
            ),
        ],
        _outputs(),
        initializer=b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
