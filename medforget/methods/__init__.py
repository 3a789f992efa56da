"""Unlearning methods: one base for both tasks (:mod:`medforget.methods.base`); the classifier methods in
:mod:`medforget.methods.classifier` and the language-model methods in :mod:`medforget.methods.lm`, one file each."""
