"""kNN top-1 accuracy of encoder features: how good pretraining is, measured on labelled data.

Leave-one-out over the labelled validation set: each image is classified by its k nearest neighbours among
the others (cosine similarity), votes weighted by exp(sim / T), as in the kNN monitors of InstDisc and DINO.
No training labels are needed, so it works when the pretraining data is unlabelled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_accuracy(
    feats: torch.Tensor, labels: torch.Tensor, k: int = 20, temperature: float = 0.07, chunk: int = 1024
) -> float:
    """Leave-one-out kNN top-1 accuracy in [0, 1]. feats: [N, D], labels: [N] (int)."""
    n = feats.shape[0]
    if n < 2:
        raise ValueError("kNN accuracy needs at least 2 labelled images")
    k = min(k, n - 1)
    feats = F.normalize(feats.float(), dim=1)
    labels = labels.long()
    num_classes = int(labels.max()) + 1
    correct = 0
    for start in range(0, n, chunk):
        q = feats[start : start + chunk]  # [B, D]
        sim = q @ feats.T  # [B, N]
        idx = torch.arange(start, start + q.shape[0], device=feats.device)
        sim[torch.arange(q.shape[0]), idx] = -float("inf")  # leave the query itself out
        top_sim, top_idx = sim.topk(k, dim=1)  # [B, k]
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=feats.device)
        votes.scatter_add_(1, labels[top_idx], weights)
        correct += int((votes.argmax(dim=1) == labels[start : start + q.shape[0]]).sum())
    return correct / n
