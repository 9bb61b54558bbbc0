"""The notebooks in notebooks/ run from a clean kernel without error, and the committed
copies are executed (outputs kept) and name no path of the machine that ran them.
Running them needs the notebook extra (`pip install ".[notebook]"`, part of ".[test]")."""
import glob
import os
import re
import tempfile

import pytest

import d3sr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
BUILT_IN_MODEL = os.path.join(os.path.dirname(d3sr.__file__), "models", "tiny")
LOCAL_PATH = re.compile(r"(/home/|/root/|/tmp/|/Users/|/work/|[A-Z]:\\\\Users)")


def read(path):
    nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat: pip install '.[notebook]'")
    return nbformat.read(path, as_version=4)


def test_there_are_notebooks():
    assert [os.path.basename(p) for p in NOTEBOOKS] == ["01-upscale.ipynb", "02-discriminator.ipynb",
                                                        "03-evaluate.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_committed_notebook_is_executed_and_names_no_local_path(path):
    nb = read(path)
    assert nb.cells[0].cell_type == "markdown", "a notebook opens with what it shows"
    assert "CHECKPOINT = None" in nb.cells[1].source, "the second cell points the notebook at a checkpoint"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "committed notebooks are executed (tools/run_notebooks.py)"
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "run top to bottom, once"
    for cell in code:
        for output in cell.outputs:
            assert output.output_type != "error", f"an error is committed: {output.get('evalue')}"
            text = output.get("text", "") + "".join(str(v) for k, v in output.get("data", {}).items()
                                                    if k.startswith("text/"))
            assert not LOCAL_PATH.search(text), f"a local path in the outputs: {LOCAL_PATH.search(text).group(0)}"
    assert any("image/png" in output.get("data", {}) for cell in code for output in cell.outputs), "no figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_from_a_clean_kernel(path):
    for module in ("nbclient", "ipykernel", "matplotlib"):
        pytest.importorskip(module, reason=f"the notebooks need {module}: pip install '.[notebook]'")
    if not os.path.isdir(BUILT_IN_MODEL):
        pytest.skip("the notebooks use the built-in d3sr-tiny model, which this build does not have")
    from nbclient import NotebookClient

    nb = read(path)
    with tempfile.TemporaryDirectory() as folder:  # whatever a notebook writes lands here
        # Any cell's exception fails the test (nbclient raises CellExecutionError with the traceback).
        NotebookClient(nb, timeout=300, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": folder}}).execute()
