import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
import torchvision

import dsnet
from conftest import TRIO, sample
from dsnet.zoo import loader as zoo
from dsnet.zoo.manifest import load_manifest
from dsnet.zoo.weights import ChecksumError, sha256_file


def test_round_trip_of_a_checkpoint_the_test_wrote(tiny_zoo):
    for name in TRIO:
        zm = zoo.load("tiny", name, "cpu")
        assert not zm.model.training and zm.device.type == "cpu"
        torch.manual_seed(TRIO.index(name))
        fresh = dsnet.get_model(name, width=0.125, num_classes=10)
        for k, v in fresh.state_dict().items():
            assert torch.equal(zm.model.state_dict()[k], v), k
        assert zoo.load("tiny", name, "cpu") is zm  # one instance per (zoo, name, device)
        assert zm.labels.names[8] == "golf ball"


def test_get_model_with_weights_is_a_model_of_ones_own(tiny_zoo):
    """Fine-tuning what get_model returns must not change what the app serves (zoo.load's instance)."""
    served = zoo.load("tiny", "dsnet50", "cpu").model
    before = {k: v.clone() for k, v in served.state_dict().items()}
    own = dsnet.get_model("dsnet50", weights="tiny")
    assert own is not served and not own.training and {p.device.type for p in own.parameters()} == {"cpu"}
    assert not {p.data_ptr() for p in own.parameters()} & {p.data_ptr() for p in served.parameters()}
    for k, v in before.items():
        assert torch.equal(own.state_dict()[k], v), k
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(own(x), served(x), rtol=0, atol=0)
        for p in own.parameters():
            p.add_(1.0)
    assert all(torch.equal(served.state_dict()[k], v) for k, v in before.items())
    assert zoo.load("tiny", "dsnet50", "cpu").model is served
    assert dsnet.get_model("dsnet50", weights="tiny") is not own


def test_a_tampered_byte_is_refused_before_loading(tiny_zoo, monkeypatch):
    path = tiny_zoo.parent / "tiny" / "dsnet50.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "read_state_dict", lambda *a: pytest.fail("deserialised an unverified file"))
    with pytest.raises(ChecksumError, match="SHA-256 mismatch .* not loaded"):
        zoo.load("tiny", "dsnet50")


def test_unknown_names_list_the_valid_ones(tiny_zoo):
    with pytest.raises(zoo.NotInZoo, match="its models: resnet50, dsnet50, ds2net50"):
        zoo.load("tiny", "dsnet51")
    with pytest.raises(zoo.NotInZoo, match="zoos: tiny"):
        zoo.load("nope", "dsnet50")


def test_architecture_mismatch_lists_the_keys(tiny_zoo):
    raw = json.loads(tiny_zoo.read_text())
    raw["zoos"]["tiny"]["models"]["dsnet50"]["builder"] = "resnet50"  # file has dense_weight tensors
    tiny_zoo.write_text(json.dumps(raw))
    with pytest.raises(zoo.ZooError, match=r"unexpected keys: \[layer1.1.dense_weight"):
        zoo.load("tiny", "dsnet50")


def test_unavailable_entry_says_why_and_is_never_faked(tiny_zoo):
    raw = json.loads(tiny_zoo.read_text())
    raw["zoos"]["tiny"]["models"]["ds2net50"]["unavailable"] = "not trained yet"
    tiny_zoo.write_text(json.dumps(raw))
    loaded, missing = zoo.load_available("tiny")
    assert [m.name for m in loaded] == ["resnet50", "dsnet50"]
    assert "not trained yet" in missing["ds2net50"]


def test_load_or_skip_names_each_skipped_model_on_stderr(tiny_zoo, capsys):
    raw = json.loads(tiny_zoo.read_text())
    raw["zoos"]["tiny"]["models"]["dsnet50"]["unavailable"] = "not trained yet"
    tiny_zoo.write_text(json.dumps(raw))
    assert [m.name for m in zoo.load_or_skip("tiny", TRIO, "cpu")] == ["resnet50", "ds2net50"]
    assert capsys.readouterr().err == "skipped tiny/dsnet50: tiny/dsnet50: not trained yet\n"


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _torchvision_entry(tiny_zoo: Path, sha: str, url: str) -> None:
    raw = json.loads(tiny_zoo.read_text())
    entry = json.loads(
        json.dumps(
            load_manifest(Path(__file__).parent.parent / "checkpoints" / "manifest.json")
            .entry("imagenet", "resnet50")
            .to_json()
        )
    )
    entry.update(
        sha256=sha,
        sources={"local": "imagenet/resnet50-test.pth", "hub": None, "url": url},
        file="imagenet/resnet50-test.pth",
    )
    raw["zoos"]["imagenet"] = {"description": "", "models": {"resnet50": entry}}
    tiny_zoo.write_text(json.dumps(raw))


def test_torchvision_pth_is_downloaded_verified_and_loaded_through_the_zoo(tiny_zoo, http_root):
    root, base = http_root
    torch.manual_seed(0)
    reference = torchvision.models.resnet50().eval()
    torch.save(reference.state_dict(), root / "resnet50-test.pth")
    _torchvision_entry(tiny_zoo, sha256_file(root / "resnet50-test.pth"), f"{base}/resnet50-test.pth")
    zm = zoo.load("imagenet", "resnet50", "cpu")
    assert (zoo.cache_dir() / zm.entry.sha256[:16] / "resnet50-test.pth").is_file()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(zm.model(x), reference(x))
    assert zm.labels.names[574] == "golf ball"


def test_a_tampered_download_in_the_cache_is_refused(tiny_zoo, http_root, monkeypatch):
    root, base = http_root
    hits = []
    serve = _Files.do_GET
    monkeypatch.setattr(_Files, "do_GET", lambda self: (hits.append(self.path), serve(self)))
    torch.save(dsnet.get_model("resnet50", width=0.125).state_dict(), root / "resnet50-test.pth")
    _torchvision_entry(tiny_zoo, "0" * 64, f"{base}/resnet50-test.pth")
    with pytest.raises(ChecksumError):
        zoo.load("imagenet", "resnet50")
    with pytest.raises(ChecksumError):  # a new zoo object: now from the cache, without downloading again
        zoo.ModelZoo(tiny_zoo).load("imagenet", "resnet50")
    assert hits == ["/resnet50-test.pth"]


def test_offline_error_says_which_file_where_and_how(tiny_zoo, http_root):
    _, base = http_root
    _torchvision_entry(tiny_zoo, "0" * 64, f"{base}/missing.pth")
    with pytest.raises(zoo.WeightsUnavailable) as err:
        zoo.load("imagenet", "resnet50")
    text = str(err.value)
    assert "resnet50-test.pth not found" in text and "download failed" in text
    assert str(tiny_zoo.parent / "imagenet" / "resnet50-test.pth") in text and "DSNET_WEIGHTS_DIR" in text


def test_a_failed_download_is_not_retried_for_a_while(tiny_zoo, http_root, monkeypatch):
    """A public server's requests must not trigger outbound downloads at will (README, Security)."""
    root, base = http_root
    hits = []
    monkeypatch.setattr(_Files, "do_GET", lambda self: (hits.append(self.path), self.send_error(503)))
    _torchvision_entry(tiny_zoo, "1" * 64, f"{base}/resnet50-test.pth")
    for _ in range(3):
        with pytest.raises(zoo.WeightsUnavailable) as err:
            zoo.load("imagenet", "resnet50")
    assert len(hits) == 1 and "not retried for 600 s" in str(err.value)
    assert err.value.summary == "The resnet50 weights could not be downloaded; the server tries again in 10 minutes."
    monkeypatch.setenv("DSNET_DOWNLOAD_RETRY_SECONDS", "0")
    with pytest.raises(zoo.WeightsUnavailable):
        zoo.load("imagenet", "resnet50")
    assert len(hits) == 2


def _stalled_download(tiny_zoo: Path, http_root, monkeypatch) -> tuple[threading.Event, threading.Event, list]:
    """tiny/dsnet50 only downloadable from the test server, which holds each request until ``release``."""
    root, base = http_root
    started, release, hits = threading.Event(), threading.Event(), []
    serve = _Files.do_GET

    def stalled(self):
        hits.append(self.path)
        started.set()
        release.wait(60)
        serve(self)

    monkeypatch.setattr(_Files, "do_GET", stalled)
    shutil.move(tiny_zoo.parent / "tiny" / "dsnet50.safetensors", root / "dsnet50.safetensors")
    raw = json.loads(tiny_zoo.read_text())
    raw["zoos"]["tiny"]["models"]["dsnet50"]["sources"] = {
        "local": "tiny/dsnet50.safetensors",
        "hub": None,
        "url": f"{base}/dsnet50.safetensors",
    }
    tiny_zoo.write_text(json.dumps(raw))
    return started, release, hits


def _in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    out = {}
    thread = threading.Thread(target=lambda: out.update(value=fn(*args)), daemon=True)
    thread.start()
    return thread, out


def test_a_stalled_download_of_one_model_does_not_block_loading_another(tiny_zoo, http_root, monkeypatch):
    """Per-model locks: while dsnet50's download hangs, resnet50 loads from the same zoo object."""
    started, release, _ = _stalled_download(tiny_zoo, http_root, monkeypatch)
    models = zoo.ModelZoo(tiny_zoo)
    slow, slow_out = _in_thread(models.load, "tiny", "dsnet50", "cpu")
    try:
        assert started.wait(30), "the download never reached the server"
        fast, fast_out = _in_thread(models.load, "tiny", "resnet50", "cpu")
        fast.join(30)
        assert fast_out.get("value") is not None, "loading resnet50 waited for dsnet50's download"
        assert slow.is_alive() and not slow_out
    finally:
        release.set()
    slow.join(30)
    assert slow_out["value"].name == "dsnet50" and models.load("tiny", "dsnet50", "cpu") is slow_out["value"]


class _WatchedLock:
    """A lock that counts, on ``blocked``, each thread that found it held and had to wait."""

    def __init__(self, lock: threading.Lock, blocked: threading.Semaphore) -> None:
        self.lock, self.blocked = lock, blocked

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            self.blocked.release()
            self.lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


def test_concurrent_loads_of_one_model_download_it_once_and_share_it(tiny_zoo, http_root, monkeypatch):
    started, release, hits = _stalled_download(tiny_zoo, http_root, monkeypatch)
    models = zoo.ModelZoo(tiny_zoo)
    blocked = threading.Semaphore(0)
    lock_for = models._lock_for
    monkeypatch.setattr(
        models, "_lock_for", lambda *key: _WatchedLock(lock_for(*key), blocked) if key[0] == "load" else lock_for(*key)
    )
    runs = [_in_thread(models.load, "tiny", "dsnet50", "cpu") for _ in range(3)]
    try:
        assert started.wait(30), "the download never reached the server"
        for _ in range(2):  # the other two wait for the model's lock while the first one downloads
            assert blocked.acquire(timeout=30), "a second load of the model did not wait for the first"
    finally:
        release.set()
    for thread, _ in runs:
        thread.join(30)
    assert hits == ["/dsnet50.safetensors"]
    assert len({id(out["value"]) for _, out in runs}) == 1


def test_a_new_zoo_object_and_forget_start_empty(tiny_zoo, http_root, monkeypatch):
    """What tests and long-running tools use instead of module caches: a new ModelZoo, or forget()."""
    hits = []
    monkeypatch.setattr(_Files, "do_GET", lambda self: (hits.append(self.path), self.send_error(503)))
    _torchvision_entry(tiny_zoo, "1" * 64, f"{http_root[1]}/resnet50-test.pth")
    models = zoo.ModelZoo(tiny_zoo)
    first = models.load("tiny", "resnet50", "cpu")
    for _ in range(2):
        with pytest.raises(zoo.WeightsUnavailable):
            models.load("imagenet", "resnet50")
    assert len(hits) == 1 and models.load("tiny", "resnet50", "cpu") is first
    assert zoo.ModelZoo(tiny_zoo).load("tiny", "resnet50", "cpu") is not first
    assert zoo.default_zoo(tiny_zoo) is zoo.default_zoo() and zoo.default_zoo() is not models
    models.forget()
    assert models.load("tiny", "resnet50", "cpu") is not first
    with pytest.raises(zoo.WeightsUnavailable):
        models.load("imagenet", "resnet50")
    assert len(hits) == 2


@pytest.mark.slow
def test_hub_source_fails_clearly_offline(tiny_zoo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = json.loads(tiny_zoo.read_text())
    entry = raw["zoos"]["tiny"]["models"]["dsnet50"]
    entry["sources"] = {
        "local": "elsewhere/dsnet50.safetensors",
        "url": None,
        "hub": {"repo_id": "dsnet-explain/imagenette", "filename": "dsnet50.safetensors", "revision": "0" * 40},
    }
    tiny_zoo.write_text(json.dumps(raw))
    with pytest.raises(
        zoo.WeightsUnavailable, match=r"Hugging Face Hub dsnet-explain/imagenette@0+.*huggingface-cli download"
    ):
        zoo.load("tiny", "dsnet50")


def test_zoo_cli_lists_and_verifies(tiny_zoo, capsys):
    assert zoo.main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(TRIO) and all(r["verified"] for r in rows)
    assert {r["measured"] for r in rows} == {
        "imagenette/val (3791 images); export's preprocessing: torchvision "
        "antialiased resize of the shorter side to 183 px, centre crop 160 px"
    }
    assert zoo.main(["verify"]) == 0
    path = tiny_zoo.parent / "tiny" / "resnet50.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    assert zoo.main(["verify"]) == 1
    assert "FAILED tiny/resnet50: SHA-256 mismatch" in capsys.readouterr().err


def test_zoo_list_names_what_each_top1_was_measured_on_and_how(tiny_zoo, capsys):
    """One top-1 per model, and under the table what it was measured on and with which preprocessing."""
    raw = json.loads(tiny_zoo.read_text())
    raw["zoos"]["tiny"]["models"]["ds2net50"]["metrics"] = [
        {"dataset": "mini/val", "images": 40, "top1": 12.5, "top5": 50.0}
    ]  # an old entry: no protocol
    raw["zoos"]["tiny"]["models"]["dsnet50"]["metrics"] = []
    tiny_zoo.write_text(json.dumps(raw))
    assert zoo.main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["zoo/model", "weights", "top-1"]
    assert [line.split()[2] for line in out[1:4]] == ["85.54", "-", "12.50"]
    assert out[4:7] == [
        "top-1 (%): the manifest's number for each model, measured on",
        "  tiny/resnet50: imagenette/val (3791 images); export's preprocessing: torchvision antialiased resize "
        "of the shorter side to 183 px, centre crop 160 px",
        "  tiny/ds2net50: mini/val (40 images); preprocessing not recorded",
    ]
    assert "--pipeline app" in out[7]


def test_a_model_the_zoo_lacks_is_a_failure_in_its_column_not_an_exception(tiny_zoo):
    from dsnet.cam.images import open_image
    from dsnet.cam.service import ModelFailure, explain_zoo

    results = list(explain_zoo(open_image(sample("tench")), "tiny", names=("resnet50", "dsnet101")))
    assert results[0].model == "resnet50" and not isinstance(results[0], ModelFailure)
    assert isinstance(results[1], ModelFailure) and results[1].unavailable
    assert results[1].summary == "The tiny zoo has no dsnet101."
    with pytest.raises(zoo.NotInZoo, match="unknown zoo 'tinny'"):
        zoo.load("tinny", "resnet50")
