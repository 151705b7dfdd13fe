"""Installs the vmchecker package and every command in bin/."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="vmchecker",
    version="0.1.0",
    description="Automated grading of programming assignments in LXC, KVM, VMware and Docker guests",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["vmchecker", "vmchecker.*"]),
    package_data={"vmchecker": ["templates/*", "storer/web/templates/*", "storer/web/static/*",
                                "executor/guest/*"]},   # programs run inside a guest
    scripts=sorted(str(p) for p in Path("bin").glob("vmchecker-*")),
    install_requires=[
        "PyYAML>=6.0",
        "paramiko>=3.4",
        "cryptography>=3.3",
        "pyinotify>=0.9.6",
        "pyasyncore; python_version>='3.12'",
        "defusedxml>=0.7",
        "prometheus-client>=0.16",   # the daemons' metrics (Debian bookworm: python3-prometheus-client 0.16)
    ],
    extras_require={
        "lxc": ["lxc==3.0.4.0"],
        "kvm": ["libvirt-python"],
        "vmware": ["pyvmomi>=8"],
        "docker": ["docker>=7"],
        "web": ["Flask>=3.0", "waitress>=3.0", "ldap3>=2.9", "argon2-cffi>=23.1", "bcrypt>=4.0",
                "Pygments>=2.14"],   # a submission's files, highlighted on the server
        "test": ["pytest>=8", "hypothesis>=6", "ruff", "playwright>=1.40"],
    },
)
