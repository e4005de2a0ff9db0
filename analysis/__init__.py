"""Tables and plots built from run logs (``config.yaml`` + ``metrics.jsonl``), never from printed text.

``load`` reads run directories (single runs, Hydra multiruns, sweeps) or a W&B project into
:class:`~analysis.load.Run` objects; ``tables`` and ``plots`` turn them into the paper's tables
and figures; ``compare.ipynb`` shows both.
"""
