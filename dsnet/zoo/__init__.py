"""The verified model zoo: the manifest (``manifest``), weight files checked by SHA-256 before they are
deserialised (``weights``) and the loader that finds, downloads, verifies and caches them (``loader``).

``python -m dsnet.zoo`` lists and fetches the zoo's files.
"""
