"""What `pip install` builds: a quiet build, a wheel with every module, config and template, usable outside the
repository (every config composes from it, the Hydra sweeper is found), and a quiet editable install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("api", "policies", "tasks", "meta", "conf", "hydra_plugins")
TOP_FILES = ("setup.py", "pyproject.toml", "README.md", "LICENSE")
INSTALLED_AS = {"api": "maskpolicy", "policies": "maskpolicy/policies", "tasks": "maskpolicy/tasks",
                "meta": "maskpolicy/meta", "conf": "maskpolicy/conf", "hydra_plugins": "hydra_plugins"}
pytestmark = pytest.mark.slow


def source_copy(destination: Path) -> Path:
    """The files a build reads, copied, so that the build writes nothing into the repository."""
    for name in SOURCES:
        shutil.copytree(ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in TOP_FILES:
        shutil.copy2(ROOT / name, destination / name)
    return destination


def pip(*arguments: str, cwd: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "pip", *arguments, "--no-deps", "--no-build-isolation", "--quiet"],
                          cwd=cwd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                               "PYTHONWARNINGS": "ignore:Editable installation"})


def expected_files() -> set[str]:
    """Every module, config and template of the source folders, by its path inside the wheel."""
    found = set()
    for folder, target in INSTALLED_AS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml", ".j2") and "__pycache__" not in path.parts:
                found.add(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = source_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    built = pip("wheel", "-w", str(out), ".", cwd=source)
    assert built.returncode == 0, built.stderr
    assert "warning" not in (built.stdout + built.stderr).lower(), built.stdout + built.stderr
    (path,) = out.glob("maskpolicy-*.whl")
    return path


def test_the_wheel_holds_every_module_config_and_template(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = expected_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"


CHECK_FROM_WHEEL = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import maskpolicy, maskpolicy.conf
    from hydra import compose, initialize_config_module
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    conf = Path(maskpolicy.conf.__file__).parent
    primaries = sorted(p.stem for p in conf.glob("*.yaml"))
    options = sorted(str(p.relative_to(conf).with_suffix("")) for p in conf.rglob("*.yaml") if p.parent != conf)
    composed, failed = [], []
    with initialize_config_module("maskpolicy.conf", version_base="1.3"):
        for primary in primaries:
            compose(primary)
            composed.append(primary)
        for option in options:
            group, name = option.rsplit("/", 1)
            for primary in primaries:  # the first primary config whose defaults take the group
                try:
                    compose(primary, overrides=[f"{group}={name}"])
                except Exception:
                    continue
                composed.append(option)
                break
            else:
                failed.append(option)
    sweepers = [s.__name__ for s in Plugins.instance().discover(Sweeper)]
    print(json.dumps({"package": maskpolicy.__file__, "composed": composed, "failed": failed,
                      "options": len(options), "sweepers": sweepers}))
""")


def test_every_config_composes_from_the_unpacked_wheel_outside_the_repository(wheel, tmp_path):
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = subprocess.run([sys.executable, "-c", CHECK_FROM_WHEEL], cwd=work, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(unpacked)}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(unpacked), found["package"]  # not the editable checkout
    # tagger and logger options are not defaults of a primary config: they are added (+tagger=…, logger=[…])
    assert set(found["failed"]) <= {f"tagger/{p.stem}" for p in (ROOT / "conf/tagger").glob("*.yaml")} | {
        f"logger/{p.stem}" for p in (ROOT / "conf/logger").glob("*.yaml")}, found["failed"]
    assert {"pretrain", "search", "learn", "score", "identify"} <= set(found["composed"])
    assert found["options"] == len([p for p in (ROOT / "conf").rglob("*.yaml") if p.parent != ROOT / "conf"])
    assert "MaskpolicyOptunaSweeper" in found["sweepers"]


def test_an_editable_install_prints_nothing(tmp_path):
    """The Makefile's install, into a throwaway environment layered over this one (nothing downloaded)."""
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True, timeout=120)
    site = subprocess.run([str(environment / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    current = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "layered.pth").write_text("\n".join(current) + "\n")
    source = source_copy(tmp_path / "source")
    installed = pip("install", "-e", ".", cwd=source, python=str(environment / "bin" / "python"))
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout + installed.stderr == ""
    where = subprocess.run([str(environment / "bin" / "python"), "-c",
                            "import maskpolicy.policies as p; print(p.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(source), where.stdout + where.stderr
    # a plain Hydra app in another folder finds the sweeper in the editable install (Hydra's plugin scan walks
    # the hydra_plugins namespace's directories, which the editable install serves as a directory)
    sweep_from(tmp_path / "app", str(environment / "bin" / "python"), {}, source)


PLAIN_APP = textwrap.dedent("""
    import hydra
    import hydra_plugins.maskpolicy_optuna_sweeper as plugin


    @hydra.main(version_base=None, config_path=None, config_name=None)
    def parabola(cfg) -> float:
        print("plugin from", plugin.__file__)
        return (cfg.x - 1) ** 2
    if __name__ == "__main__":
        parabola()
""")


def sweep_from(folder: Path, python: str, environment: dict[str, str], installed: Path) -> None:
    """Sweeps a plain Hydra app in ``folder`` with hydra/sweeper=maskpolicy_optuna; the plugin is ``installed``'s."""
    folder.mkdir()
    (folder / "app.py").write_text(PLAIN_APP)
    done = subprocess.run([python, "app.py", "-m", "hydra/sweeper=maskpolicy_optuna", "+x=interval(-2.0,2.0)",
                           "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=minimize", "hydra.job.chdir=false",
                           f"hydra.sweep.dir={folder / 'sweep'}"], cwd=folder, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **environment}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (folder / "sweep" / "optimization_results.yaml").is_file()
    plugin = next(line for line in done.stdout.splitlines() if line.startswith("plugin from")).split(" ", 2)[2]
    assert Path(plugin).is_relative_to(installed), plugin


def test_a_plain_hydra_app_elsewhere_finds_the_sweeper_in_the_wheel(wheel, tmp_path):
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    sweep_from(tmp_path / "app", sys.executable, {"PYTHONPATH": str(unpacked)}, unpacked)
