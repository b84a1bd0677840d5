"""Package layout that pyproject.toml cannot express: the top-level `pipelines/` directory
ships inside the wheel as `worker/pipelines/` (package data), so installed copies find
the default pipeline files without a checkout (see worker/resources.py). Everything
else about the package is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    # namespace packages too: worker/seed, worker/dashboard/page and the migrations hold data, not __init__.py
    packages=[*find_namespace_packages(include=["worker*", "schemas*"], exclude=["*__pycache__*"]), "worker.pipelines"],
    package_dir={"worker.pipelines": "pipelines"},
)
