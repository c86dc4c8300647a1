import gc
import os

import numpy as np
import pytest

# The CUDA BatchNorm's 16-byte statistics pass serves only launches of 256+ blocks (16M+ elements),
# beyond what the emulator runs in a test; this hook lets the tests' chunked shapes take it. Its
# results are bitwise the scalar pass's (test_batchnorm_vector_passes_match_scalar_bits).
os.environ.setdefault("FASTNN_BN_VEC_STATS_ALWAYS", "1")

import fastnn  # noqa: E402

torch = pytest.importorskip("torch")
torch.set_default_dtype(torch.float64)
# TF32 never applies on the CPU, but be explicit: parity is against plain float32 math.
torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope="session", autouse=True)
def run_outside_the_source_tree(tmp_path_factory):
    """Subprocesses (`python -c ...`) put their cwd first on sys.path; from the repository root that
    would import the source `fastnn/` (which has no compiled `_C` when fastnn is installed as a
    wheel) instead of the installed package. Run the session from an empty directory."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)

# Every backend this build can run: "cuda" is a real GPU, or the CPU emulation of CUDA in a
# FASTNN_CUDA=EMULATE build. Parity tests that take the `device` fixture run once per device.
CUDA_AVAILABLE = fastnn.build_info()["cuda_available"]
DEVICES = ["cpu"] + (["cuda"] if CUDA_AVAILABLE else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(scope="session")
def devices():
    return list(DEVICES)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer-running parity checks")


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Every test must leave fastnn's live storage and DLPack export counters no higher than it found them.

    gc.collect() costs ~0.1 s with torch loaded, so it runs only when the counters say it may matter.
    """
    before = fastnn._C._debug_stats()
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        return  # the failure's traceback keeps the test's tensors alive; don't report them twice

    def grew():
        after = fastnn._C._debug_stats()
        return (after["live_export_contexts"] > before["live_export_contexts"]
                or after["live_storages"] > before["live_storages"]), after

    leaked, after = grew()
    if leaked:
        gc.collect()
        leaked, after = grew()
    assert not leaked, (before, after)
