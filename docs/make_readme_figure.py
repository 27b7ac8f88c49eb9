"""Draw docs/images/demo_noise_ceiling.png, the README's figure: the noise ceiling of a demo participant on
the flattened cortex of the template subject S1. Run from the repository root:

    python docs/make_readme_figure.py [--data demo_output/data]

It builds the demo dataset there first if it is missing (as `make demo` does).
"""

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from bt_utils.data import noise_ceiling_table, open_dataset, subject_layout
from bt_utils.viz import save_maps

FIGURE = Path(__file__).resolve().parent / "images" / "demo_noise_ceiling.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="demo_output/data", help="the demo dataset (built if missing)")
    parser.add_argument("--subject", default="DEMO01")
    args = parser.parse_args()
    dataset = open_dataset(args.data, build_demo_if_missing=True)
    table = noise_ceiling_table(dataset, args.subject)
    with tempfile.TemporaryDirectory() as folder:
        [path] = save_maps({"noise_ceiling": table.cc_max.to_numpy()}, subject_layout(dataset, args.subject),
                           folder, ["pycortex"], kind={"noise_ceiling": "noise_ceiling"})
        FIGURE.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").quantize(128).save(FIGURE, optimize=True)  # a third of the size
    print("wrote", FIGURE)


if __name__ == "__main__":
    main()
