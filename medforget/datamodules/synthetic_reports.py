"""The synthetic hospital's radiology reports (:mod:`medforget.datamodules.synthetic`): the *text* severity phrased
with synonyms, negations, hedges, vague non-committal findings, devices, distractors and typos."""

from __future__ import annotations

import numpy as np

# --- report vocabulary --------------------------------------------------------------------------------------------
FINDINGS: dict[int, tuple[str, ...]] = {
    0: (
        "No pulmonary edema.",
        "No evidence of pulmonary vascular congestion or edema.",
        "The lungs are clear.",
        "Pulmonary vasculature is within normal limits.",
        "No focal consolidation or edema.",
        "Lungs are well expanded and clear without edema.",
    ),
    1: (
        "Mild pulmonary vascular congestion.",
        "Cephalization of the pulmonary vasculature.",
        "Engorged hilar vessels without frank edema.",
        "Mild vascular engorgement.",
        "Upper zone vascular redistribution is noted.",
        "Pulmonary venous hypertension without interstitial edema.",
    ),
    2: (
        "Interstitial pulmonary edema.",
        "Kerley B lines at the lung bases.",
        "Peribronchial cuffing and interstitial opacities.",
        "Moderate pulmonary edema with interstitial markings.",
        "Septal thickening consistent with interstitial edema.",
        "Increased interstitial markings compatible with moderate edema.",
    ),
    3: (
        "Alveolar pulmonary edema.",
        "Bilateral perihilar airspace opacities consistent with alveolar edema.",
        "Severe pulmonary edema.",
        "Bat-wing airspace consolidation.",
        "Diffuse alveolar opacities compatible with severe edema.",
        "Extensive bilateral airspace disease consistent with severe edema.",
    ),
}


NEGATED = {  # phrases that mention a finding only to deny it (bag-of-words traps)
    0: ("No Kerley B lines.", "No alveolar edema.", "No interstitial edema is seen."),
    1: ("No interstitial edema.", "No alveolar opacities."),
    2: ("No alveolar edema.",),
    3: (),
}


HEDGES = ("Possible", "Probable", "Likely", "Cannot exclude", "Suspected", "Findings may represent")


VAGUE = (
    "Limited portable study due to patient positioning.",
    "Lung volumes are low, limiting evaluation.",
    "Evaluation of the lung parenchyma is limited by overlying soft tissue.",
    "No significant interval change.",
    "Findings are similar to the prior examination.",
)


DISTRACTORS = (
    "Heart size is normal.",
    "Mild cardiomegaly.",
    "Small bilateral pleural effusions.",
    "No pneumothorax.",
    "Degenerative changes of the thoracic spine.",
    "Endotracheal tube terminates 4 cm above the carina.",
    "Right PICC line tip in the lower SVC.",
    "Nasogastric tube courses below the diaphragm.",
    "Atelectasis at the left base.",
    "Calcified aortic knob.",
)


INDICATIONS = (
    "Shortness of breath.",
    "Evaluate for fluid overload.",
    "Dyspnea, history of heart failure.",
    "Hypoxia.",
    "Chest pain.",
    "Status post fluid resuscitation.",
    "Increasing oxygen requirement.",
)


DEVICES = {
    "sternotomy": "Median sternotomy wires are intact.",
    "pacemaker": "Left chest wall pacemaker with leads in the right atrium and ventricle.",
    "clips": "Surgical clips in the right upper quadrant.",
}


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 2))
    op = rng.integers(3)
    if op == 0:  # swap
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == 1:  # drop
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]  # double


def write_report(
    text_class: int | None, devices: list[str], rng: np.random.Generator, typo_rate: float = 0.02
) -> str:
    """A radiology report stating ``text_class`` (None: vague, no edema statement)."""
    findings: list[str] = []
    if text_class is None:
        findings.append(str(rng.choice(VAGUE)))
        impression = "No acute cardiopulmonary process identified on this limited study."
    else:
        phrase = str(rng.choice(FINDINGS[text_class]))
        if text_class > 0 and rng.random() < 0.2:
            phrase = f"{rng.choice(HEDGES)} {phrase[0].lower()}{phrase[1:]}"
        findings.append(phrase)
        if NEGATED[text_class] and rng.random() < 0.5:
            findings.append(str(rng.choice(NEGATED[text_class])))
        impression = str(rng.choice(FINDINGS[text_class]))
    findings += [DEVICES[d] for d in devices]
    findings += list(rng.choice(DISTRACTORS, size=int(rng.integers(1, 4)), replace=False))
    order = rng.permutation(len(findings))
    body = " ".join(findings[i] for i in order)
    words = body.split(" ")
    words = [_typo(w, rng) if rng.random() < typo_rate else w for w in words]
    return (
        "EXAMINATION: Chest radiograph, portable AP.\n"
        f"INDICATION: {rng.choice(INDICATIONS)}\n"
        f"FINDINGS: {' '.join(words)}\n"
        f"IMPRESSION: {impression}"
    )
