#!/usr/bin/env python3
"""Writes tests/FateLlm.Tests/Fixtures/dpo/loss.json: DPO's loss and its gradient on fixed log-probabilities, as TRL's
DPOTrainer.dpo_loss computes them (written out here in PyTorch, independently of FateLlm):
  logits = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
  sigmoid: -logsigmoid(beta * logits) * (1 - eps) - logsigmoid(-beta * logits) * eps      (eps: cDPO label smoothing)
  ipo:     (logits - 1 / (2 * beta)) ** 2
  rewards: beta * (pi - ref), detached; the loss is the mean over pairs.
Gradients are of the mean loss with respect to the policy's chosen and rejected log-probabilities.
Dev-only (python3-torch); CI uses the committed output. Run: /usr/bin/python3 tests/reference/make_dpo_fixtures.py"""
import json, os
import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "..", "FateLlm.Tests", "Fixtures", "dpo")
POLICY_CHOSEN = [-12.5, -30.25, -8.0, -20.0]
POLICY_REJECTED = [-14.0, -29.0, -9.5, -25.5]
REF_CHOSEN = [-13.0, -31.0, -8.25, -19.0]
REF_REJECTED = [-13.5, -30.5, -9.0, -24.0]
CASES = [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.1), ("ipo", 0.1, 0.0)]


def case(loss_type, beta, eps):
    pc = torch.tensor(POLICY_CHOSEN, dtype=torch.float64, requires_grad=True)
    pr = torch.tensor(POLICY_REJECTED, dtype=torch.float64, requires_grad=True)
    rc = torch.tensor(REF_CHOSEN, dtype=torch.float64)
    rr = torch.tensor(REF_REJECTED, dtype=torch.float64)
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    else:
        losses = (logits - 1 / (2 * beta)) ** 2
    loss = losses.mean()
    loss.backward()
    return {"loss": loss_type, "beta": beta, "label_smoothing": eps, "losses": losses.tolist(), "mean": loss.item(),
            "grad_chosen": pc.grad.tolist(), "grad_rejected": pr.grad.tolist(),
            "chosen_rewards": (beta * (pc - rc)).tolist(), "rejected_rewards": (beta * (pr - rr)).tolist()}


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "loss.json"), "w") as f:
        json.dump({"policy_chosen": POLICY_CHOSEN, "policy_rejected": POLICY_REJECTED, "reference_chosen": REF_CHOSEN,
                   "reference_rejected": REF_REJECTED, "cases": [case(*c) for c in CASES]}, f, indent=1)
    print("dpo fixture written to", os.path.abspath(OUT))
