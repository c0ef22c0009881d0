"""A default install (`pip install stpdist`) lacks the optional extras (formats, weather,
wandb, ...): a command that needs one says which, in one line, rather than a bare
"No module named ...". The package is made absent the way Python sees a missing install:
`sys.modules[name] = None` makes its import raise ModuleNotFoundError. The commands run
in-process (`stpdist.cli.main`): each starts work only after the import."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stpdist.cli import main


def _absent(monkeypatch, *modules: str) -> None:
    """`modules` cannot be imported, as when not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _kth(root: Path) -> list[str]:
    (root / "kth" / "boxing").mkdir(parents=True)
    (root / "kth" / "boxing" / "person01_boxing_d1_uncomp.avi").write_bytes(b"\0" * 64)
    return ["shard", "kth-avi", "kth", "--out", "out"]


def _taxibj(root: Path) -> list[str]:
    (root / "BJ13_M32x32_T30_InOut.h5").write_bytes(b"\0" * 64)
    return ["shard", "taxibj-h5", "BJ13_M32x32_T30_InOut.h5", "--out", "out"]


def _sevir(root: Path) -> list[str]:
    (root / "sevir").mkdir()
    (root / "sevir" / "CATALOG.csv").write_text(
        "id,file_name,file_index,img_type,time_utc\nS1,a.h5,0,vil,2019-01-01 00:00:00\n"
    )
    (root / "sevir" / "a.h5").write_bytes(b"\0" * 64)
    return ["shard", "sevir", "sevir", "--out", "out"]


def _netcdf(root: Path) -> list[str]:
    (root / "z").mkdir()
    (root / "z" / "z_2019.nc").write_bytes(b"\0" * 64)
    return ["shard", "netcdf", "z", "--vars", "z", "--out", "out"]


@pytest.mark.parametrize(
    "make, module, extra, purpose",
    [
        (_kth, "av", "formats", "decoding KTH videos"),
        (_taxibj, "h5py", "formats", "reading TaxiBJ .h5 files"),
        (_sevir, "h5py", "formats", "reading SEVIR HDF5 files"),
        (_netcdf, "xarray", "weather", "reading netCDF/Zarr"),
    ],
    ids=["kth-avi", "taxibj-h5", "sevir", "netcdf"],
)
def test_a_converter_without_its_extra_names_the_extra(
    tmp_path, monkeypatch, capsys, make, module, extra, purpose
):
    monkeypatch.chdir(tmp_path)
    args = make(tmp_path)
    _absent(monkeypatch, module)
    assert main([*args, "--workers", "1"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (
        f"stpdist: error: ImportError: {purpose} needs {module} ({module} is missing): "
        f"pip install 'stpdist[{extra}]'"
    ), lines
    assert not (tmp_path / "out").exists()


def test_a_sweep_without_wandb_names_the_extra(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "method: random\nmetric: {name: val/mse, goal: minimize}\n"
        "parameters:\n  model.optimizer.lr: {values: [0.001, 0.002]}\n"
    )
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "online")
    _absent(monkeypatch, "wandb")
    assert main(["sweep", str(config), str(sweep)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "stpdist: error: ImportError: a wandb sweep needs wandb (wandb is missing): "
        "pip install 'stpdist[wandb]'"
    )


def test_require_extra_names_a_missing_dependency_of_the_module(tmp_path, monkeypatch):
    """An extra's package that is there but lacks a package of its own: the one missing is
    named beside the module asked for."""
    from stpdist.errors import require_extra

    (tmp_path / "needs_more.py").write_text("import not_installed_here_at_all\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as info:
        require_extra("needs_more", "weather", "reading it")
    assert str(info.value) == (
        "reading it needs needs_more (not_installed_here_at_all is missing): "
        "pip install 'stpdist[weather]'"
    )
    assert require_extra("json", "none", "anything") is sys.modules["json"]
