"""What the commands given ``--out s3://...`` publish and print, against a real S3 server (moto's, over
HTTP): the SAEs of a collection with their index, an SAE inside a published folder read as its local
path reads, the URL (not the local staging cache) in what is printed, Ctrl-C during `train` leaving
its state for --resume, and an up-to-date `run` publishing nothing new."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scircuits.store.remote import LOCK_OBJECT, url_join
from tests.cli_helpers import run_cli
from tests.s3_server import bucket, s3_endpoint  # noqa: F401  (fixtures)
from tests.test_train_joint import HOOKS, MODEL, TRAIN, collection, joint  # noqa: F401  (fixtures)

POINTER = ".scircuits-current.json"


def s3fs_now():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The staging cache of this test (inherited by the commands it starts)."""
    monkeypatch.setenv("SCIRCUITS_REMOTE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def pointer(url: str) -> dict:
    return json.loads(s3fs_now().cat_file(url_join(url, POINTER)))


def published_files(url: str) -> dict[str, bytes]:
    """Each file of the URL's current generation by its path in the generation."""
    fs = s3fs_now()
    generation = url_join(url, pointer(url)["generation"])
    prefix = generation.split("://", 1)[1] + "/"
    return {p[len(prefix) :]: fs.cat_file(p) for p in fs.find(generation)}


def local_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".scircuits-lock")
    }


# -- 1. train --store COLLECTION --out s3://... ---------------------------------------------------


def test_the_sites_saes_are_published_with_their_index_as_written_locally(
    collection,  # noqa: F811
    joint,  # noqa: F811
    bucket,  # noqa: F811
    cache,
):
    """The URL's generation holds what the local --out holds (index.json and one checkpoint per
    hook), `circuit`'s reader takes the URL (and each SAE's URL), and the output names the URLs."""
    from scircuits.platform.circuit.sites import load_site_saes
    from scircuits.platform.manager.plugin_set import get_plugins

    url = url_join(bucket, "saes")
    done = run_cli("train", "--store", str(collection), *TRAIN, "--out", url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [url_join(url, hook) for hook in HOOKS]
    assert str(cache) not in done.stdout + done.stderr
    remote, local = published_files(url), local_files(joint)
    assert json.loads(remote["index.json"]) == json.loads(local["index.json"])
    assert sorted(remote) == sorted(local)
    for hook in HOOKS:
        assert remote[f"{hook}/sae_weights.safetensors"] == local[f"{hook}/sae_weights.safetensors"]
    assert not any(p.endswith(LOCK_OBJECT) for p in s3fs_now().find(bucket))
    plugins = get_plugins()
    adapter = plugins.models.get(MODEL)
    saes = load_site_saes([url], plugins, adapter, MODEL)
    assert [s.name for s in saes] == ["mlp0", "resid0", "mlp2", "resid2"]
    assert [s.spec for s in saes] == [url_join(url, hook) for hook in HOOKS]
    # the same command again: every SAE complete, nothing uploaded again
    before = pointer(url)
    again = run_cli("train", "--store", str(collection), *TRAIN, "--out", url, "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["path"] for r in json.loads(again.stdout)] == [url_join(url, hook) for hook in HOOKS]
    assert pointer(url) == before


# -- 2. an SAE inside a published folder ------------------------------------------------------------


def test_ablate_and_load_sae_read_an_sae_inside_a_published_folder(
    collection,  # noqa: F811
    joint,  # noqa: F811
    bucket,  # noqa: F811
    cache,
    tmp_path,
):
    """`RUN/sae` of a published run and `OUT/<hook>` of published site SAEs resolve as the local
    paths do; a name that is not there is one line."""
    from scircuits.platform.common.remote import publish_folder
    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.train.checkpoint import load_sae

    run = tmp_path / "run"
    (run / "causal").mkdir(parents=True)
    (run / "causal" / "results.json").write_text("{}")
    hook = "blocks.2.hook_resid_post"
    shutil.copytree(joint / hook, run / "sae")
    run_url = url_join(bucket, "runs", "arith")
    publish_folder(run, run_url)
    plugins = get_plugins()
    sae, info = load_sae(url_join(run_url, "sae"), plugins)
    local_sae, _ = load_sae(str(joint / hook), plugins)
    assert bool((sae.W_dec == local_sae.W_dec).all()) and info["cfg"]["metadata"]["hook_name"] == hook

    saes_url = url_join(bucket, "saes")
    publish_folder(joint, saes_url)
    out = url_join(bucket, "causal")
    args = ["ablate", "--model", MODEL, "--model-path", str(collection.parent / "model")]
    args += ["--benchmark", "arithmetic", "--limit", "12", "--top-k", "1", "--random-controls", "2"]
    args += ["--exact-top", "1", "--bootstrap", "50", "--no-reconstruction-gate", "--no-progress"]
    done = run_cli(*args, "--sae", url_join(saes_url, hook), "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"{url_join(out, 'results.json')}: ")  # the URL, not the cache
    assert str(cache) not in done.stdout + done.stderr
    results = json.loads(published_files(out)["results.json"])
    assert (results["layer"], results["site"]) == (2, "resid")
    missing = run_cli(*args, "--sae", url_join(run_url, "nothing"), "--out", url_join(bucket, "c2"))
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1 and "no such folder" in lines[0], missing.stderr


# -- 3 and 4. train --out s3://...: what it prints; Ctrl-C, then --resume ---------------------------

SHORT = ["--sae", "topk", "--k", "4", "--expansion", "2", "--batch-size", "64", "--lr", "3e-3"]
SHORT += ["--warmup-steps", "5", "--eval-every", "50", "--log-every", "50", "--seed", "3", "--no-progress"]


def test_train_prints_the_url_and_a_ctrl_c_leaves_its_state_for_resume_at_the_url(bucket, cache, tmp_path):  # noqa: F811
    from scircuits.platform.common.remote import staging_dir
    from scircuits.platform.train.checkpoint import META_FILE, STATE_DIR, WEIGHTS_FILE
    from scircuits.store.synthetic import write_synthetic_store

    store = str(write_synthetic_store(tmp_path / "acts.zarr", n_examples=400, d_model=16, dtype="float32"))
    long = [*SHORT, "--store", store, "--tokens", "120000", "--checkpoint-every", "20"]
    straight = tmp_path / "straight"
    done = run_cli("train", *long, "--out", str(straight))
    assert done.returncode == 0, done.stderr[-3000:]

    url = url_join(bucket, "sae")
    state = staging_dir(url, "out") / STATE_DIR / "state.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scircuits", "train", *long, "--out", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert state.is_file()
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert str(cache) not in out + err
    files = published_files(url)  # what a local interrupted run leaves: its last saved state
    assert f"{STATE_DIR}/state.json" in files and META_FILE not in files
    assert not s3fs_now().exists(url_join(url, LOCK_OBJECT))

    refused = run_cli("train", *long, "--out", url)  # as locally: a saved state is not overwritten
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "--resume" in lines[0], refused.stderr
    assert f"{url}/{STATE_DIR}" in lines[0] and str(cache) not in lines[0]

    shutil.rmtree(cache)  # another machine: only the URL holds the state
    resumed = run_cli("train", *long, "--out", url, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["path"] == url
    assert str(cache) not in resumed.stdout + resumed.stderr
    step = json.loads(files[f"{STATE_DIR}/state.json"])["step"]
    assert step > 0 and f"[train] resuming {url} from step {step}" in resumed.stderr  # not started over
    files = published_files(url)
    assert files[WEIGHTS_FILE] == (straight / WEIGHTS_FILE).read_bytes()  # as if never interrupted
    assert json.loads(files[META_FILE])["complete"]


# -- 3 and 5. run --out s3://... --------------------------------------------------------------------


def test_an_up_to_date_run_publishes_nothing_and_names_the_url(bucket, cache, monkeypatch, capsys):  # noqa: F811
    """`run --out s3://...` (the stages faked, as in test_pipeline) run again with nothing to do keeps
    the URL's generation: no upload, pipeline.json as published; its messages name the URL."""
    from scircuits.platform.config import RunConfig
    from scircuits.platform.manager.plugin_set import get_plugins
    from scircuits.platform.pipeline.run import run_pipeline
    from tests.test_pipeline import FakeStages

    stages = FakeStages(monkeypatch)
    config = RunConfig(out=url_join(bucket, "runs"), progress=False)
    local = run_pipeline(config, get_plugins())
    url = url_join(bucket, "runs", local.name)
    err = capsys.readouterr().err
    assert str(cache) not in err and f"run directory {url}" in err and url_join(url, "report.html") in err
    published = pointer(url)
    files = published_files(url)
    assert "pipeline.json" in files
    run_pipeline(config, get_plugins())
    assert stages.calls == ["collect", "train", "ablate", "report"]  # all skipped the second time
    err = capsys.readouterr().err
    assert "is unchanged; kept its current generation" in err and str(cache) not in err
    assert pointer(url) == published  # no new generation
    assert published_files(url) == files


def test_a_resumable_failure_publishes_the_saved_state_and_another_failure_does_not(bucket, cache):  # noqa: F811
    """A lost worker of ``train --nproc`` (ResumableError) tells the user to --resume: the URL must
    hold that state, as the local folder does; any other failure leaves the URL as it was."""
    from scircuits.platform.common.remote import remote_out
    from scircuits.platform.contract.errors import ResumableError, ScircuitsError

    url = url_join(bucket, "resumable")
    with (
        pytest.raises(ResumableError, match="--resume"),
        remote_out(url, "SAE checkpoint", publish_interrupted=True) as local,
    ):
        (local / "training_state").mkdir()
        (local / "training_state" / "state.json").write_text('{"step": 20}')
        raise ResumableError(f"a worker died; the last saved training state in {local} is kept: --resume")
    assert published_files(url) == {"training_state/state.json": b'{"step": 20}'}

    other = url_join(bucket, "failed")
    with (
        pytest.raises(ScircuitsError),
        remote_out(other, "SAE checkpoint", publish_interrupted=True) as local,
    ):
        (local / "half.json").write_text("{}")
        raise ScircuitsError("bad input")
    assert not s3fs_now().exists(url_join(other, POINTER))
