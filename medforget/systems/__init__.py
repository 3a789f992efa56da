"""LightningModules: the training recipes of the fusion classifier and the clinical language model."""
