"""Batched passes of a :class:`~medforget.systems.lm.ClinicalLM`: per-sequence answer NLL, per-token log-probabilities
(with the next-token distribution's mean and spread for Min-K%++) and greedy generation with left padding."""

from __future__ import annotations

import torch

from medforget.audit.lm.mia import TokenScores
from medforget.models.causal_lm import EOS_ID
from medforget.systems.lm import ClinicalLM


@torch.no_grad()
def score_texts(model: ClinicalLM, prompts: list[str], texts: list[str], batch_size: int = 64,
                stats: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[TokenScores] | None]:
    """Summed NLL of each text's labelled tokens (what follows its prompt, and ``</s>``) and their count, in batches.

    Args:
        model: The language model (evaluated in eval mode on its device).
        prompts: Context of each text (``""``: every token of the text is scored).
        texts: The texts (each starts with its prompt).
        batch_size: Sequences per forward pass.
        stats: Also return every text's :class:`TokenScores` (token log-probabilities, and Min-K%++'s ``mu`` and
            ``sigma`` of the log-probability under each next-token distribution).

    Returns:
        ``(nll_sum (N,), count (N,), token scores or None)``.
    """
    model.eval()
    nll, counts, tokens = [], [], []
    for i in range(0, len(texts), batch_size):
        batch = model.encode(prompts[i: i + batch_size], texts[i: i + batch_size])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = model(batch).logits[:, :-1]  # (B, T-1, V)
        target = batch["labels"][:, 1:]  # (B, T-1)
        mask = target != -100
        logp_all = torch.log_softmax(logits.float(), -1)  # (B, T-1, V)
        logp = logp_all.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask  # (B, T-1)
        nll.append(-logp.sum(1).float().cpu())
        counts.append(mask.sum(1).cpu())
        if stats:
            p = logp_all.exp()
            mu = (p * logp_all).sum(-1)  # (B, T-1)
            sigma = (p * (logp_all - mu.unsqueeze(-1)).square()).sum(-1).sqrt()  # (B, T-1): centred, no cancellation
            for row in range(len(target)):
                keep = mask[row]
                tokens.append(TokenScores(logp[row][keep].cpu().numpy(), mu[row][keep].cpu().numpy(),
                                          sigma[row][keep].cpu().numpy()))
    empty = torch.zeros(0)
    return (torch.cat(nll) if nll else empty, torch.cat(counts) if counts else empty.long(),
            tokens if stats else None)


@torch.no_grad()
def greedy_generate(model: ClinicalLM, prompts: list[str], max_new_tokens: int = 48,
                    batch_size: int = 64) -> list[str]:
    """Greedy continuations of ``prompts`` (without the prompt), batched with left padding; the same text as
    :meth:`ClinicalLM.generate_answers` one prompt at a time."""
    model.eval()
    tokenizer = model.tokenizer
    eos = getattr(tokenizer, "eos_token_id", None)
    eos = EOS_ID if eos is None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i: i + batch_size]
        enc = model.encode(chunk, chunk)
        rows = []
        for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True):
            row = ids[mask.bool()].tolist()
            rows.append(row[:-1] if len(row) > 1 and row[-1] == eos else row)  # drop </s>: continue the prompt
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            input_ids[j, width - len(row):] = torch.tensor(row)
            attention[j, width - len(row):] = 1
        generated = model.lm.generate(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=EOS_ID if model.hparams.pretrained is None else None,
                                      pad_token_id=pad)
        out += [tokenizer.decode(g[width:], skip_special_tokens=True).strip() for g in generated]
    return out
