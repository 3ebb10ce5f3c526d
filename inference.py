#!/usr/bin/env python3
"""Grand Challenge entry point for BONBID-HIE lesion segmentation.

Reads  /input/images/skull-stripped-adc-brain-mri/<one .mha>  and  /input/images/z-score-adc/<one .mha>
(when /input/inputs.json is there, the files of the two sockets it lists, after checking them: hieseg/gc_interface.py),
writes /output/images/hie-lesion-segmentation/overlay.mha (uint8 0/1, the ADC's exact grid).
The model is --model, else $HIESEG_MODEL_DIR, else /opt/ml/model when it holds a manifest.json (Grand Challenge's
model tarball), else ./model.
Run ``python inference.py --help`` for options; the multi-case tool is ``hieseg predict``.
"""

from pathlib import Path

from hieseg.cli import grand_challenge_main

INPUT_PATH = Path("/input")
OUTPUT_PATH = Path("/output")

if __name__ == "__main__":
    raise SystemExit(grand_challenge_main(input_dir=INPUT_PATH, output_dir=OUTPUT_PATH))
