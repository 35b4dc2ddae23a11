"""The C accelerators for wheels and non-editable installs (``pip install .``, the Docker
image). A checkout builds them with ``python -m fluxrec.native`` (``make venv``), which
uses the same flags; see fluxrec/native.py. Both are optional: without a C compiler the
install goes on and each user keeps its numpy / Arrow path (same results, slower)."""

from setuptools import Extension, setup

FLAGS = ["-O3", "-std=c11"]

setup(
    ext_modules=[
        Extension(
            "featurize._fast",
            ["featurize/_fast.c"],
            extra_compile_args=FLAGS,
            libraries=["m"],
            optional=True,
        ),
        Extension(
            "exporter.sdk._probe",
            ["exporter/sdk/_probe.c"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
    ]
)
