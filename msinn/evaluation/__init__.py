"""Measuring the codec: real-coding rate-distortion evaluation against classical codecs (``rd``), its tables,
JSON and plot (``report``), and the Bjontegaard delta rate (``bdrate``). The ``msinn eval`` command is
:mod:`msinn.cli.eval`."""
