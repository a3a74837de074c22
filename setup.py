"""The package list for setuptools; everything else is in pyproject.toml.

The source folders are installed under other import names (``policies`` → ``maskpolicy.policies``, see
``[tool.setuptools.package-dir]``), which automatic discovery cannot see from the repository root, so each
folder's packages are found inside it. Config folders hold YAML only: they are listed as namespace packages so
that setuptools installs their files without a warning per folder.
"""

from setuptools import find_namespace_packages, setup

FOLDERS = {"maskpolicy": "api", "maskpolicy.policies": "policies", "maskpolicy.tasks": "tasks",
           "maskpolicy.meta": "meta", "maskpolicy.conf": "conf"}


def packages() -> list[str]:
    # hydra_plugins is a namespace that Hydra scans; listed, an editable install serves it as a directory
    found = ["hydra_plugins", "hydra_plugins.maskpolicy_optuna_sweeper"]
    for name, folder in FOLDERS.items():
        found += [name, *(f"{name}.{sub}" for sub in find_namespace_packages(folder, exclude=["*__pycache__*"]))]
    return sorted(found)


setup(packages=packages())
