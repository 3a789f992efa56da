"""Language-model unlearning of patient records in clinical notes (issue 6): the clinical LM system, its export, and
(next) the unlearning methods and LM evaluation."""
