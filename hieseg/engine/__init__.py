"""The engine: the model manifest, execution providers and sessions, pre-processing, tiled inference, the
ensemble loop and post-processing. Depends on ``inputs`` (geometry, domain) and the bottom modules only."""
