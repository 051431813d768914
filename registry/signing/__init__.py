"""OpenSSF model signatures (``model-signing``): signing what ``push`` uploads (``sign``), the trust store's
material (``trust``), verifying a bundle and matching its manifest to the bytes (``bundles``,
``archive_files``).  Used by the client, the registry's server and the pod's runtime."""
