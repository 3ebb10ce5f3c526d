"""Inputs: finding cases, reading images with errors in words, checking pairs and the training domain, and the
Grand Challenge contract (sockets, folders). Depends on nothing of hieseg but ``errors``, ``files`` and
``lesions``."""
