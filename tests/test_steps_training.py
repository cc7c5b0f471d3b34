"""Issue 22 §1: a user's training loop recorded over several steps; the diff aligns step by
step and names the first divergent step and, in it, the first divergent layer."""
import json

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import tracediff as td  # noqa: E402
from tracediff.adapters import torch as tdt  # noqa: E402

STEPS = 5


def _train(path, lr_at):
    """Five SGD steps of a small MLP under ``tdt.recording``; ``lr_at(step)``: the learning rate
    the scheduler gives (a candidate's off-by-one warm-up multiplies one step's rate)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 11), nn.Tanh(), nn.Linear(11, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    data = torch.Generator().manual_seed(1)
    with tdt.recording(model, path, values=True):
        for _ in range(STEPS):
            x = torch.randn(5, 7, generator=data)
            y = torch.randint(0, 3, (5,), generator=data)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            scheduler.step()


@pytest.fixture
def reference(tmp_path, torch_one_thread):
    path = tmp_path / "ref.h5"
    _train(path, lambda step: 1.0)
    return path


def test_an_optimizer_mis_update_after_step_2_is_named_at_step_3(tmp_path, reference):
    candidate = tmp_path / "cand.h5"
    _train(candidate, lambda step: 10.0 if step == 2 else 1.0)   # the update ending step 2
    report = td.diff(candidate, reference)
    first = json.loads(report.to_json())["first_divergence"]
    assert first["step"] == 3 and report.first_divergence.step == 3
    assert (first["forward"]["b_name"], first["forward"]["step"]) == ("0", 3)
    assert first["backward"]["step"] == 3
    summary = report.to_dict()["steps"]
    assert [c["step"] for c in summary["columns"]] == list(range(STEPS))
    assert [c["diverged"] > 0 for c in summary["columns"]] == [False] * 3 + [True] * 2
    layer = next(x for x in summary["layers"] if (x["kind"], x["b_name"]) == ("forward", "0"))
    assert layer["diverged"] == [3, 4]
    assert layer["rel_l2"][2] < 1e-6 < 1e-2 < layer["rel_l2"][3]


def test_the_same_loop_reports_nothing_and_renders_its_steps(tmp_path, reference):
    candidate = tmp_path / "same.h5"
    _train(candidate, lambda step: 1.0)
    report = td.diff(candidate, reference)
    assert report.ok and report.first_divergence.step is None
    assert len(report.to_dict()["steps"]["columns"]) == STEPS


def test_terminal_and_html_show_the_step_of_the_divergence(tmp_path, reference, capsys):
    candidate = tmp_path / "cand.h5"
    _train(candidate, lambda step: 10.0 if step == 2 else 1.0)
    report = td.diff(candidate, reference)
    report.render()
    out = capsys.readouterr().out
    assert "first divergence in step 3: forward at 0 (diverged)" in out
    assert "per step (5)" in out and "rel_l2 per layer per step" in out
    page = report.to_html()
    assert '<section id="step-heatmap">' in page and "in step 3:" in page
    heat = page[page.index('<table id="step-table">'):]
    heat = heat[:heat.index("</table>")]
    assert heat.count("<tr>") == 1 + len(report.to_dict()["steps"]["layers"])
    assert heat.count('class="heat bad"') == sum(len(x["diverged"]) for x in report.to_dict()["steps"]["layers"])


def test_markdown_has_the_per_step_tables(tmp_path, reference):
    candidate = tmp_path / "cand.h5"
    _train(candidate, lambda step: 10.0 if step == 2 else 1.0)
    diffed = td.diff(candidate, reference)
    report, text = diffed.to_dict(), diffed.to_markdown()
    lines = text.splitlines()
    assert "in step 3:" in lines[0]
    start = lines.index(f"### Per step ({STEPS})")
    rows = lines[start + 4:start + 4 + STEPS]
    assert [row.split(" | ")[0] for row in rows] == [f"| step {s}" for s in range(STEPS)]
    assert rows[3].split(" | ")[2] != "0" and all(r.split(" | ")[2] == "0" for r in rows[:3])
    starred = sum(line.count("\\*") for line in lines if line.startswith("| forward")
                  or line.startswith("| backward") or line.startswith("| param"))
    assert starred == sum(len(x["diverged"]) for x in report["steps"]["layers"][:20] if x["diverged"])
