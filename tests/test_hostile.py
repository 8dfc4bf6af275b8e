"""Hostile input and faults (issue 10): for every user mistake or broken file, exit != 0 and
one line naming the bad value and the fix; no traceback; nothing outside artifacts/ touched;
no earlier output lost; no MLflow run left RUNNING.

Most cases run in-process through pipeline.cli.run_stage on a copy of the shared tiny run
(tests/conftest.py). Set HOSTILE_TABLE=FILE to write the table of cases (case, exit code,
message, what was kept) as Markdown rows.
"""
from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import compile as compile_stage
from pipeline import convert, evaluate, report, trace
from pipeline.cli import run_stage
from tests.conftest import REPO

STAGES = {"trace": trace.run, "convert": convert.run, "compile": compile_stage.run,
          "evaluate": evaluate.run, "report": report.run}
TINY = ("model=tiny",)


# ----------------------------------------------------------------------------- harness

def snapshot(root: Path) -> dict[str, str]:
    """Digest of every file under root, except MLflow's own store files."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(("mlruns", "mlflow.db")) and ".tmp/" not in rel:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_states(db: Path) -> dict[str, int]:
    if not db.is_file():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status"))
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return {"unreadable store": 1}


class Work:
    """A working folder: artifacts/ (a copy of the tiny run, or empty), mlflow.db, and a
    victim/ folder outside artifacts/ that nothing may touch."""

    def __init__(self, root: Path, capsys, tiny_run: Path | None):
        self.root, self.capsys = root, capsys
        self.art = root / "artifacts"
        if tiny_run is not None:
            shutil.copytree(tiny_run / "artifacts", self.art, symlinks=True)
        (root / "victim").mkdir()
        (root / "victim" / "precious.txt").write_text("keep me\n")
        self.db = root / "mlflow.db"

    def argv(self, argv) -> list[str]:
        keys = {a.lstrip("+").split("=")[0] for a in argv}
        base = [f"paths.artifacts={self.art}", f"tracking.uri=sqlite:///{self.db}"]
        return [b for b in base if b.split("=")[0] not in keys] + list(argv)

    def run(self, stage: str, *argv: str) -> tuple[int, str]:
        self.capsys.readouterr()
        code = run_stage(stage, STAGES[stage], self.argv(argv))
        return code, self.capsys.readouterr().err


def check_outcome(work: Work, before: dict, code: int, err: str, expected: list[str]) -> str:
    """The issue's four promises; returns what was kept, for the table."""
    assert code != 0, err
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, err
    for needle in expected:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    after = snapshot(work.root)
    lost = [k for k, v in before.items() if after.get(k) != v]
    assert not lost, f"earlier output lost or changed: {lost[:5]}"
    outside = [k for k in set(after) - set(before) if not k.startswith("artifacts/")]
    assert not outside, f"written outside artifacts/: {outside}"
    states = run_states(work.db)
    assert not states.get("RUNNING"), states
    kept = f"all {len(before)} earlier files unchanged, victim/ untouched"
    if states:
        kept += ", MLflow runs: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return kept


def record(case: str, code: int, err: str, kept: str, root: Path | None = None) -> None:
    path = os.environ.get("HOSTILE_TABLE")
    if not path:
        return
    line = next((ln for ln in err.splitlines() if ln.startswith("error: ")), err.strip())
    if root is not None:
        line = line.replace(f"{root}/", "").replace(str(root), ".")
    msg = line[len("error: "):][:80].replace("|", "\\|")
    with open(path, "a") as fh:
        fh.write(f"| {case} | {code} | `{msg}` | {kept} |\n")


# ------------------------------------------------------------------------ case set-ups

def nan_checkpoint(w: Work) -> list[str]:
    from pipeline.models.edgesam import build_encoder

    model = build_encoder(width=0.25, out_chans=32)
    state = model.state_dict()
    first = next(k for k, v in state.items() if v.dtype.is_floating_point and v.dim() == 4)
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save(state, w.root / "nan.pt")
    return [f"model.checkpoint={w.root / 'nan.pt'}"]


def npz_with(value):
    def make(w: Work) -> list[str]:
        x = np.zeros((3, 1, 8, 32), np.float32)
        x[1, 0, 2, 3] = value
        np.savez(w.root / "bad.npz", x=x)
        return [f"model.data.file={w.root / 'bad.npz'}"]
    return make


def garbage_npz(w: Work) -> list[str]:
    (w.root / "bad.npz").write_bytes(b"PK\x03\x04 this is not a zip")
    return [f"model.data.file={w.root / 'bad.npz'}"]


def image_folder(kind: str):
    def make(w: Work) -> list[str]:
        folder = w.root / "images"
        folder.mkdir()
        if kind == "text":
            (folder / "photo.png").write_text("not an image\n")
        return [f"model.data.folder={folder}"]
    return make


def broken_conf(edit):
    def make(w: Work, monkeypatch) -> list[str]:
        conf = w.root / "conf"
        shutil.copytree(REPO / "conf", conf)
        edit(conf)
        monkeypatch.setenv("PIPELINE_CONF_DIR", str(conf))
        return []
    return make


def damage(rel: str, how: str):
    def make(w: Work) -> list[str]:
        path = w.art / rel
        if how == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif how == "garbage":
            path.write_bytes(b"\x00garbage\xff" * 50)
        elif how == "delete":
            path.unlink()
        elif how == "text":
            path.write_text("{ not json")
        return []
    return make


def stale_upstream(rel: str, key: str):
    def make(w: Work) -> list[str]:
        import json

        path = w.art / rel / "lineage.json"
        data = json.loads(path.read_text())
        data["upstream"][key] = "0123456789abcdef"
        path.write_text(json.dumps(data, indent=2) + "\n")
        return []
    return make


def foreign_folder(w: Work) -> list[str]:
    (w.art / "convert" / "mine").mkdir(parents=True)
    (w.art / "convert" / "mine" / "notes.txt").write_text("mine\n")
    return []


def artifacts_file(w: Work) -> list[str]:
    (w.root / "afile").write_text("a file, not a folder\n")
    return [f"paths.artifacts={w.root / 'afile'}"]


def db_directory(w: Work) -> list[str]:
    w.db.mkdir()
    (w.db / "inside.txt").write_text("x\n")
    return []


def db_garbage(w: Work) -> list[str]:
    w.db.write_bytes(b"this is not sqlite" * 100)
    return []


def http_server(status: int, body: bytes):
    def make(w: Work, monkeypatch) -> list[str]:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(status)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        w.cleanup = server.shutdown
        return [f"tracking.uri=http://127.0.0.1:{server.server_port}"]
    return make


def seed_conf(text: str, name: str):
    return lambda conf: (conf / name).write_text((conf / name).read_text() + text)


# (case, stage, argv, set-up or None, needs the tiny run's artifacts, expected substrings)
CASES = [
    # names that would become folders outside artifacts/ or replace every variant
    ("empty precision.name", "convert", [*TINY, "precision=fp16", "precision.name="], None, True,
     ["precision.name=''", "not a safe name"]),
    ("precision.name=../../victim", "convert", [*TINY, "precision=fp16", "precision.name=../../victim"],
     None, True, ["'../../victim'", "no '/', no '..'"]),
    ("precision.name with a slash", "compile", [*TINY, "precision=fp16", "precision.name=a/b"], None,
     True, ["'a/b'", "not a safe name"]),
    ("precision.name=..", "evaluate", [*TINY, "precision=fp16", "precision.name=.."], None, True,
     ["'..'", "not a safe name"]),
    ("model.name=../x", "trace", [*TINY, "model.name=../x"], None, False, ["model.name='../x'"]),
    ("paths.artifacts=/etc/passwd", "trace", [*TINY, "paths.artifacts=/etc/passwd"], None, False,
     ["'/etc/passwd' is a file", "paths.artifacts"]),
    ("paths.artifacts is a file", "convert", [*TINY], artifacts_file, False, ["is a file, not a folder"]),
    ("output folder holds foreign files", "convert", [*TINY, "precision=fp16", "precision.name=mine"],
     foreign_folder, True, ["did not write", "move"]),
    # typos and types: refused at composition by the schema
    ("+precsion=fp16", "convert", [*TINY, "+precsion=fp16"], None, False,
     ["unknown key 'precsion'", "did you mean 'precision'"]),
    ("precsion=fp16", "convert", [*TINY, "precsion=fp16"], None, False, ["did you mean 'precision'"]),
    ("+model.sed=1", "trace", [*TINY, "+model.sed=1"], None, False, ["did you mean 'model.seed'"]),
    ("precision.fp32_opz", "convert", [*TINY, "precision.fp32_opz=[pow]"], None, False,
     ["unknown key 'precision.fp32_opz'", "did you mean 'precision.fp32_ops'"]),
    ("precision.fp32_ops=pow", "convert", [*TINY, "precision.fp32_ops=pow"], None, False,
     ["precision.fp32_ops", "'precision.fp32_ops=[pow]'"]),
    ("min_snr_db=twenty", "convert", [*TINY, "precision=auto", "precision.target.min_snr_db=twenty"],
     None, False, ["precision.target.min_snr_db", "'twenty'", "Float"]),
    ("report.fp16_limit=abc", "report", [*TINY, "report.fp16_limit=abc"], None, True,
     ["report.fp16_limit", "'abc'", "Float"]),
    ("shape with abc", "trace", [*TINY, "model.inputs=[{name: image, shape: [1, 3, abc, 64]}]"], None,
     False, ["shape[2]", "'abc'", "Integer", "model.inputs="]),
    ("model.samples=many", "trace", ["model=custom", "model.samples=many"], None, False,
     ["model.samples", "Integer"]),
    ("evaluate.diagnostics=maybe", "evaluate", [*TINY, "evaluate.diagnostics=maybe"], None, True,
     ["evaluate.diagnostics", "'maybe'", "bool"]),
    ("search.max_evaluations=1.5", "convert", [*TINY, "search.max_evaluations=1.5"], None, False,
     ["search.max_evaluations", "Integer"]),
    ("tracking.enabled=perhaps", "evaluate", [*TINY, "tracking.enabled=perhaps"], None, True,
     ["tracking.enabled"]),
    ("new builder key without +", "trace", ["model=custom", "model.args.depth=3"], None, False,
     ["model.args.depth", "+model.args.depth=VALUE"]),
    ("unknown builder argument", "trace", ["model=custom", "+model.args.depth=3"], None, False,
     ["unexpected keyword argument 'depth'", "model.args"]),
    ("unknown model", "trace", ["model=nope"], None, False, ["unknown model 'nope'", "choose one of"]),
    ("unknown precision", "convert", [*TINY, "precision=fp8"], None, False, ["unknown precision 'fp8'"]),
    ("unknown backend", "compile", [*TINY, "backend=tpu"], None, False, ["unknown backend 'tpu'"]),
    ("unknown trace.method", "trace", [*TINY, "trace.method=onnx"], None, False,
     ["unknown trace.method 'onnx'"]),
    ("unknown emulator mode", "evaluate", [*TINY, "precision=fp16", "evaluate.emulator_mode=fast"],
     None, True, ["evaluate.emulator_mode 'fast'"]),
    ("unknown compute", "convert", [*TINY, "precision=mixed", "precision.compute=fp17"], None, True,
     ["unknown compute 'fp17'"]),
    ("unknown deployment target", "convert", [*TINY, "precision=fp16",
                                              "convert.minimum_deployment_target=iOS99"],
     None, True, ["'iOS99'", "choose one of"]),
    ("bad override syntax", "trace", [*TINY, "precision=="], None, False, ["bad override"]),
    # broken files in conf/
    ("broken YAML in conf/model", "trace", [*TINY], broken_conf(
        lambda c: (c / "model" / "tiny.yaml").write_text("name: tiny\ninputs: [unclosed\n")),
     False, ["YAML syntax error", "tiny.yaml", "line"]),
    ("tab in conf/precision YAML", "convert", [*TINY, "precision=fp16"], broken_conf(
        lambda c: (c / "precision" / "fp16.yaml").write_text("name: fp16\n\tcompute: fp16\n")),
     False, ["YAML syntax error", "fp16.yaml"]),
    ("wrong type in conf/config.yaml", "trace", [*TINY], broken_conf(
        lambda c: (c / "config.yaml").write_text(
            (c / "config.yaml").read_text().replace("fp16_limit: 65504.0", "fp16_limit: lots"))),
     False, ["report.fp16_limit", "conf/config.yaml", "Float"]),
    ("old-style model key in conf/model", "trace", [*TINY], broken_conf(seed_conf("width: 0.5\n",
                                                                                 "model/tiny.yaml")),
     False, ["unknown key 'model.width'", "model.args"]),
    # seeds and data
    ("model.seed on pretrained minilm", "trace", ["model=minilm", "model.seed=5"], None, False,
     ["model.seed=5 would change nothing", "drop model.seed"]),
    ("model.seed with a checkpoint", "trace", ["model=custom", "model.seed=5",
                                               "model.checkpoint=x.pt", "model.data.file=x.npz"],
     None, False, ["model.seed=5", "model.checkpoint"]),
    ("data.count=0", "trace", [*TINY, "model.data.count=0"], None, False,
     ["model.data.count=0", "at least one"]),
    ("model.samples=0", "trace", ["model=custom", "model.samples=0"], None, False,
     ["model.samples=0", "at least one"]),
    ("100000x100000 image", "trace", [*TINY, "model.inputs=[{name: image, shape: [1, 3, 100000, 100000]}]"],
     None, False, ["GiB", "available", "smaller"]),
    ("huge custom input", "trace", ["model=custom", "model.inputs=[{name: x, shape: [100000, 100000]}]"],
     None, False, ["GiB", "available"]),
    ("negative shape", "trace", ["model=custom", "model.inputs=[{name: x, shape: [1, -8, 32]}]"], None,
     False, ["must be all positive"]),
    ("NaN in input file", "trace", ["model=custom"], npz_with(np.nan), False,
     ["NaN or Inf", "sample(s) [1]", "bad.npz"]),
    ("Inf in input file", "trace", ["model=custom"], npz_with(np.inf), False, ["NaN or Inf"]),
    ("garbage inputs .npz", "trace", ["model=custom"], garbage_npz, False,
     ["bad.npz", "not a readable .npz"]),
    ("NaN checkpoint", "trace", [*TINY], nan_checkpoint, False,
     ["PyTorch reference output 'image_embeddings' is 100.0% NaN/Inf", "model.checkpoint"]),
    ("text file named .png", "trace", [*TINY], image_folder("text"), False,
     ["photo.png", "cannot be read", "replace it"]),
    ("empty image folder", "trace", [*TINY], image_folder("empty"), False, ["no images"]),
    ("missing checkpoint", "trace", [*TINY, "model.checkpoint=nope.pt"], None, False, ["not found"]),
    ("builder that does not import", "trace", ["model=custom", "model._target_=no_pkg.build"], None,
     False, ["does not import"]),
    # broken artifacts: named with the command that rebuilds them
    ("truncated weight.bin", "compile", [*TINY, "precision=fp16"],
     damage("convert/fp16/model.mlpackage/Data/com.apple.CoreML/weights/weight.bin", "truncate"),
     True, ["weight.bin", "damaged", "pipeline.convert model=tiny precision=fp16"]),
    ("garbage model.mlmodel", "evaluate", [*TINY, "precision=fp16"],
     damage("convert/fp16/model.mlpackage/Data/com.apple.CoreML/model.mlmodel", "garbage"),
     True, ["model.mlmodel", "pipeline.convert"]),
    ("missing Manifest.json", "compile", [*TINY, "precision=fp16"],
     damage("convert/fp16/model.mlpackage/Manifest.json", "delete"), True,
     ["Manifest.json' is missing", "pipeline.convert"]),
    ("corrupt inputs.npz", "evaluate", [*TINY, "precision=fp16"], damage("trace/inputs.npz", "garbage"),
     True, ["inputs.npz", "pipeline.trace"]),
    ("corrupt reference.npz", "evaluate", [*TINY, "precision=fp16"],
     damage("trace/reference.npz", "truncate"), True, ["reference.npz", "pipeline.trace"]),
    ("corrupt manifest.json", "convert", [*TINY, "precision=fp16"], damage("trace/manifest.json", "text"),
     True, ["manifest.json", "pipeline.trace"]),
    ("corrupt model.pt", "convert", [*TINY, "precision=fp16"], damage("trace/model.pt", "truncate"),
     True, ["model.pt", "pipeline.trace"]),
    ("missing lineage.json", "convert", [*TINY, "precision=fp16"], damage("trace/lineage.json", "delete"),
     True, ["lineage.json' is missing", "pipeline.trace"]),
    ("corrupt lineage.json", "compile", [*TINY, "precision=fp16"],
     damage("convert/fp16/lineage.json", "text"), True, ["lineage.json' is damaged", "pipeline.convert"]),
    ("missing compile.json", "evaluate", [*TINY, "precision=fp16"], damage("compile/fp16/compile.json",
                                                                          "delete"),
     True, ["compile.json' is missing", "pipeline.compile"]),
    ("corrupt evaluate metrics", "report", [*TINY], damage("evaluate/fp16/metrics.json", "text"), True,
     ["metrics.json", "pipeline.evaluate model=tiny precision=fp16"]),
    # lineage: inputs that do not match what was asked for
    ("evaluate another model than traced", "evaluate", ["precision=fp16"], None, True,
     ["holds model 'tiny', you asked for 'edgesam'", "pipeline.trace model=edgesam", "model=tiny"]),
    ("convert another model than traced", "convert", ["model=minilm", "precision=fp16"], None, True,
     ["holds model 'tiny', you asked for 'minilm'"]),
    ("report another model than traced", "report", ["model=custom"], None, True,
     ["holds model 'tiny', you asked for 'custom'"]),
    ("trace override not given later", "convert", [*TINY, "precision=fp16", "model.args.width=0.5"],
     None, True, ["model.args.width=0.25", "you asked for model.args.width=0.5"]),
    ("precision changed since convert", "evaluate", [*TINY, "precision=fp16", "precision.compute=fp32"],
     None, True, ["precision.compute='fp16'", "'fp32'", "pipeline.convert model=tiny precision=fp16"]),
    ("package from an earlier trace", "evaluate", [*TINY, "precision=fp16"],
     stale_upstream("convert/fp16", "trace"), True,
     ["made from trace 0123456789abcdef", "but trace is now", "pipeline.convert"]),
    ("compiled from an earlier package", "evaluate", [*TINY, "precision=fp16"],
     stale_upstream("compile/fp16", "convert"), True, ["made from convert 0123456789abcdef"]),
    ("stage order: convert before trace", "convert", [*TINY, "precision=fp16"], None, False,
     ["run `python -m pipeline.trace` first"]),
    # the MLflow store
    ("mlflow.db is a directory", "evaluate", [*TINY, "precision=fp16"], db_directory, True,
     ["is a directory", "tracking.uri"]),
    ("garbage mlflow.db", "evaluate", [*TINY, "precision=fp16"], db_garbage, True,
     ["not a readable SQLite database", "move"]),
    ("URI answers but is not MLflow (404)", "evaluate", [*TINY, "precision=fp16"],
     http_server(404, b"no"), True, ["answers, but not as an MLflow server", "HTTP 404"]),
    ("URI answers HTML, not MLflow", "report", [*TINY], http_server(200, b"<html>hi</html>"), True,
     ["not as an MLflow server", "<html"]),
    ("URI that does not answer", "evaluate", [*TINY, "precision=fp16", "tracking.uri=http://127.0.0.1:9"],
     None, True, ["does not answer"]),
    ("unsupported URI scheme", "evaluate", [*TINY, "precision=fp16", "tracking.uri=ftp://host/x"], None,
     True, ["unsupported MLflow tracking URI"]),
]


@pytest.fixture
def work(tmp_path, capsys, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    return lambda with_run: Work(tmp_path, capsys, request.getfixturevalue("tiny_run")
                                 if with_run else None)


@pytest.mark.parametrize("case,stage,argv,setup,with_run,expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(work, monkeypatch, case, stage, argv, setup, with_run, expected):
    import inspect

    w = work(with_run)
    extra = []
    if setup is not None:
        extra = setup(w, monkeypatch) if len(inspect.signature(setup).parameters) == 2 else setup(w)
    before = snapshot(w.root)
    try:
        code, err = w.run(stage, *argv, *extra)
    finally:
        getattr(w, "cleanup", lambda: None)()
    kept = check_outcome(w, before, code, err, expected)
    record(case, code, err, kept, w.root)


# ------------------------------------------------------------------- faults mid-run

def interrupt_on(monkeypatch, method: str, sig: int) -> None:
    """A real signal to this process at a chosen point of the MLflow logging."""
    from mlflow.tracking import MlflowClient

    original = getattr(MlflowClient, method)

    def hit(self, *args, **kwargs):
        os.kill(os.getpid(), sig)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(MlflowClient, method, hit)


@pytest.mark.parametrize("case,sig,code_expected,status", [
    ("SIGINT during MLflow logging", signal.SIGINT, 130, "KILLED"),
    ("SIGTERM during MLflow logging", signal.SIGTERM, 143, "KILLED"),
])
def test_signal_during_logging_closes_the_run(work, monkeypatch, case, sig, code_expected, status):
    w = work(True)
    before = snapshot(w.root)
    interrupt_on(monkeypatch, "log_batch", sig)
    code, err = w.run("evaluate", *TINY, "precision=fp16")
    assert code == code_expected
    kept = check_outcome(w, before, code, err, ["interrupted" if sig == signal.SIGINT else "terminated",
                                                "KILLED"])
    assert run_states(w.db) == {status: 1}
    record(case, code, err, kept, w.root)


def test_failure_during_logging_marks_the_run_failed(work):
    """mlruns/ is a file: the artifact upload fails after the run was created."""
    w = work(True)
    (w.root / "mlruns").write_text("not a folder\n")
    before = snapshot(w.root)
    code, err = w.run("evaluate", *TINY, "precision=fp16")
    kept = check_outcome(w, before, code, err, ["mlruns"])
    assert run_states(w.db) == {"FAILED": 1}
    record("mlruns/ is a file (fails mid-logging)", code, err, kept, w.root)


def test_run_orphaned_by_sigkill_is_closed_by_the_next(work):
    from mlflow.tracking import MlflowClient

    from pipeline import tracking

    w = work(True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    client = MlflowClient(tracking_uri=f"sqlite:///{w.db}")
    exp = client.create_experiment("tiny")
    orphan = client.create_run(exp, tags={tracking.RUN_PID: str(dead.pid),
                                          tracking.RUN_HOST: __import__("socket").gethostname()})
    elsewhere = client.create_run(exp, tags={tracking.RUN_PID: str(dead.pid),
                                             tracking.RUN_HOST: "another-host"})
    code, err = w.run("evaluate", *TINY, "precision=fp16")
    assert code == 0, err
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"  # not ours to judge
    client.set_terminated(elsewhere.info.run_id, "KILLED")


def test_locked_store_is_refused_before_the_work(work):
    w = work(True)
    assert w.run("evaluate", *TINY, "precision=fp32")[0] == 0  # a store with one run
    before = snapshot(w.root)
    holder = sqlite3.connect(str(w.db))
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, err = w.run("evaluate", *TINY, "precision=fp16")
    finally:
        holder.rollback()
        holder.close()
    kept = check_outcome(w, before, code, err, ["is locked by another process"])
    record("mlflow.db locked by another process", code, err, kept, w.root)


# --------------------------------------------------------- what should work, does

def test_seed_seeds_the_synthetic_weights(tmp_path, capsys):
    refs = {}
    for seed in (0, 5):
        art = tmp_path / f"s{seed}"
        assert run_stage("trace", trace.run, [*TINY, f"model.seed={seed}", f"paths.artifacts={art}",
                                              "tracking.enabled=false"]) == 0
        with np.load(art / "trace" / "reference.npz") as ref:
            refs[seed] = ref["image_embeddings"]
    assert np.abs(refs[0] - refs[5]).max() > 1e-3


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from pipeline.models.edgesam import PIXEL_MEAN, PIXEL_STD, sample_images

    grey = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    batch = sample_images([{"name": "image", "shape": [1, 3, 64, 64]}], folder=str(tmp_path))
    pixels = batch["image"][0, 0, 0] * PIXEL_STD[0] + PIXEL_MEAN[0]  # back to 0..255, red
    assert pixels.min() < 5 and pixels.max() > 250
    assert 0.4 < float(np.mean(pixels > 127.5)) < 0.6  # a ramp, not clipped to white


@pytest.mark.slow
@pytest.mark.parametrize("method", ["jit", "export"])
def test_tracing_twice_gives_identical_tracked_bytes(tmp_path, method):
    """Two real processes, as `dvc repro` runs them (in one process torch.jit mangles the
    names of a class it traces twice), the second from a copy of the code in another, longer
    folder, as another clone is: TorchScript's debug records named every source file's
    absolute path, so model.pt (and dvc.lock) depended on where the repo was checked out;
    torch.export's nodes carried the same paths and graph ids that are memory addresses."""
    import shutil

    import torch

    elsewhere = tmp_path / "another-clone-of-the-repository"
    for part in ("pipeline", "conf"):
        shutil.copytree(REPO / part, elsewhere / part, ignore=shutil.ignore_patterns("__pycache__"))
    digests = []
    for i, code in ((1, REPO), (2, elsewhere)):
        art = tmp_path / f"a{i}"
        subprocess.run([sys.executable, "-m", "pipeline.trace", *TINY, f"paths.artifacts={art}",
                        f"trace.method={method}", "tracking.enabled=false"], cwd=code,
                       check=True, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=str(code)), timeout=300)
        digests.append(snapshot(art))
    assert digests[0] == digests[1] and "trace/lineage.json" in digests[0]
    if method == "export":
        assert b"stack_trace" not in (tmp_path / "a2" / "trace" / "model.pt2").read_bytes()
        return
    assert b"debug_pkl" not in (tmp_path / "a2" / "trace" / "model.pt").read_bytes()
    traced = torch.jit.load(str(tmp_path / "a2" / "trace" / "model.pt"))  # still loads, same numbers
    # read at jit.save's format version: at an older one torch wraps each aten::div (tiny's
    # LayerNorm2d) in an upgrader's `if`, which coremltools converts to `cond`
    assert "aten::div" in str(traced.inlined_graph) and "prim::If" not in str(traced.inlined_graph)
    with np.load(tmp_path / "a2" / "trace" / "inputs.npz") as x, \
            np.load(tmp_path / "a2" / "trace" / "reference.npz") as ref:
        out = traced(torch.from_numpy(x["image"][0]))[0].detach().numpy()
        np.testing.assert_allclose(out, ref[ref.files[0]][0], rtol=1e-4, atol=1e-5)  # eager vs jit


def test_package_identifiers_come_from_content(tiny_run):
    import json
    import uuid

    package = tiny_run / "artifacts" / "convert" / "fp16" / "model.mlpackage"
    manifest = json.loads((package / "Manifest.json").read_text())
    ids = list(manifest["itemInfoEntries"])
    assert ids and all(uuid.UUID(i).version == 5 for i in ids)
    assert manifest["rootModelIdentifier"] in ids
    spec = (package / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes()
    assert b"conversion_date" not in spec


# ------------------------------------------------- real processes: the file system

def unshare_ok() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_unshare = pytest.mark.skipif(not unshare_ok(), reason="needs `unshare -m` (mount namespaces) "
                                   "to make a read-only or full file system")


def in_namespace(tmp_path: Path, mount: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run a stage in a private mount namespace where ``mount`` prepares the file system."""
    cmd = " ".join(f"'{a}'" for a in argv)
    script = f"{mount} && cd '{tmp_path}' && exec '{sys.executable}' -m {cmd}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
@needs_unshare
@pytest.mark.parametrize("case,mount,stage,expected", [
    ("read-only artifacts folder", "mount --bind -o ro {art} {art}", "convert",
     ["is not writable", "paths.artifacts"]),
    ("full disk (checked before the work)", "mount -t tmpfs -o size=64k tmpfs {out}", "trace",
     ["not enough free space", "MiB free", "paths.artifacts"]),
    ("read-only mlruns/", "mount --bind -o ro {root}/mlruns {root}/mlruns", "evaluate",
     ["mlruns", "not writable"]),
])
def test_file_system_faults(tmp_path, tiny_run, case, mount, stage, expected):
    shutil.copytree(tiny_run / "artifacts", tmp_path / "artifacts")
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "out").mkdir()
    art = tmp_path / ("out" if "disk" in case else "artifacts")
    before = snapshot(tmp_path)
    proc = in_namespace(tmp_path, mount.format(art=tmp_path / "artifacts", out=tmp_path / "out",
                                               root=tmp_path),
                        [f"pipeline.{stage}", *TINY, "precision=fp16", f"paths.artifacts={art}",
                         f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    w = Work.__new__(Work)
    w.root, w.db = tmp_path, tmp_path / "mlflow.db"
    kept = check_outcome(w, before, proc.returncode, proc.stderr, expected)
    record(case, proc.returncode, proc.stderr, kept, tmp_path)


@pytest.mark.slow
def test_sigint_of_a_real_process_keeps_nothing_half_written(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    (tmp_path / "victim").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.trace", "model=edgesam",
                             f"paths.artifacts={tmp_path / 'a'}", "tracking.enabled=false"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "samples of image" in line:
            proc.send_signal(signal.SIGINT)
            break
    out = "".join(lines) + proc.stdout.read()
    proc.wait(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in out, out
    assert not (tmp_path / "a" / "trace").exists()
    assert not list((tmp_path / "a").glob(".trace.*.tmp"))
    record("SIGINT of a real trace process", proc.returncode, out, "no trace/ folder, no temporary left")
