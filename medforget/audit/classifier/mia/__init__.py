"""Membership-inference attacks, one per file, registered by class name in ``MembershipAttack.registry``."""

from medforget.audit.classifier.mia.base import MembershipAttack, attack_metrics
from medforget.core.registry import import_submodules

import_submodules(__name__, __path__)
globals().update({name: MembershipAttack.registry[name] for name in MembershipAttack.registry})

__all__ = ["MembershipAttack", "attack_metrics", *sorted(MembershipAttack.registry)]
