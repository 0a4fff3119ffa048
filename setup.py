"""Build script. `kernels/` (Triton) ships inside the package as `fastgrpo.kernels`."""
from setuptools import find_packages, setup

packages = find_packages(include=["fastgrpo", "fastgrpo.*"]) + ["fastgrpo.kernels"]

setup(
    packages=packages,
    package_dir={"fastgrpo.kernels": "kernels"},
)
