"""Evaluation: utility metrics, membership-inference attacks and the audit."""
