"""The torch module path of each ONNX node, decoded from what the exporters leave behind.

- The TorchScript ("legacy") exporter names nodes ``/<scope>/<scope>/<OpType>[_n]``; each scope
  is the module's qualified name cut at its last non-numeric atom (``layers.0.mlp.0`` ->
  ``mlp.0``), and a scope seen a second time (a module called twice) gets ``_<n>``.
- The dynamo exporter stores ``pkg.torch.onnx.name_scopes`` (the qualified names of the module
  stack, then the op) and ``namespace`` (``name: class/name: class/...``) as metadata_props.
"""
from __future__ import annotations

import ast
import re

ROOT = "<root>"
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
NAMESPACE = "namespace"
REWRITE_RULE = "pkg.onnxscript.rewriter.rule_name"
_REPEAT = re.compile(r"^(.*)_(\d+)$")


def node_origins(nodes, graph_outputs, initializer_names, legacy):
    """Per node ``{"scope": innermost module path, "module": pairing key, ...}``.

    ``scope`` is where the exporter put the node (``<root>`` for root-level nodes). ``module``
    is set where the last record carrying it is that module's output (of its first call), so a
    torch record pairs with the last ONNX record of its module:
    - a module whose last node lies in a child (an attention block ending in its output
      projection) gets no ``module`` on its own nodes;
    - the nodes of a module's second and later calls (a ReLU module used twice) carry
      ``module_call`` (1, 2, ...) instead of ``module``;
    - a root-level node is ``<root>`` only when it yields a graph output.
    """
    decoder = _ScopeDecoder()
    graph_outputs = set(graph_outputs)
    scopes = [decoder.scope(node) for node in nodes]
    calls = _calls(scopes)
    last_in_first_call = {}
    for index, scope in enumerate(scopes):
        for module in _ancestors(scope):
            if calls[index].get(module) == 0:
                last_in_first_call[module] = index
    origins = []
    for index, (node, scope) in enumerate(zip(nodes, scopes)):
        origin = {}
        if scope == "":
            origin["scope"] = ROOT
            if any(t in graph_outputs for t in node.output):
                origin["module"] = ROOT
        elif scope is not None:
            origin["scope"] = scope
            call = calls[index][scope]
            if call:
                origin["module_call"] = call
            elif scopes[last_in_first_call[scope]] == scope:
                origin["module"] = scope
        folded = _folded(node, initializer_names, legacy)
        if folded:
            origin["folded"] = folded[0]
            if not folded[1]:
                origin.pop("module", None)  # its value is no longer its own module's output
        origins.append(origin)
    return origins


def reader_owners(nodes, origins, record_names):
    """``{initializer: owner}``: the owner of each tensor a node reads, for the initializers
    whose names say nothing of their module (``gpu_0/conv1_w_0``, ``onnx::Conv_123``).

    A parameter belongs to the node that reads it (the first one, when several do): the torch
    module the exporter filed that node under (``scope``), else the node's own record name, so
    the parameter pairs with the parameter of whatever the node is paired with.
    ``record_names``: each node's record name (its first output's).
    """
    out = {}
    for index, node in enumerate(nodes):
        origin = origins[index]
        if origin.get("folded"):
            continue   # a fused constant: not the parameter of any one module
        scope = origin.get("scope")
        owner = scope if scope and scope != ROOT else record_names.get(index)
        if not owner:
            continue
        for tensor in node.input:
            if tensor and says_nothing_of_module(tensor):
                out.setdefault(tensor, owner)
    return out


def says_nothing_of_module(name) -> bool:
    """An initializer name that is no ``<module>.<leaf>`` path (``gpu_0/conv1_w_0``,
    ``onnx::Conv_123``, ``W``)."""
    return "." not in name or name.startswith("onnx::")


def parameter_owners(model, legacy):
    """:func:`reader_owners` of a whole ``onnx.ModelProto`` (the gradient recorder's view)."""
    from .meta import record_names
    from .plan import topological_order

    graph = model.graph
    order = topological_order(graph)
    nodes = [graph.node[i] for i in order]
    origins = node_origins(nodes, {o.name for o in graph.output},
                           {t.name for t in graph.initializer}, legacy)
    names = {}
    for index, _, _, name in record_names(nodes, order):
        names.setdefault(index, name)
    return reader_owners(nodes, origins, names)


def _ancestors(scope):
    """``a``, ``a.b``, ``a.b.c`` for ``a.b.c``; nothing for the root or an unknown scope."""
    if not scope:
        return []
    atoms = scope.split(".")
    return [".".join(atoms[:end]) for end in range(1, len(atoms) + 1)]


def _calls(scopes):
    """Per node, ``{module: which call of it}`` for the node's scope and its ancestors.

    A call's nodes are contiguous: a node outside a module's subtree (its parent's own op, a
    sibling) ends the module's current call, and the module's next node starts a new one.
    Nodes without a known scope (Identity, Constant) interrupt nothing.
    """
    counts, active, out = {}, set(), []
    for scope in scopes:
        if scope is None:
            out.append({})
            continue
        chain = _ancestors(scope)
        for module in chain:
            if module not in active:
                counts[module] = counts[module] + 1 if module in counts else 0
        active = set(chain)
        out.append({module: counts[module] for module in chain})
    return out


def _folded(node, initializer_names, legacy):
    """``(op folded into this node by the exporter, whether the node's scope is still the module
    whose output it holds)`` or None.

    The legacy exporter's constant folding fuses an eval-mode BatchNormalization into the Conv
    before it, keeps the Conv's name and renames its weight ``onnx::Conv_<n>``: the node's scope
    (the conv) no longer holds its output. The dynamo exporter's optimizer does the same fusion
    but files the Conv under the BatchNorm module, whose output it then is.
    """
    rule = next((p.value for p in node.metadata_props if p.key == REWRITE_RULE), "")
    if rule == "FuseBatchNormIntoConv":
        return "BatchNormalization", True
    if legacy and node.op_type == "Conv" and len(node.input) > 1:
        weight = node.input[1]
        if weight in initializer_names and weight.startswith("onnx::"):
            return "BatchNormalization", False
    return None


def folded_initializers(nodes, initializer_names, legacy):
    """Initializers whose values a folding rewrote (a fused Conv's weight and bias): derived
    constants rather than parameters of the torch model."""
    out = set()
    for node in nodes:
        if _folded(node, initializer_names, legacy):
            out.update(t for t in node.input[1:] if t in initializer_names)
    return out


class _ScopeDecoder:
    """The innermost module path of each node, in graph order (legacy scopes need history):
    a path, ``""`` for root-level nodes, None where the exporter left no trace of one."""

    def __init__(self):
        self._seen_scopes = set()

    def scope(self, node):
        props = {p.key: p.value for p in node.metadata_props}
        path = None
        if NAME_SCOPES in props:
            path = _from_name_scopes(props[NAME_SCOPES])
        if path is None and NAMESPACE in props:
            path = _from_namespace(props[NAMESPACE])
        if path is None and node.name.startswith("/"):
            path = self._from_legacy_name(node.name)
        return path

    def _from_legacy_name(self, name):
        scope = name.rsplit("/", 1)[0]
        if not scope:
            return ""
        if scope not in self._seen_scopes:
            # a module called again gets its scope name repeated with _<n>
            match = _REPEAT.match(scope)
            if match and match.group(1) in self._seen_scopes:
                scope = match.group(1)
        self._seen_scopes.add(scope)
        return join_legacy_scopes(scope.strip("/").split("/"))


def join_legacy_scopes(segments):
    """Qualified module path from the legacy exporter's scope segments.

    A segment that continues the previous one with numeric atoms only (``mlp`` then ``mlp.0``)
    is a child of a container; any other segment is a child named by its own atoms.
    """
    path, previous = "", ""
    for segment in segments:
        if previous and segment.startswith(previous + ".") and \
                all(atom.isdigit() for atom in segment[len(previous) + 1:].split(".")):
            path = f"{path}.{segment[len(previous) + 1:]}"
        else:
            path = f"{path}.{segment}" if path else segment
        previous = segment
    return path


def _from_name_scopes(text):
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, (list, tuple)) or not scopes:
        return None
    # the last entry is the op (fx node) name, the one before it the innermost module
    return str(scopes[-2]) if len(scopes) >= 2 else ""


def _from_namespace(text):
    parts = [p.split(":")[0].strip() for p in text.split("/")]
    if len(parts) < 2:
        return None
    return parts[-2]


def is_legacy_export(model) -> bool:
    """Exported by torch's TorchScript exporter: scoped ``/a/b/Op`` node names, no metadata."""
    if model.producer_name not in ("pytorch", "onnx.quantize"):   # onnxruntime's quantizer
        return False
    return any(n.name.startswith("/") and not n.metadata_props for n in model.graph.node
               if n.op_type not in ("QuantizeLinear", "DequantizeLinear"))


def merged_parameters(nodes, initializers, legacy, value_of):
    """``{alias: (initializer, [consuming node indices])}`` for parameters that the dynamo
    exporter's optimizer merged into one initializer because their values are equal (a fresh
    model's LayerNorm ones, its zero biases), without the legacy exporter's Identity copies.

    ``initializers``: the float initializer names; ``value_of(name)`` their arrays. A merged
    initializer is constant-valued and read by nodes of several modules; the reads from a module
    other than the one it is named after are that module's own parameter, ``<module>.<leaf>``
    as torch names it. Tied weights (GPT-2's embedding and output head) hold random values and
    stay one parameter, as in torch.
    """
    if legacy:
        return {}
    decoder = _ScopeDecoder()
    scopes = [decoder.scope(node) for node in nodes]
    readers = {}
    for index, node in enumerate(nodes):
        for tensor in node.input:
            if tensor in initializers and "." in tensor and not tensor.startswith("onnx::"):
                readers.setdefault(tensor, []).append(index)
    out = {}
    for name, indices in readers.items():
        owner, leaf = name.rsplit(".", 1)
        foreign = {}
        for index in indices:
            scope = scopes[index]
            if scope and scope != owner and not scope.startswith(owner + "."):
                foreign.setdefault(f"{scope}.{leaf}", []).append(index)
        if not foreign:
            continue
        array = value_of(name)
        if array.size == 0 or not (array == array.flat[0]).all():
            continue
        for alias, consumers in foreign.items():
            if alias not in initializers:
                out[alias] = (name, consumers)
    return out
