"""Membership-inference attacks, one per file, registered by class name in ``MembershipAttack.registry``."""

import importlib
import pkgutil

from medforget.evaluation.mia.base import MembershipAttack, attack_metrics

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
globals().update(MembershipAttack.registry)

__all__ = ["MembershipAttack", "attack_metrics", *sorted(MembershipAttack.registry)]
