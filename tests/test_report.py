"""The HTML report: built from real run directories, parsed (never byte-compared), escaped, and
opened in headless Chromium.

Real runs: two tiny pipeline runs on the ``unit`` preset: GenARM and a second method, the first
of PARM / UniARM that is registered. While neither exists (only GenARM was on main when this was
written), the second run is GenARM with another LoRA config (rank 4 instead of 8): a real run
with its own spec hash, timing and scores.

Synthetic runs (scores chosen by the test, written through :class:`RunDirectory` in the run
directory format) cover what tiny random models cannot show: distinct fronts, three objectives,
mixed scorers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from mobench.cli import app
from mobench.config import MOD_13, RunSpec
from mobench.metrics import hypervolume, mean_inner_product, reference_point, summarize
from mobench.report import build_report, load_bench_results
from mobench.runs import RunDirectory, read_json

XSS = "<script>alert(1)</script>"
XSS_ERROR = 'RuntimeError: <img src=x onerror="alert(2)">'
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium is not installed (Debian package 'chromium'; .ci/run installs it)",
)


# ------------------------------------------------------------------------ parsing the page


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self) -> Any:
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        def match(n: Node) -> bool:
            if n.tag != tag:
                return False
            for key, value in attrs.items():
                have = n.attrs.get(key.rstrip("_"))
                if key.rstrip("_") == "class":
                    if value not in (have or "").split():
                        return False
                elif have != value:
                    return False
            return True

        return [n for n in self.iter() if match(n)]

    def find(self, tag: str, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}> in the page"
        return found[0]


class TreeBuilder(HTMLParser):
    """A small DOM from the standard library parser (void elements have no children)."""

    VOID: ClassVar[set[str]] = {
        "meta",
        "br",
        "img",
        "input",
        "link",
        "hr",
        "circle",
        "polygon",
        "line",
        "rect",
        "path",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, dict(attrs), self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def leaderboard_rows(page: Node, group: str = "g0") -> list[Node]:
    return page.find("table", id=f"{group}-table").find("tbody").find_all("tr")


# --------------------------------------------------------------------------- real runs


_REAL: dict[str, Path] = {}


def _real_runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real tiny runs, a failed copy, and an injected ``<script>`` answer (built once).

    ``unit_preset`` is function-scoped (it registers and unregisters the preset), so the runs
    are cached here rather than in a module-scoped fixture; every caller requests the preset
    first, so it is registered whenever a run could be made.
    """
    if "root" in _REAL:
        return _REAL["root"]
    from mobench import pipeline
    from mobench.registry import METHODS
    from mobench.resolve import resolve_spec

    root = tmp_path_factory.mktemp("report-runs")
    second = next((m for m in ("parm", "uniarm") if m in METHODS.names()), None)
    runs: list[tuple[str, dict[str, Any] | None]] = [
        ("genarm", None),
        (second, None) if second else ("genarm", {"method": {"lora_r": 4, "lora_alpha": 8}}),
    ]
    paths = []
    for method, overrides in runs:
        spec = resolve_spec("safety", method, "unit", overrides=overrides)
        paths.append(pipeline.execute_run(spec, root / spec.run_name).run_dir)
    # An untrusted answer: replace the text of one generation (scores stay as they were).
    gen_file = paths[0] / "generations.jsonl"
    records = [json.loads(line) for line in gen_file.read_text().splitlines()]
    records[0]["text"] = f"before {XSS} after"
    gen_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    # A failed run: a copy whose status says so, with an error message that is also hostile.
    failed = root / (paths[1].name + "-failed")
    shutil.copytree(paths[1], failed)
    (failed / "metrics.json").unlink()
    (failed / "status.json").write_text(json.dumps({"state": "failed", "error": XSS_ERROR}))
    _REAL["root"] = root
    return root


@pytest.fixture
def real_runs(unit_preset: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _real_runs_root(tmp_path_factory)


@pytest.fixture
def real_report(real_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the real runs, made through the CLI, with a benchmark results folder."""
    if "report" in _REAL:
        return _REAL["report"]
    out = tmp_path_factory.mktemp("report-out")
    bench = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(
        app, ["report", "--runs", str(real_runs), "--out", str(out), "--bench", str(bench)]
    )
    assert result.exit_code == 0, result.output
    assert "2 of 3 runs ranked" in result.output
    _REAL["report"] = out
    return out


def test_leaderboard_recomputes_hv_and_mip_with_one_common_reference_point(
    real_runs: Path, real_report: Path
) -> None:
    page = parse((real_report / "index.html").read_text())
    complete = sorted(p for p in real_runs.iterdir() if not p.name.endswith("-failed"))
    by_hash = {
        read_json(p / "metrics.json")["spec_hash"]: read_json(p / "metrics.json") for p in complete
    }
    z = reference_point([np.asarray(m["points"]) for m in by_hash.values()])

    rows = leaderboard_rows(page)
    assert len(rows) == 2
    assert sorted(r.attrs["data-method"] for r in rows) == sorted(
        read_json(p / "spec.json")["method"] for p in complete
    )
    assert {r.find_all("a")[0].text() for r in rows} == set(by_hash)
    for row in rows:
        m = by_hash[row.find_all("a")[0].text()]
        points, alphas = np.asarray(m["points"]), np.asarray(m["alphas"])
        hv_cell = row.find("td", class_="hv")
        mip_cell = row.find("td", class_="mip")
        assert float(hv_cell.attrs["data-value"]) == pytest.approx(
            hypervolume(points, z), rel=1e-12
        )
        assert float(mip_cell.attrs["data-value"]) == pytest.approx(
            mean_inner_product(alphas, points), rel=1e-12
        )
        # The common z is not the preset's (0, 0), so the recomputed HV differs from the run's own.
        assert float(hv_cell.attrs["data-value"]) != pytest.approx(m["hv"])
    # The common reference point is printed above the table, and data.json holds the same.
    data = read_json(real_report / "data.json")
    np.testing.assert_allclose(data["groups"][0]["reference_point"], z, rtol=0, atol=0)
    ref_text = page.find("h3", id="g0-leaderboard").parent.text()
    assert "z = (" + ", ".join(f"{v:.4f}" for v in z) + ")" in ref_text
    # Equal scorers in both runs: the table is comparable, so no warning banner.
    assert not page.find_all("div", class_="alert")


def test_untrusted_text_is_escaped(real_report: Path) -> None:
    html = (real_report / "index.html").read_text()
    page = parse(html)
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # The injected answer is text inside an answer cell, and the page has only its own script.
    answers = [n.text() for n in page.find_all("div", class_="answer")]
    assert any(XSS in a for a in answers)
    assert len(page.find_all("script")) == 1
    assert "alert" not in page.find("script").text()
    # The hostile error message of the failed run: text, no element, no event handler.
    assert not page.find_all("img")
    assert all(not k.startswith("on") for n in page.iter() for k in n.attrs)
    assert XSS_ERROR in page.find("table", class_="not-ranked").text()


def test_failed_run_is_listed_but_not_ranked(real_runs: Path, real_report: Path) -> None:
    page = parse((real_report / "index.html").read_text())
    failed = next(p for p in real_runs.iterdir() if p.name.endswith("-failed"))
    rows = page.find("table", class_="not-ranked").find("tbody").find_all("tr")
    assert len(rows) == 1
    assert failed.name in rows[0].text() and "failed" in rows[0].text()
    index = rows[0].attrs["data-run"]
    assert index not in {r.attrs["data-run"] for r in leaderboard_rows(page)}
    # Provenance still covers it (every run directory has a row with its spec hash).
    assert page.find("tr", id=f"run-{index}")
    data = read_json(real_report / "data.json")
    states = {r["run"]: (r["state"], r["ranked"]) for r in data["runs"]}
    assert states[failed.name] == ("failed", False)


def test_report_shows_prompts_timing_and_provenance_of_real_runs(
    real_runs: Path, real_report: Path
) -> None:
    page = parse((real_report / "index.html").read_text())
    run = sorted(p for p in real_runs.iterdir() if not p.name.endswith("-failed"))[0]
    timing, env = read_json(run / "timing.json"), read_json(run / "env.json")
    # Samples: one option per test prompt; the recorded prompt text is shown.
    split = read_json(run / "split.json")
    options = page.find("select", class_="prompt-select").find_all("option")
    assert len(options) == 4
    assert all(o.text().startswith(pid + ": ") for o, pid in zip(options, split["test"][:4]))
    first = json.loads((run / "generations.jsonl").read_text().splitlines()[1])
    assert first["prompt"][-1]["content"].strip()[:30] in page.find("section", id="samples").text()
    # Timing: guided/unguided is not measured for these runs (no bench file, no timing field).
    timing_table = page.find("table", class_="timing")
    assert "not measured" in timing_table.text()
    values = [td.attrs.get("data-value") for td in timing_table.find_all("td")]
    assert str(timing["generate"]["s_per_512_tokens"]) in values
    # Provenance: git sha and library versions from env.json.
    prov = page.find("section", id="provenance").text()
    assert env["git_sha"][:12] in prov and env["packages"]["torch"] in prov


# ---------------------------------------------------------------------- synthetic runs


def front_cube(n_prompts: int, alphas: np.ndarray, shift: float, seed: int) -> np.ndarray:
    """Scores whose per-alpha means trace a concave trade-off curve, pushed out by ``shift``."""
    rng = np.random.default_rng(seed)
    t = alphas[:, 0]
    k = alphas.shape[1]
    means = np.stack([t, 1 - t**2] + [alphas[:, j] for j in range(2, k)], axis=1) + shift
    return means[None] + 0.05 * rng.standard_normal((n_prompts, *means.shape))


def write_run(
    root: Path,
    spec: RunSpec,
    cube: np.ndarray,
    *,
    method: str,
    fingerprint: str = "proxy-yesno:tiny",
    ratio: float | None = None,
    same_text_for_every_alpha: bool = False,
) -> Path:
    """A complete run directory in the run format, with the scores ``cube`` (P, A, K)."""
    spec = dataclasses.replace(spec, method=method, test_limit=cube.shape[0])
    run = RunDirectory.open(root / spec.run_name, spec)
    ids = [f"p{i}" for i in range(cube.shape[0])]
    run.write("split.json", {"train": [], "validation": [], "test": ids})
    run.write(
        "env.json", {"git_sha": "0" * 40, "date": "2026-01-01T00:00:00+00:00", "packages": {}}
    )
    run.append_generations(
        {
            "prompt_id": pid,
            "alpha_index": a,
            "alpha": list(spec.alphas[a]),
            "prompt": [{"role": "user", "content": f"question {pid}"}],
            "text": f"{method} answers {pid}"
            + ("" if same_text_for_every_alpha else f" at alpha {a}"),
            "num_tokens": 5,
            "finish_reason": "eos",
        }
        for pid in ids
        for a in range(len(spec.alphas))
    )
    run.append_scores(
        {
            "prompt_id": pid,
            "alpha_index": a,
            "objective": o,
            "value": float(cube[i, a, k]),
            "scorer": f"{fingerprint}:{o}",
        }
        for i, pid in enumerate(ids)
        for a in range(len(spec.alphas))
        for k, o in enumerate(spec.objectives)
    )
    metrics = summarize(
        cube, spec.alpha_array, np.asarray(spec.hv_ref_point), spec.objectives, n_boot=20
    )
    metrics.update(
        {"task": spec.task, "method": method, "preset": spec.preset, "spec_hash": spec.hash8}
    )
    run.write("metrics.json", metrics)
    generate = {
        "s_per_512_tokens": 10.0 + len(method),
        "tokens_per_s": 50.0,
        "batch_size": 8,
        "device": "cpu",
        "dtype": "float32",
        "peak_memory_mb": 500.0,
    }
    if ratio is not None:
        generate["guided_unguided_ratio"] = ratio
    run.write("timing.json", {"generate": generate, "train": {"trainable_parameters": 1234}})
    run.set_status("complete")
    return run.path


@pytest.fixture
def base_spec(unit_preset: Any) -> RunSpec:
    from mobench.resolve import resolve_spec

    return resolve_spec("safety", "genarm", "unit")


def test_mixed_scorers_are_flagged_and_not_ranked_against_each_other(
    base_spec: RunSpec, tmp_path: Path
) -> None:
    alphas = base_spec.alpha_array
    write_run(tmp_path / "runs", base_spec, front_cube(4, alphas, 0.0, 1), method="genarm")
    write_run(
        tmp_path / "runs",
        base_spec,
        front_cube(4, alphas, 0.1, 2),
        method="parm",
        fingerprint="beaver:other",
    )
    result = build_report(runs_root=tmp_path / "runs", out_dir=tmp_path / "out", n_boot=20)
    page = parse(result.index_html.read_text())
    alert = page.find("div", class_="alert")
    assert "different scorers" in alert.text() and "beaver:other" in alert.text()
    assert not page.find_all("td", class_="best")
    assert read_json(result.data_json)["groups"][0]["scorers_agree"] is False


def test_distinct_fronts_best_values_bench_ratio_and_three_objectives(
    base_spec: RunSpec, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    alphas = base_spec.alpha_array
    write_run(runs, base_spec, front_cube(4, alphas, 0.0, 1), method="genarm", ratio=1.8)
    write_run(runs, base_spec, front_cube(4, alphas, 0.15, 2), method="parm")
    write_run(runs, base_spec, front_cube(4, alphas, 0.05, 3), method="uniarm")
    three = dataclasses.replace(
        base_spec,
        task="helpful",
        objectives=("helpful", "harmless", "humor"),
        alphas=MOD_13,
        grid="mod13",
        hv_ref_point=(0.0, 0.0, 0.0),
    )
    write_run(runs, three, front_cube(3, three.alpha_array, 0.0, 4), method="genarm")
    write_run(runs, three, front_cube(3, three.alpha_array, 0.1, 5), method="parm")
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "tiny.json").write_text(
        json.dumps(
            {
                "preset": "unit",
                "dtype": "float32",
                "date": "2026-01-02",
                "results": [{"method": "parm", "guided_unguided_ratio": 1.25}],
            }
        )
    )
    (bench / "broken.json").write_text(json.dumps({"rows": []}))

    result = build_report(runs_root=runs, out_dir=tmp_path / "out", bench_dir=bench, n_boot=20)
    page = parse(result.index_html.read_text())
    data = read_json(result.data_json)
    assert [(g["task"], len(g["rows"])) for g in data["groups"]] == [("helpful", 2), ("safety", 3)]

    safety = next(g for g in data["groups"] if g["task"] == "safety")
    rows = leaderboard_rows(page, safety["id"])
    # The outermost front (parm, shifted furthest) has the largest HV and MIP: marked best.
    best_hv = [
        r.attrs["data-method"] for r in rows if "best" in r.find("td", class_="hv").attrs["class"]
    ]
    best_mip = [
        r.attrs["data-method"] for r in rows if "best" in r.find("td", class_="mip").attrs["class"]
    ]
    assert best_hv == ["parm"] and best_mip == ["parm"]

    # Timing: the ratio comes from the bench file (parm) only; a timing.json value is not
    # read (no run measures its own unguided decoding), so genarm's is not measured.
    timing_rows = page.find("table", id=f"{safety['id']}-timing-table").find("tbody").find_all("tr")
    timing = {
        tr.find_all("td")[0].text().strip(): tr.find_all("td")[3].text().strip()
        for tr in timing_rows
    }
    assert timing == {"genarm": "not measured", "parm": "1.25", "uniarm": "not measured"}
    assert "broken.json" in page.find("main").text()

    # Fronts: one 2-D plot for safety, three projections for the 3-objective task; each run's
    # front is drawn as a path in its method's colour, identical across plots.
    sections = page.find("section", id="fronts")
    figures = sections.find_all("figure")
    assert len(figures) == 1 + 3
    colours: dict[str, set[str]] = {}
    for fig in figures:
        for path in fig.find_all("path"):
            if path.attrs.get("fill") == "none":
                colours.setdefault(path.attrs["stroke"], set()).add("front")
    assert len(colours) == 3  # genarm, parm, uniarm staircases, one colour each
    # Every alpha of every run has a hover label with its alpha.
    titles = [t.text() for t in sections.find_all("title")]
    assert sum("alpha=(0.3, 0.7)" in t for t in titles) == 3


def test_base_point_steering_and_paired_differences_within_noise(
    base_spec: RunSpec, tmp_path: Path
) -> None:
    """A base row is a reference (its point shown, gains over it computed), every row shows its
    steering diagnostics, a flat front is flagged, and two fronts whose difference is within
    noise get no star: the paired table says so."""
    from mobench.metrics import paired_differences

    runs = tmp_path / "runs"
    alphas = base_spec.alpha_array
    rng = np.random.default_rng(11)
    prompt_noise = rng.normal(0, 0.4, size=(12, 1, 2))  # shared by every run: same prompts
    base_cube = np.repeat(prompt_noise + 0.3, len(alphas), axis=1)
    flat = base_cube + 0.02
    genarm = front_cube(12, alphas, 0.0, 1) + prompt_noise
    # parm: genarm's front moved out by exactly 0.01, plus answers of its own quality on each
    # prompt (sd 0.15, zero mean over the prompts): a lead far inside that noise
    own = rng.normal(0, 0.15, (12, 1, 2))
    parm = genarm + 0.01 + (own - own.mean(axis=0))
    write_run(runs, base_spec, base_cube, method="base", same_text_for_every_alpha=True)
    write_run(runs, base_spec, genarm, method="genarm")
    write_run(runs, base_spec, parm, method="parm")
    write_run(runs, base_spec, flat, method="uniarm", same_text_for_every_alpha=True)
    result = build_report(runs_root=runs, out_dir=tmp_path / "out", n_boot=200)
    data = read_json(result.data_json)
    page = parse(result.index_html.read_text())
    (group,) = data["groups"]
    rows = {row["method"]: row for row in group["rows"]}

    base_point = base_cube.mean(axis=(0, 1))
    assert group["base_point"] == pytest.approx(base_point.tolist())
    expected = np.linalg.norm(genarm.mean(axis=0) - base_point, axis=1)
    assert rows["genarm"]["gain_over_base"]["distance"] == pytest.approx(expected.tolist())
    assert "gain_over_base" not in rows["base"]

    assert rows["genarm"]["steering"]["steers"] and rows["parm"]["steering"]["steers"]
    assert not rows["uniarm"]["steering"]["steers"]
    assert not rows["base"]["steering"]["expected_to_steer"]
    warnings = page.find_all("div", class_="nosteer-warning")
    assert [w.attrs["data-run"] for w in warnings] == [str(rows["uniarm"]["index"])]
    table = {r.attrs["data-method"]: r for r in leaderboard_rows(page, group["id"])}
    assert "reference" in table["base"].text() and "no" in table["uniarm"].text()

    # paired table: every pair once; parm vs genarm recomputed directly, and within noise
    assert len(group["paired"]) == 6
    pair = next(p for p in group["paired"] if {p["a"], p["b"]} == {"parm", "genarm"})
    a_cube, b_cube = (parm, genarm) if pair["a"] == "parm" else (genarm, parm)
    z = np.asarray(group["reference_point"])
    direct = paired_differences(a_cube, b_cube, alphas, z, n_boot=200, seed=0)
    for metric in ("hv", "mip"):
        assert pair[metric]["diff"] == pytest.approx(direct[metric]["diff"])
        assert pair[metric]["ci"] == pytest.approx(direct[metric]["ci"])
    assert not pair["hv"]["distinguishable"] and not pair["mip"]["distinguishable"]
    # so neither metric gets a star, although parm's values are the largest
    assert group["best"] == {"hv": [], "mip": []} and not page.find_all("td", class_="best")
    paired_rows = page.find("table", id=f"{group['id']}-paired-table").find_all("tr")
    assert any("within noise" in r.text() for r in paired_rows)
    # the base is far from the steering fronts: that difference IS beyond noise
    vs_base = next(
        p for p in group["paired"] if "base" in (p["a"], p["b"]) and "genarm" in (p["a"], p["b"])
    )
    assert vs_base["mip"]["distinguishable"]


def test_rows_follow_the_papers_table_with_reference_rows_and_how_each_uses_the_base(
    base_spec: RunSpec, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    alphas = base_spec.alpha_array
    shifts = {"uniarm": 0.3, "mod": 0.1, "base": 0.0, "prompt": 0.05, "rs": 0.2, "genarm": 0.15}
    for seed, (method, shift) in enumerate(shifts.items()):
        write_run(runs, base_spec, front_cube(6, alphas, shift, seed), method=method)
    result = build_report(runs_root=runs, out_dir=tmp_path / "out", n_boot=50)
    (group,) = read_json(result.data_json)["groups"]
    page = parse(result.index_html.read_text())
    rows = leaderboard_rows(page, group["id"])
    assert [r.attrs["data-method"] for r in rows] == [
        "base", "prompt", "rs", "mod", "genarm", "uniarm"
    ]  # fmt: skip
    relation = {r.attrs["data-method"]: r.find("td", class_="relation").text() for r in rows}
    assert relation == {
        "base": "decodes the base",
        "prompt": "decodes the base",
        "rs": "replaces the base",
        "mod": "replaces the base",
        "genarm": "guides the base",
        "uniarm": "guides the base",
    }
    reference = [
        r.attrs["data-method"] for r in rows if "reference-row" in r.attrs.get("class", "")
    ]
    assert reference == ["base", "prompt"] and "(reference)" in rows[1].text()
    # the paired table still reads "a beats b": the higher-HV row of each pair first
    hv = {row["label"]: row["hv"] for row in group["rows"]}
    assert all(hv[p["a"]] >= hv[p["b"]] for p in group["paired"])
    assert len(group["paired"]) == 15


def test_bench_file_format_errors_are_reported(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text(json.dumps({"preset": "tiny", "results": [{"method": "x"}]}))
    results, warnings = load_bench_results(tmp_path)
    assert results == [] and len(warnings) == 2
    assert all("expected" in w for w in warnings)


def test_cli_report_user_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["report", "--runs", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    not_a_run = runner.invoke(app, ["report", str(tmp_path)])
    assert not_a_run.exit_code == 2 and "no spec.json" in not_a_run.output
    both = runner.invoke(app, ["report", str(tmp_path), "--runs", str(tmp_path)])
    assert both.exit_code == 2 and "not both" in both.output


# ------------------------------------------------------------------------------- browser


def chromium(url: str, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url`` with a fresh profile and console messages on stderr."""
    profile = tmp_path / f"profile-{uuid.uuid4().hex[:8]}"
    profile.mkdir()
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        *flags, url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


def console_messages(stderr: str) -> list[str]:
    """Every page console message (errors, CSP violations, logs) Chromium wrote to stderr."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@needs_chromium
def test_report_opens_in_chromium_without_console_errors(real_report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    done = chromium(
        (real_report / "index.html").resolve().as_uri(), tmp_path,
        "--window-size=1400,2600", "--hide-scrollbars", f"--screenshot={shot}",
    )  # fmt: skip
    assert console_messages(done.stderr) == []
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1400, 2600)
    if os.environ.get("MOBENCH_SCREENSHOT_DIR"):  # keep it (e.g. as a CI artifact)
        target = Path(os.environ["MOBENCH_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "report.png")


PROBE = """<script>
const out = {};
const table = document.querySelector("table.leaderboard");
const mip = Array.from(table.querySelectorAll("th")).find((th) => th.textContent.startsWith("MIP"));
mip.click();
out.desc = Array.from(table.tBodies[0].rows).map((r) => r.dataset.method);
mip.click();
out.asc = Array.from(table.tBodies[0].rows).map((r) => r.dataset.method);
const select = document.querySelector("select.prompt-select");
select.value = select.options[2].value;
select.dispatchEvent(new Event("change"));
out.visible = Array.from(document.querySelectorAll(".sample"))
  .filter((s) => s.dataset.group === select.dataset.group && !s.hidden).map((s) => s.id);
out.wanted = select.value;
document.body.insertAdjacentHTML("beforeend", "<pre id='probe'></pre>");
document.getElementById("probe").textContent = JSON.stringify(out);
</script>"""


@needs_chromium
def test_sorting_and_prompt_picker_work_in_chromium(base_spec: RunSpec, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    alphas = base_spec.alpha_array
    for shift, method in ((0.0, "genarm"), (0.15, "parm"), (0.05, "uniarm")):
        write_run(runs, base_spec, front_cube(4, alphas, shift, 7), method=method)
    result = build_report(runs_root=runs, out_dir=tmp_path / "out", n_boot=20)
    html = result.index_html.read_text()
    # The page only runs its own script (CSP by hash): the probe goes into a copy without it.
    head, _, rest = html.partition('<meta http-equiv="Content-Security-Policy"')
    probe_page = tmp_path / "out" / "probe.html"
    probe_page.write_text(head + rest.partition(">")[2].replace("</body>", PROBE + "</body>"))
    done = chromium(probe_page.as_uri(), tmp_path, "--dump-dom")
    assert console_messages(done.stderr) == []
    probe = json.loads(parse(done.stdout).find("pre", id="probe").text())
    assert probe["desc"] == ["parm", "uniarm", "genarm"]
    assert probe["asc"] == ["genarm", "uniarm", "parm"]
    assert probe["visible"] == [probe["wanted"]]


def test_shaded_front_area_is_the_hypervolume() -> None:
    """The 2-D plot's shaded region (the staircase closed at z) has exactly the HV as its area:
    METHODS §8.5's toy example, HV 15 with z = (0, 0) and 27 with z = (-1, -1)."""
    from mobench.report_plots import SeriesInput, scatter_plot

    alphas = np.array([[0, 1], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1, 0]])
    points = np.array([[1, 6], [2, 5], [3, 3], [2.5, 2], [5, 0.5]])
    for z, expected in (((0.0, 0.0), 15.0), ((-1.0, -1.0), 27.0)):
        series = SeriesInput("toy", "#000000", "circle", alphas, points)
        plot = scatter_plot([series], ["help", "harmless"], (0, 1), np.asarray(z), title="toy")
        numbers = [float(t) for t in plot.series[0].fill_path.replace("M", " ").replace(
            "L", " ").replace("Z", " ").split()]  # fmt: skip
        xs, ys = np.array(numbers[0::2]), np.array(numbers[1::2])
        area_px = 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
        x_scale = (plot.x.px_hi - plot.x.px_lo) / (plot.x.hi - plot.x.lo)
        y_scale = (plot.y.px_lo - plot.y.px_hi) / (plot.y.hi - plot.y.lo)
        area = area_px / (x_scale * y_scale)
        assert area == pytest.approx(expected, rel=1e-3)  # pixel coordinates carry 2 decimals
        assert area == pytest.approx(hypervolume(points, np.asarray(z)), rel=1e-3)
        # The dominated point (2.5, 2) is drawn hollow, the four front points filled.
        assert sorted(m.filled for m in plot.series[0].markers) == [False, True, True, True, True]
