"""Start the DSNet Explain web app: ``python app.py [--gallery DIR] [--zoo imagenette|imagenet]``.

Hugging Face Spaces runs this file as is (repository root, no arguments); GRADIO_SERVER_NAME /
GRADIO_SERVER_PORT and the DSNET_* settings in README are honoured.
"""

import argparse

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument(
    "--gallery",
    help="adds a sample of labelled images: <wnid>/*.JPEG or <wnid>_*.JPEG "
    "(default: $DSNET_GALLERY; the shipped examples are always there)",
)
parser.add_argument("--zoo", default="imagenette", help="the zoo selected at start")
args, _ = parser.parse_known_args()  # --help answers here, before Gradio and PyTorch are imported (seconds)

from app import build_app, launch
from app.layout import UnknownZoo
from app.settings import SettingsError

try:
    built = build_app(args.gallery, args.zoo)
except (SettingsError, UnknownZoo) as e:
    parser.exit(2, f"app.py: error: {e}\n")
demo = built.demo  # the Blocks, under the name Gradio's reload mode looks for

if __name__ == "__main__":
    launch(built, handle_sigterm=True)
