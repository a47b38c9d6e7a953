"""The inference core: geometry, image I/O, intensity, preprocessing, the U-Net and its loading, inference,
post-processing and writers -- what the Slicer extension installs and the worker runs."""
