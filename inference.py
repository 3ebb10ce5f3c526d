#!/usr/bin/env python3
"""Grand Challenge entry point for BONBID-HIE lesion segmentation.

Reads the skull-stripped ADC and Z-ADC input sockets under /input (the files /input/inputs.json lists, after
checking them, else the socket folders), writes the lesion mask to the output socket under /output (uint8 0/1, the
ADC's exact grid). The sockets, their folders and file names are in hieseg/gc_interface.py, the one place for them.
The model is --model, else $HIESEG_MODEL_DIR, else /opt/ml/model when it holds a manifest.json (Grand Challenge's
model tarball), else ./model.
Run ``python inference.py --help`` for options; the multi-case tool is ``hieseg predict``.
"""

from hieseg.app.cli import grand_challenge_main

if __name__ == "__main__":
    raise SystemExit(grand_challenge_main())
