"""Regenerates what the docs show from the code: the jobs' configuration reference in
docs/jobs.md (from the option declarations in spark_gmm/config.py) and, with ``--images``,
the demo's plots in docs/images/ (the fit job on the demo data, then the select job).

    .venv/bin/python docs/generate.py [--images]

``tests/test_jobs.py`` fails when docs/jobs.md's reference differs from the declarations.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
START, END = "<!-- reference:start -->", "<!-- reference:end -->"
# docs/images/<name>: the report plot it is a copy of (fit job, or select job for criteria)
IMAGES = {
    "density_x.png": "fit",
    "clusters_x_y.png": "fit",
    "log_likelihood.png": "fit",
    "criteria.png": "select",
}


def with_reference(text: str) -> str:
    """docs/jobs.md's text with the generated reference between its markers."""
    sys.path.insert(0, str(REPO))
    from spark_gmm.config import reference_section

    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{reference_section()}\n{END}{after}"


def make_images() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fit_out, select_out = Path(tmp) / "demo", Path(tmp) / "select"
        python = sys.executable
        subprocess.run(
            [
                python,
                REPO / "jobs" / "fit.py",
                "--demo",
                "--output",
                fit_out,
                "--sample-size",
                "3000",
            ],
            check=True,
        )
        subprocess.run(
            [
                python,
                REPO / "jobs" / "select_model.py",
                "--input",
                fit_out / "data",
                "--input-cols",
                "x,y,z",
                "--k-values",
                "2-7",
                "--covariance-types",
                "full,diag,spherical",
                "--output",
                select_out,
            ],
            check=True,
        )
        for name, job in IMAGES.items():
            source = (fit_out if job == "fit" else select_out) / "report" / name
            shutil.copyfile(source, DOCS / "images" / name)
            print(f"docs/images/{name} <- {source.name} of the {job} job")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images",
        action="store_true",
        help="also run the demo jobs and copy their plots to docs/images/",
    )
    args = parser.parse_args(argv)
    jobs = DOCS / "jobs.md"
    jobs.write_text(with_reference(jobs.read_text()))
    print("docs/jobs.md: configuration reference regenerated")
    if args.images:
        make_images()
    return 0


if __name__ == "__main__":
    sys.exit(main())
