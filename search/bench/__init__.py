"""Benchmarks: `search bench hpo` compares search strategies (samplers × pruners) over seeds.

Every benchmark trains through `search.objective.Objective` and `search.train.fit`: there is no
second training loop to drift from the one users search with.
"""
