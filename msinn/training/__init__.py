"""Training MS-INN: the rate-distortion loop with exact resume (``loop``), and data parallelism on Ray Train
(``distributed``). The ``msinn train`` command is :mod:`msinn.cli.train`."""
