"""The fusion-classifier audit: what it measures (utility, membership attacks, robustness, reference models)
on the shared skeleton of :mod:`medforget.audit`."""
