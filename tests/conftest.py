import os
import tempfile

# Triton reads TRITON_INTERPRET when it decorates a function, its own standard library included
# (at `import triton`), and torch.utils.flop_counter imports triton: without an NVIDIA driver the
# kernels run in the interpreter, so set it before anything imports torch.
if not os.path.exists("/proc/driver/nvidia/version"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
# measured ceilings saved by a user's `rooflens hw probe` must not leak into tests
os.environ["ROOFLENS_HOME"] = tempfile.mkdtemp(prefix="rooflens-test-home-")
# the machine lock of the tests' measurements is their own: a user's run (or another checkout's tests) never blocks them
os.environ["ROOFLENS_LOCK_DIR"] = tempfile.mkdtemp(prefix="rooflens-test-lock-")

import rooflens  # noqa: E402
from factories import TEST_ENGINES, VIRTUAL_TIME  # noqa: E402
from rooflens.config import ModelSpec  # noqa: E402
from rooflens.engines import registry  # noqa: E402
from rooflens.models.loader import load_model  # noqa: E402

CPU = torch.device("cpu")
# the compiled engines' kernels go to one folder of the session's own, never the user's cache: tests that compile the
# same graphs share them (inductor's FX graph cache), as runs on one machine do
rooflens.USER_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="rooflens-test-inductor-")


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many tiny forwards (pytestmark = usefixtures): on a shared machine a second intra-op thread
    only waits for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llama():
    return load_model(ModelSpec(source="shape", id="tiny-llama"), CPU, torch.float32, seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """The shipped real-weights model (converted once to safetensors in ROOFLENS_CACHE)."""
    return load_model(ModelSpec(source="builtin", id="smollm2-135m"), CPU, torch.float32)


@pytest.fixture
def test_engines(monkeypatch):
    """The scripted test engines (factories.TEST_ENGINES) in the engine registry, for one test."""
    registry.registered_engines()  # the built-ins and plug-ins first, as a run would load them
    for cls in TEST_ENGINES:
        monkeypatch.setitem(registry._REGISTRY, cls.name, cls)


@pytest.fixture
def virtual_time(monkeypatch):
    """The timed loop's token clocks read factories.VIRTUAL_TIME, which only PacedEngine moves."""
    from rooflens.bench import repetitions
    from rooflens.engines.base import TokenClock

    monkeypatch.setattr(repetitions, "TokenClock", lambda device: TokenClock(device, now=VIRTUAL_TIME))
    VIRTUAL_TIME.t = 0.0
    return VIRTUAL_TIME


@pytest.fixture
def quiet_machine(monkeypatch, tmp_path):
    """A machine whose conditions never make a cell invalid: load 0, no cpufreq to read (a note), no NVML."""
    from rooflens.bench import conditions
    from rooflens.device import cpu

    monkeypatch.setattr(conditions, "read_loadavg", lambda: 0.0)
    monkeypatch.setattr(cpu, "CPUFREQ_ROOT", tmp_path / "no-cpufreq")
