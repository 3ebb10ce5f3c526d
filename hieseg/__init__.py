"""hieseg: HIE lesion segmentation on neonatal ADC / Z-ADC maps (BONBID-HIE).

Python API (see README, "Python API")::

    import hieseg
    mask, report = hieseg.segment("adc.mha", "zadc.mha")          # one case; mask: SimpleITK.Image on the ADC grid
    seg = hieseg.Segmenter(device="auto")                          # many cases: sessions created once
    mask, report = seg(adc_image, zadc_image)

Research software, not a medical device: not for clinical decisions (see MODEL_CARD.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hieseg.version import __version__

__all__ = ["Segmenter", "segment", "__version__"]

if TYPE_CHECKING:  # static checkers see the real signatures; at run time they load on first use
    from hieseg.app.api import Segmenter, segment


def __getattr__(name: str) -> Any:
    # Lazy, so that `import hieseg` (and the CLI's start, and build tools reading __version__) stays light:
    # the API pulls in numpy, SimpleITK and ONNX Runtime only when it is used.
    if name in ("Segmenter", "segment"):
        from hieseg.app import api

        return getattr(api, name)
    raise AttributeError(f"module 'hieseg' has no attribute {name!r}")
