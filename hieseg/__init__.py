"""hieseg: HIE lesion segmentation on neonatal ADC / Z-ADC maps (BONBID-HIE)."""

__version__ = "0.1.0"
