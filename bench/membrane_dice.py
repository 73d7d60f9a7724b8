"""Real-data check on ISBI-2012 membrane: train.py with default flags against the plain reference loop.

The membrane half of bench.quality (its docstring says what is measured): every side (train.py letterboxed,
train.py --crop, the reference loop) trains Unet/resnet18 from random weights at patch 256, batch 4, 10 epochs
on slices 0-23 of ../shared/data/membrane, and one function scores them on slices 24-29 at their own
512x512: the foreground Dice.

Usage:
    python3 -m bench.membrane_dice                  # same as python3 -m bench.quality --only membrane
    python3 -m bench.membrane_dice --epochs 20 --seed 1
    python3 -m bench.membrane_dice --quick          # 4 / 2 slices at 64x64, 1 epoch: checks the report only
"""

import sys

from bench import quality


def parse_args(argv=None):
    parser = quality.make_parser(__doc__, choose_dataset=False)
    parser.set_defaults(only="membrane")
    return parser.parse_args(argv)


def main(args):
    return quality.main(args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
