"""A plain Flower FedAvg app (quickstart style) over FedCommons' CNN and data.

Used only as the baseline of ``bench/round_latency.py``: Flower's defaults
everywhere (``FedAvg()``, ``grid.send_and_receive``), the same model, training
code and partition files as FedCommons.
"""
