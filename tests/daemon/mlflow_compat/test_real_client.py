"""The real `mlflow` client (mlflow-skinny) against the daemon's own port (MLflow's APIs
mounted on its HTTP layer); then the same runs read back through tracklog's own client and
REST API, which must agree with what MLflow's client reads.

Each test runs against tracklog (`[tracklog]`) and, when `$TRACKLOG_MLFLOW_SERVER` names an
`mlflow` command (the full `mlflow` package, which has the server), against a real
`mlflow server` too (`[mlflow-server]`), so the tests show they describe MLflow's behaviour
and not only ours. The checks of what tracklog itself holds run only in the first.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tracklog.daemon.server import Daemon, Settings
from tracklog.protocol.messages import Query

mlflow = pytest.importorskip("mlflow")
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

_T = TypeVar("_T")
WAIT = 120.0
SERVER_START_TIMEOUT = 120.0


class Target:
    """Where the client logs: tracklog (with its daemon, to look inside) or an MLflow server."""

    def __init__(self, uri: str, daemon: Daemon | None) -> None:
        self.uri = uri
        self.daemon = daemon

    async def tracklog_run(self, run_id: str) -> dict[str, Any] | None:
        """The run as tracklog's `run` query has it (None against an MLflow server)."""
        if self.daemon is None:
            return None
        row: dict[str, Any] = (await self.daemon.readers.query(Query(q="run", run=run_id))).rows[0]
        return row


def _bench_mlflow_server() -> Any:
    """bench/_mlflow_server.py, loaded by its path: bench/mlflow_compat.py starts its server
    the same way (waiting for the line saying it listens)."""
    path = Path(__file__).parents[3] / "bench" / "_mlflow_server.py"
    spec = importlib.util.spec_from_file_location("bench_mlflow_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_servers = _bench_mlflow_server()


def _mlflow_server(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`mlflow server` ($TRACKLOG_MLFLOW_SERVER) on a free loopback port with an SQLite
    store, once it says it listens."""
    started: tuple[subprocess.Popen[bytes], str] = _servers.start_mlflow_server(
        os.environ["TRACKLOG_MLFLOW_SERVER"], tmp_path, SERVER_START_TIMEOUT
    )
    return started


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    _servers.stop_mlflow_server(proc)


@pytest.fixture(params=["tracklog", "mlflow-server"])
async def target(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Target]:
    server: subprocess.Popen[bytes] | None = None
    daemon: Daemon | None = None
    if request.param == "tracklog":
        daemon = Daemon(Settings(db=tmp_path / "m.db", port=0, host="127.0.0.1"))
        await daemon.start()
        uri = f"http://127.0.0.1:{daemon.port}"
    else:
        if not os.environ.get("TRACKLOG_MLFLOW_SERVER"):
            pytest.skip("set TRACKLOG_MLFLOW_SERVER to an `mlflow` command to run against a real server")
        server, uri = await asyncio.to_thread(_mlflow_server, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(uri)
    # The fluent API remembers the experiment set last, across tests: start each on none.
    # (set_experiment also sets MLFLOW_EXPERIMENT_ID in the environment.)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    try:
        yield Target(uri, daemon)
    finally:
        if mlflow.active_run() is not None:
            await asyncio.to_thread(mlflow.end_run)
        if server is not None:
            await asyncio.to_thread(_stop_server, server)
        if daemon is not None:
            await asyncio.wait_for(daemon.stop(), WAIT)


async def off_loop(fn: Callable[..., _T], *args: Any) -> _T:
    """Run blocking client code in a thread: the handlers need the event loop free."""
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), WAIT)


async def test_the_fluent_api_logs_a_run_that_tracklog_sees(target: Target) -> None:
    def fluent() -> str:
        mlflow.set_experiment("fluent")
        with mlflow.start_run(run_name="first") as run:
            mlflow.log_param("lr", 0.01)
            mlflow.log_params({"bs": 32, "opt": "adam"})
            for step in range(3):
                mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            mlflow.log_metrics({"acc": 0.5, "f1": 0.4}, step=2)
            mlflow.set_tags({"team": "nlp", "stage": "dev"})
            mlflow.set_tag("note", "x")
            run_id: str = run.info.run_id
        return run_id

    run_id = await off_loop(fluent)
    client = MlflowClient()
    run = await off_loop(client.get_run, run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert run.data.params == {"lr": "0.01", "bs": "32", "opt": "adam"}
    assert run.data.metrics == {"loss": 1.0 / 3, "acc": 0.5, "f1": 0.4}
    assert run.data.tags["team"] == "nlp" and run.data.tags["mlflow.runName"] == "first"
    history = await off_loop(client.get_metric_history, run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]

    tracklog_run = await target.tracklog_run(run_id)
    if target.daemon is None:
        return
    assert tracklog_run is not None
    assert tracklog_run["status"] == "completed" and tracklog_run["name"] == "first"
    assert tracklog_run["config"] == {"lr": "0.01", "bs": "32", "opt": "adam"}
    assert tracklog_run["metrics"]["loss"]["count"] == 3
    experiment = (await target.daemon.readers.query(Query(q="experiments", names=["fluent"]))).rows[0]
    assert tracklog_run["experiment"] == experiment["id"]


async def test_asynchronous_logging_delivers_every_metric(target: Target) -> None:
    def fluent_async() -> str:
        with mlflow.start_run() as run:
            for step in range(200):
                mlflow.log_metric("m", float(step), step=step, synchronous=False)
            mlflow.flush_async_logging()
            run_id: str = run.info.run_id
        return run_id

    run_id = await off_loop(fluent_async)
    tracklog_run = await target.tracklog_run(run_id)
    if tracklog_run is not None:
        summary = tracklog_run["metrics"]["m"]
        assert summary["count"] == 200 and summary["max"] == 199.0 and summary["max_step"] == 199
    # Batches may arrive out of order; MLflow's latest value is the highest step's, not the last sent.
    run = await off_loop(MlflowClient().get_run, run_id)
    assert run.data.metrics == {"m": 199.0}
    history = await off_loop(MlflowClient().get_metric_history, run_id, "m")
    assert sorted(m.step for m in history) == list(range(200))


async def test_the_client_api_creates_logs_searches_and_deletes(target: Target) -> None:
    client = MlflowClient()

    def scenario() -> None:
        experiment_id = client.create_experiment("client-api", tags={"k": "v"})
        with pytest.raises(MlflowException) as info:
            client.create_experiment("client-api")
        assert info.value.error_code == "RESOURCE_ALREADY_EXISTS"
        ids = []
        for i in range(5):
            run = client.create_run(experiment_id, run_name=f"r{i}", tags={"i": str(i)})
            client.log_batch(
                run.info.run_id,
                metrics=[Metric("acc", i / 10, 1_767_225_600_000 + i, 0)],
                params=[Param("lr", str(i))],
                tags=[RunTag("parity", "even" if i % 2 == 0 else "odd")],
            )
            client.set_terminated(run.info.run_id, "FINISHED" if i < 4 else "FAILED")
            ids.append(run.info.run_id)
        found = client.search_runs([experiment_id], "metrics.acc > 0.15 and tags.parity = 'even'")
        assert [r.info.run_name for r in found] == ["r4", "r2"]
        ordered = client.search_runs([experiment_id], order_by=["metrics.acc ASC"], max_results=2)
        assert [r.info.run_name for r in ordered] == ["r0", "r1"] and ordered.token
        rest = client.search_runs(
            [experiment_id], order_by=["metrics.acc ASC"], max_results=2, page_token=ordered.token
        )
        assert [r.info.run_name for r in rest] == ["r2", "r3"]
        failed = client.search_runs([experiment_id], "attributes.status = 'FAILED'")
        assert [r.info.run_id for r in failed] == [ids[4]]
        client.delete_run(ids[0])
        assert client.get_run(ids[0]).info.lifecycle_stage == "deleted"
        assert len(client.search_runs([experiment_id])) == 4
        client.restore_run(ids[0])
        assert len(client.search_runs([experiment_id])) == 5
        with pytest.raises(MlflowException) as info:
            client.log_param(ids[1], "lr", "changed")
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"
        with pytest.raises(MlflowException) as info:
            client.get_run("f" * 32)
        assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        assert client.get_experiment_by_name("nope") is None
        assert client.get_experiment(experiment_id).tags == {"k": "v"}

    await off_loop(scenario)


async def test_log_artifact_log_dict_and_load_dict_go_through_the_artifact_store(
    target: Target, tmp_path: Path
) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(bytes(range(256)) * 1000)

    def artifacts() -> tuple[str, str]:
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(source), artifact_path="model")
            mlflow.log_dict({"lr": 0.1, "layers": [1, 2]}, "config/params.json")
            uri: str = run.info.artifact_uri
            loaded = mlflow.artifacts.load_dict(uri + "/config/params.json")
            assert loaded == {"lr": 0.1, "layers": [1, 2]}
            listed = MlflowClient().list_artifacts(run.info.run_id)
            assert [(f.path, f.is_dir) for f in listed] == [("config", True), ("model", True)]
            inner = MlflowClient().list_artifacts(run.info.run_id, "model")
            assert [(f.path, f.file_size) for f in inner] == [("model/weights.bin", 256_000)]
            out = mlflow.artifacts.download_artifacts(
                uri + "/model/weights.bin", dst_path=str(tmp_path / "dl")
            )
            with open(out, "rb") as handle:
                assert handle.read() == source.read_bytes()
            return run.info.run_id, uri

    run_id, uri = await off_loop(artifacts)
    assert uri.startswith("mlflow-artifacts:/0/") or target.daemon is None
    if target.daemon is None:
        return
    rows = (await target.daemon.readers.query(Query(q="artifacts", run=run_id))).rows
    sizes = {r["path"]: r["size"] for r in rows if r["kind"] == "mlflow"}
    assert (
        sizes.keys() == {"model/weights.bin", "config/params.json"} and sizes["model/weights.bin"] == 256_000
    )
    assert all(r["blob"].startswith("sha256:") and r["digest"] == r["blob"] for r in rows)


async def test_tracklog_client_and_rest_read_the_same_runs_mlflow_logged(
    target: Target, tmp_path: Path
) -> None:
    """What MLflow's client logs and reads back, tracklog's own client and REST API read the same."""
    if target.daemon is None:
        pytest.skip("reads tracklog's own API")
    client = MlflowClient()

    def log() -> tuple[str, list[str]]:
        experiment_id = client.create_experiment("agree")
        ids = []
        for i in range(3):
            run = client.create_run(experiment_id, run_name=f"a{i}", tags={"team": "cv"})
            client.log_batch(
                run.info.run_id,
                metrics=[Metric("loss", 1.0 / (s + 1 + i), 1_767_225_600_000 + s, s) for s in range(4)],
                params=[Param("lr", f"0.{i + 1}"), Param("depth", str(i))],
            )
            client.set_terminated(run.info.run_id, "FINISHED" if i else "KILLED")
            ids.append(run.info.run_id)
        return experiment_id, ids

    experiment_id, ids = await off_loop(log)
    mlflow_runs = {r.info.run_id: r for r in await off_loop(client.search_runs, [experiment_id])}
    assert mlflow_runs.keys() == set(ids)
    url = f"ws://127.0.0.1:{target.uri.rsplit(':', 1)[1]}/ws"

    def tracklog_reads() -> tuple[Any, dict[str, Any], dict[str, Any]]:
        import tracklog

        with tracklog.connect(url, spool_dir=tmp_path / "spool") as tl:
            rows = tl.runs(filter="experiment_name = 'agree'")
            one = tl.get_run(ids[1])
            history = tl.metrics(ids[1], names=["loss"])
        return rows, one, dict(history)

    rows, one, history = await off_loop(tracklog_reads)
    statuses = {"FINISHED": "completed", "KILLED": "killed"}
    assert {row["id"] for row in rows} == set(ids)
    for row in rows:
        run = mlflow_runs[row["id"]]
        assert row["name"] == run.info.run_name
        assert row["status"] == statuses[run.info.status]
    assert one["config"] == mlflow_runs[ids[1]].data.params == {"lr": "0.2", "depth": "1"}
    assert one["metrics"]["loss"]["last"] == mlflow_runs[ids[1]].data.metrics["loss"]
    assert "team" in one["tags"]
    mlflow_history = await off_loop(client.get_metric_history, ids[1], "loss")
    assert history["loss"]["steps"] == [m.step for m in mlflow_history]
    assert history["loss"]["values"] == [m.value for m in mlflow_history]
    assert [round(t * 1000) for t in history["loss"]["ts"]] == [m.timestamp for m in mlflow_history]

    def rest() -> dict[str, Any]:
        with urllib.request.urlopen(f"{target.uri}/api/runs/{ids[2]}", timeout=30) as reply:
            body: dict[str, Any] = json.loads(reply.read())
        return body

    run_rest = (await off_loop(rest))["run"]
    mlflow_run = mlflow_runs[ids[2]]
    assert run_rest["config"] == mlflow_run.data.params
    assert run_rest["started"] * 1000 == pytest.approx(mlflow_run.info.start_time, abs=1)
    assert run_rest["finished"] * 1000 == pytest.approx(mlflow_run.info.end_time, abs=1)
    assert run_rest["experiment"] == mlflow_run.info.experiment_id


TOKENS = """\
writer  append
reader  read
both    read,append
boss
"""


async def test_mlflow_tracking_token_is_checked_with_its_scopes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLFLOW_TRACKING_TOKEN reaches the daemon as `Authorization: Bearer`: no token or a bad
    one is 401, a `read` token reads but cannot log (403), an `append` one logs."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    daemon = Daemon(Settings(db=tmp_path / "t.db", port=0, host="127.0.0.1", tokens_file=tokens))
    await daemon.start()
    uri = f"http://127.0.0.1:{daemon.port}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)

    def as_token(token: str | None) -> MlflowClient:
        if token is None:
            os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        else:
            os.environ["MLFLOW_TRACKING_TOKEN"] = token
        return MlflowClient(tracking_uri=uri)

    def scenario() -> None:
        for token in (None, "nope"):
            with pytest.raises(MlflowException, match="UNAUTHENTICATED"):
                as_token(token).search_experiments()
        run = as_token("writer").create_run("0", run_name="guarded")
        as_token("writer").log_metric(run.info.run_id, "m", 1.0)
        source = tmp_path / "a.txt"
        source.write_text("artifact")
        # log_artifact reads the run first (its artifact URI), then uploads: both scopes.
        as_token("both").log_artifact(run.info.run_id, str(source))
        # A search is a POST that only reads: `read` is enough, `append` is not.
        assert [r.info.run_id for r in as_token("reader").search_runs(["0"])] == [run.info.run_id]
        with pytest.raises(MlflowException, match=r"PERMISSION_DENIED: .*scope"):
            as_token("writer").search_runs(["0"])
        with pytest.raises(MlflowException, match=r"PERMISSION_DENIED: .*scope"):
            as_token("reader").log_metric(run.info.run_id, "m", 2.0)
        # The artifact repository raises requests' HTTPError, with the answer's text.
        with pytest.raises(Exception, match=r"PERMISSION_DENIED.*'append' scope"):
            as_token("reader").log_artifact(run.info.run_id, str(source))
        assert as_token("boss").get_run(run.info.run_id).data.metrics == {"m": 1.0}
        listed = as_token("reader").list_artifacts(run.info.run_id)
        assert [(f.path, f.file_size) for f in listed] == [("a.txt", 8)]

    try:
        await off_loop(scenario)
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        await asyncio.wait_for(daemon.stop(), WAIT)


async def test_artifacts_go_to_the_artifacts_dir_when_one_is_set(tmp_path: Path) -> None:
    """`--artifacts-dir` (Settings.artifacts_dir) places the store: where a PostgreSQL daemon keeps blobs."""
    store = tmp_path / "blobs-here"
    daemon = Daemon(Settings(db=tmp_path / "d.db", port=0, host="127.0.0.1", artifacts_dir=store))
    leftover = store / "tmp" / "crashed.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    await daemon.start()
    assert not leftover.exists()  # cleared at start
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{daemon.port}")
    source = tmp_path / "f.bin"
    source.write_bytes(b"x" * 1000)

    def upload() -> None:
        run = client.create_run("0")
        client.log_artifact(run.info.run_id, str(source))

    try:
        await off_loop(upload)
        blobs = [p for p in (store / "blobs").rglob("*") if p.is_file()]
        assert len(blobs) == 1 and blobs[0].read_bytes() == b"x" * 1000
        assert not (tmp_path / "d.db.artifacts").exists()
    finally:
        await asyncio.wait_for(daemon.stop(), WAIT)
