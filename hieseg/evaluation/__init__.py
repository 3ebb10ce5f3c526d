"""Evaluation beside the product: the challenge's metrics, ``hieseg evaluate`` and the Z-ADC < -2 baseline."""
