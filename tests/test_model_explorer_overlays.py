"""Model Explorer overlays of a diff (``Report.to_model_explorer``, ``tracediff diff
--model-explorer``): the files load in Model Explorer's own node-data classes, their keys are
nodes that Model Explorer's own adapters build for the model (ONNX through model-explorer-onnx,
torch.export through its PyTorch adapter), and the planted conv is the first divergence on both
sides while the layers before it are ok."""
import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("model_explorer")
pytest.importorskip("model_explorer_onnx")

from model_explorer import node_data_builder as ndb  # noqa: E402
from model_explorer.consts import DEFAULT_SETTINGS  # noqa: E402
from model_explorer.pytorch_exported_program_adapter_impl import (  # noqa: E402
    PytorchExportedProgramAdapterImpl)
from model_explorer_onnx.main import ONNXAdapter  # noqa: E402

import tracediff as td  # noqa: E402
from explorer_models import planted  # noqa: E402
from tracediff.cli import main  # noqa: E402
from tracediff.explorer.graph import trace_graph  # noqa: E402
from tracediff.report.model_explorer import scale_color  # noqa: E402

NODE_DATA = ("status", "forward", "backward")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return planted(tmp_path_factory.mktemp("explorer"))


@pytest.fixture(scope="module")
def written(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("overlays")
    report = td.diff(models["bad"], models["ref"])
    index = report.to_model_explorer(folder, model_a=models["onnx"], model_b=models["pt2"])
    return report, index, folder


@pytest.fixture(scope="module")
def onnx_ids(models):
    graphs = ONNXAdapter().convert(str(models["onnx"]), {})["graphs"]
    return {node.id for node in graphs[0].nodes}


@pytest.fixture(scope="module")
def torch_ids(models):
    graphs = PytorchExportedProgramAdapterImpl(models["program"], DEFAULT_SETTINGS).convert()
    return {node.id for node in graphs["graphs"][0].nodes}


def _load(folder, name):
    return json.loads((folder / name).read_text())


def _as_model_explorer(content):
    """The file read into Model Explorer's GraphNodeData (an unknown field is a TypeError)."""
    data = ndb.GraphNodeData(**{
        **content, "results": {k: ndb.NodeDataResult(**v) for k, v in content["results"].items()},
        "gradient": [ndb.GradientItem(**g) for g in content.get("gradient", [])]})
    return json.loads(data.to_json_string())


@pytest.mark.parametrize("side", ["a", "b"])
@pytest.mark.parametrize("kind", NODE_DATA)
def test_overlays_load_in_model_explorers_data_classes(written, side, kind):
    _, index, folder = written
    content = _load(folder, index["sides"][side]["overlays"][kind])
    assert content["results"], f"{side}.{kind} colours no node"
    again = _as_model_explorer(content)
    assert {key: again[key] for key in content} == content


def test_onnx_keys_are_model_explorer_onnx_node_ids(written, onnx_ids):
    _, _, folder = written
    for kind in NODE_DATA:
        assert set(_load(folder, f"a.{kind}.json")["results"]) <= onnx_ids
    status = {k: v["value"] for k, v in _load(folder, "a.status.json")["results"].items()}
    # every op node of the export is coloured, the input and the weights a torch parameter
    # pairs with (the folded conv+BatchNorm weights, onnx::Conv_*, are no parameter)
    assert status == {
        "/0/Conv": "ok", "/2/Relu": "ok", "/3/Conv": "first divergence",
        "/4/Relu": "diverged", "/5/GlobalAveragePool": "diverged", "/6/Flatten": "diverged",
        "/7/Gemm": "diverged", "[value] input.1": "ok", "[value] 3.weight": "diverged",
        "[value] 3.bias": "ok", "[value] 7.weight": "ok", "[value] 7.bias": "ok"}
    assert {i for i in onnx_ids if not i.startswith("[value]")} <= set(status)


def test_torch_keys_are_the_exported_programs_node_ids(written, torch_ids):
    _, index, folder = written
    for kind in NODE_DATA:
        assert set(_load(folder, f"b.{kind}.json")["results"]) <= torch_ids
    status = {k: v["value"] for k, v in _load(folder, "b.status.json")["results"].items()}
    # module 3's output is fx node conv2d_1; the BatchNorm the export folded pairs with batch_norm
    assert status["conv2d_1"] == "first divergence"
    assert status["batch_norm"] == status["relu"] == "ok"
    assert status["relu_1"] == status["linear"] == "diverged"
    # the planted weight on its placeholder; the user input on its own
    assert status["p_3_weight"] == "diverged" and status["p_3_bias"] == status["input"] == "ok"
    assert index["sides"]["a"]["first_divergence"] == ["/3/Conv"]
    assert index["sides"]["b"]["first_divergence"] == ["conv2d_1"]


def test_forward_errors_coloured_on_a_log_scale(written):
    report, _, folder = written
    content = _load(folder, "a.forward.json")
    results = {k: v["value"] for k, v in content["results"].items()}
    pairs = {p.a_name if p.kind == "forward" else f"[value] {p.a_name}": p.rel_l2
             for p in report.pairs if p.kind in ("forward", "input", "param")}
    assert results == {name: pairs[name] for name in results}
    low, high = min(results.values()), max(results.values())
    assert low < 1e-6 and high > 1e-2
    stops = {g["bgColor"]: g["stop"] for g in content["gradient"]}
    # the decade 1e-4 sits where 1e-4 falls between the smallest and largest error, in yellow
    assert stops["#ffee58"] == pytest.approx((1e-4 - low) / (high - low))
    assert content["gradient"][-1]["bgColor"] == scale_color(high)


def test_gradient_errors_are_the_backward_pairs(written):
    report, _, folder = written
    results = {k: v["value"] for k, v in _load(folder, "b.backward.json")["results"].items()}
    backward = [p for p in report.pairs if p.kind == "backward"]
    assert backward and len(results) >= 5
    assert results["conv2d_1"] == next(p.rel_l2 for p in backward if p.b_name == "3")


def test_mapping_pairs_nodes_across_the_split_pane(written, onnx_ids, torch_ids):
    _, _, folder = written
    entries = _load(folder, "mapping.json")["mappingEntries"]
    assert {"leftNodeIds": ["/3/Conv"], "rightNodeIds": ["conv2d_1"]} in entries
    assert all(set(e["leftNodeIds"]) <= onnx_ids and set(e["rightNodeIds"]) <= torch_ids
               for e in entries)


def test_groups_roll_up_their_worst_child(written):
    _, _, folder = written
    groups = _load(folder, "b.groups.json")["groups"]
    assert groups["3"]["status"] == "first divergence" and groups["3"]["worst_node"] == "conv2d_1"
    assert groups["2"]["status"] == "ok"
    onnx_groups = _load(folder, "a.groups.json")["groups"]
    assert onnx_groups["3"]["max_rel_l2"] > 1e-2 > onnx_groups["0"]["max_rel_l2"]


def test_replay_adds_the_local_errors(models, tmp_path):
    report = td.replay(str(models["onnx"]), models["ref"])
    index = report.to_model_explorer(tmp_path, model_a=models["onnx"])
    assert index["sides"]["a"]["overlays"]["local"] == "a.local.json"
    local = {k: v["value"] for k, v in _load(tmp_path, "a.local.json")["results"].items()}
    assert max(local, key=local.get) == "/3/Conv"
    assert all(value < 1e-4 for key, value in local.items() if key != "/3/Conv")


def test_diff_cli_writes_overlays_of_the_traces_own_graph(models, tmp_path, onnx_ids, capsys):
    out = tmp_path / "me"
    assert main(["diff", str(models["bad"]), str(models["ref"]), "--quiet",
                 "--model-explorer", str(out)]) == 1
    index = _load(out, "index.json")
    # no .pt2 given: the torch side is keyed by record names, the graph `tracediff view` draws
    assert index["sides"]["b"]["graph"] == "trace" and index["sides"]["a"]["graph"] == "model"
    with td.open(models["ref"]) as trace:
        nodes = trace_graph(trace, "B")["graphs"][0].nodes
    # the trace's graph: a node a record, wired by the records' dataflow
    edges = {node.id: [edge.sourceNodeId for edge in node.incomingEdges] for node in nodes}
    assert edges["input"] == [] and edges["0"] == ["input"] and edges["3"] == ["2"]
    assert set(_load(out, "b.status.json")["results"]) <= set(edges)
    assert _load(out, "b.status.json")["results"]["3"]["value"] == "first divergence"
    assert set(_load(out, "a.status.json")["results"]) <= onnx_ids


def test_view_without_model_explorer_says_what_to_install(models):
    code = ("import sys; sys.modules['model_explorer'] = None\n"
            "from tracediff.cli import main\n"
            f"sys.exit(main(['view', {str(models['bad'])!r}, {str(models['ref'])!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pip install 'tracediff[viewer]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_view_refuses_a_model_no_trace_was_recorded_from(models, capsys):
    assert main(["view", str(models["bad"]), str(models["ref"]), "--no-browser",
                 "--model", str(models["onnx"]), "--model", str(models["onnx"])]) == 2
    assert "no trace left to draw it for was recorded with onnx" in capsys.readouterr().err


class _Block(torch.nn.Module):
    """One ReLU called twice in a row: two calls, two nodes."""

    def __init__(self):
        super().__init__()
        self.fc, self.act, self.norm = torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.LayerNorm(4)

    def forward(self, x):
        return self.norm(self.act(self.fc(x)) + self.act(x))


def test_each_call_of_a_module_is_its_own_node(tmp_path):
    from tracediff.adapters import torch as tdt
    from tracediff.adapters.torch.explorer import node_keys

    model = torch.nn.Sequential(_Block(), torch.nn.Linear(4, 2)).eval()
    x = torch.randn(3, 4)
    tdt.record(model, x, tmp_path / "t.h5")
    program = torch.export.export(model, (x,))
    with td.open(tmp_path / "t.h5") as trace:
        keys = node_keys(trace.records(), program)
    nodes = {node.name: node for node in program.graph.nodes}

    def innermost(key):
        stack = nodes[keys[key]["ids"][0]].meta["nn_module_stack"]
        return list(stack.values())[-1][0]

    assert [keys[("0.act", call)]["ids"] for call in (0, 1)] == [["relu"], ["relu_1"]]
    # a block's output is its last node, the LayerNorm's; <root> the last computing node
    assert innermost(("0", 0)) == innermost(("0.norm", 0)) == "0.norm"
    assert keys[("<root>", 0)] == {"ids": [keys[("1", 0)]["ids"][0]], "group": ""}
    assert keys[("0.fc.weight", 0)]["ids"] == ["p_0_fc_weight"]


def test_a_second_root_cause_is_marked_beside_the_first_divergence(models, tmp_path):
    import copy
    import warnings

    from explorer_models import cnn

    bad = copy.deepcopy(cnn())
    with torch.no_grad():
        bad[0].weight.mul_(1.05)
        bad[3].weight.mul_(1.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(bad, (torch.randn(2, 3, 6, 6),), tmp_path / "two.onnx", dynamo=False)
    report = td.replay(str(tmp_path / "two.onnx"), models["ref"])
    report.to_model_explorer(tmp_path / "me", model_a=tmp_path / "two.onnx")
    status = {k: v["value"] for k, v in _load(tmp_path / "me", "a.status.json")["results"].items()}
    assert status["/0/Conv"] == "first divergence" and status["/3/Conv"] == "root cause"
    assert status["/2/Relu"] == status["/4/Relu"] == "diverged"


def test_a_multi_rank_folder_is_drawn_from_its_reassembled_trace(tmp_path):
    """``tracediff view`` of a rank folder with no model file: its graph is the logical trace's
    (one node a record, not one a rank file), with the overlays keyed to it."""
    import numpy as np

    from test_ranks_format import write_ranks
    from tracediff.explorer.server import explorer_config

    full = np.arange(42, dtype=np.float32).reshape(6, 7)
    with td.Recorder(tmp_path / "ref.h5") as rec:
        rec.input("x", full)
        rec.forward("rows", full * 2)

    def records(rank):
        return [("input", "x", full, {}),
                ("forward", "rows", np.array_split(full * 2, 2, axis=0)[rank], {"placement": "Shard(0)"})]
    folder = write_ranks(tmp_path / "run.trace", 2, records)
    index = td.diff(folder, tmp_path / "ref.h5").to_model_explorer(tmp_path / "me")
    config, _ = explorer_config(index, tmp_path / "me", (None, None))
    graph = config.graphs_list[0]["graphs"][0]
    assert sorted(node.id for node in graph.nodes) == ["rows", "x"]
