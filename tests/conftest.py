"""Shared fixtures: the Green2020 anchor data (real stars, published network).

Tests that need it take the ``anchor_dir`` fixture. When the folder is missing
they skip with the reason, unless ``DDS_REQUIRE_ANCHORS=1`` (set by .ci/run),
in which case they fail.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ANCHOR_FILES = (
    "green2020_nn_model.h5",
    "green2020_theta_normalization.json",
    "green2020_test_data_small.h5",
    "green2020_input_density.h5",
)


def _two_cpu_devices():
    """Run the suite on two JAX CPU devices, as ``dds-infer`` does on a 2-core machine, so that the
    engines' multi-device path is what the tests exercise. XLA reads the threading flags that
    :func:`dds_infer.devices.use_cpu_cores` sets when the backend starts (here); the environment is
    then restored so that notebook kernels and CLI subprocesses choose for themselves."""
    import jax

    from dds_infer.devices import use_cpu_cores

    before = os.environ.get("XLA_FLAGS")
    use_cpu_cores(2)
    jax.devices()
    if before is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = before


def pytest_configure(config):
    """One persistent JAX compilation cache per test session (:func:`_compilation_cache`), then two
    CPU devices (:func:`_two_cpu_devices`)."""
    _compilation_cache(config)
    _two_cpu_devices()


def _compilation_cache(config):
    """One persistent JAX compilation cache per test session, in a fresh temporary folder (never
    reused between runs): a program compiled by one test, notebook kernel or CLI subprocess is
    loaded, not recompiled, by the next with the same program and shapes. The environment
    variables reach the subprocesses; ``DDS_TEST_JAX_CACHE=0`` turns it off."""
    if os.environ.get("DDS_TEST_JAX_CACHE", "1") == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    folder = tempfile.mkdtemp(prefix="dds_test_jax_cache_")
    config._dds_jax_cache = folder
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_unconfigure(config):
    folder = getattr(config, "_dds_jax_cache", None)
    if folder:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


def _anchor_dir() -> Path:
    env = os.environ.get("DDS_ANCHOR_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT / ".." / "shared" / "anchors" / "green2020").resolve()


@pytest.fixture(scope="session")
def anchor_dir() -> Path:
    d = _anchor_dir()
    missing = [f for f in ANCHOR_FILES if not (d / f).is_file()]
    if missing:
        msg = (
            f"Green2020 anchor data not found in {d} (missing {missing}); "
            "set DDS_ANCHOR_DIR to the folder holding the published model and test stars"
        )
        if os.environ.get("DDS_REQUIRE_ANCHORS") == "1":
            pytest.fail(msg + " [DDS_REQUIRE_ANCHORS=1]")
        pytest.skip(msg)
    return d


def run_notebook_small(name: str, monkeypatch, *, timeout: int, anchor_dir: Path | None = None,
                       tmp_path: Path | None = None):
    """Execute ``notebooks/<name>`` at small size (DDS_NB_SMALL=1) in its own folder.

    Sets the environment (Agg backend, the anchor folder and a private TMPDIR when given),
    checks that the committed figures under ``notebooks/figures`` were not overwritten, and
    returns (executed notebook, the text of every code-cell output).
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DDS_NB_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if anchor_dir is not None:
        monkeypatch.setenv("DDS_ANCHOR_DIR", str(anchor_dir))
    if tmp_path is not None:
        monkeypatch.setenv("TMPDIR", str(tmp_path))
    path = REPO_ROOT / "notebooks" / name
    figs = REPO_ROOT / "notebooks" / "figures"
    stamps = lambda: {p.name: p.stat().st_mtime_ns for p in figs.glob("*.png")}  # noqa: E731
    before = stamps()
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "small run: True" in text
    assert stamps() == before, "a small run overwrote the committed figures"
    return nb, text


def record_pipeline_infer(monkeypatch) -> list:
    """Replace ``dds_infer.pipeline.infer`` (what the CLI calls) by a recorder: each call appends
    ``{"catalog", "emulator", "out", **keyword arguments}`` to the returned list and returns a
    posterior stand-in with what the CLI reads (``n_stars``, ``summary()``). For tests of what the
    CLI hands to inference; inference itself is tested elsewhere."""
    import numpy as np
    import pandas as pd

    import dds_infer.pipeline

    calls = []

    class _Posterior:
        def __init__(self, n):
            self.n_stars = n

        def summary(self):
            n = self.n_stars
            return pd.DataFrame({"r_hat_max": np.ones(n), "ess_bulk_min": np.full(n, 100.0), "flag": np.zeros(n)})

    def fake_infer(catalog, emulator, out_dir, **kw):
        calls.append({"catalog": catalog, "emulator": emulator, "out": out_dir, **kw})
        return _Posterior(catalog.n_stars)

    monkeypatch.setattr(dds_infer.pipeline, "infer", fake_infer)
    return calls


def shipped_infer_cli(monkeypatch, tmp_path, n: int = 3) -> tuple[list, list]:
    """(recorded pipeline.infer calls, the common ``dds-infer infer`` arguments) for CLI tests on an
    ``n``-star mock of the shipped model (mock13-v1) written to ``tmp_path``; add ``--out`` and
    the flags under test. Inference is replaced by :func:`record_pipeline_infer`."""
    from dds_infer import load_bundle
    from dds_infer.catalog_io import catalog_to_table, write_astropy_table
    from dds_infer.mock import MockConfig, make_mock

    shipped = REPO_ROOT / "models" / "mock13-v1"
    calls = record_pipeline_infer(monkeypatch)
    mock = make_mock(load_bundle(shipped), MockConfig(n=n, seed=2, labels=False))
    cat = write_astropy_table(catalog_to_table(mock.catalog), tmp_path / "c.parquet")
    return calls, ["infer", "--model", str(shipped), "--catalog", str(cat), "--no-progress", "--json"]
