"""How much a frozen representation knows: kNN and linear-probe accuracy, a 2D projection.

Pure torch. ``features (N, D)`` float, ``labels (N,)`` int64 class indices in
``[0, C)``. The probes fit on a train set and score a disjoint test set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(features: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"{name}: expected features (N, D) and labels (N,), got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                k: int, num_classes: int, temperature: float = 0.07) -> torch.Tensor:
    """Class of each test row by a similarity-weighted vote of its k nearest (cosine) train rows.

    Weights are ``exp(cos / temperature)`` as in the instance-discrimination kNN
    monitor (Wu et al., 2018). Returns int64 (M,).
    """
    _check(train_features, train_labels, "train")
    k = min(k, len(train_features))
    similarity = F.normalize(test_features, dim=1) @ F.normalize(train_features, dim=1).t()
    top_similarity, top_index = similarity.topk(k, dim=1)
    votes = torch.zeros(len(test_features), num_classes, dtype=similarity.dtype)
    votes.scatter_add_(1, train_labels[top_index], (top_similarity / temperature).exp())
    return votes.argmax(1)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20) -> float:
    _check(test_features, test_labels, "test")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    predicted = knn_predict(train_features, train_labels, test_features, k, num_classes)
    return float((predicted == test_labels).float().mean())


def linear_probe_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor,
                          test_features: torch.Tensor, test_labels: torch.Tensor,
                          weight_decay: float = 1e-3, max_iter: int = 200) -> float:
    """Multinomial logistic regression on standardised features (L-BFGS, L2 penalty).

    Features are standardised with the train set's mean and std; the penalty is
    ``weight_decay * ||W||^2`` added to the mean cross entropy. Deterministic.
    """
    _check(train_features, train_labels, "train")
    _check(test_features, test_labels, "test")
    train_features, test_features = train_features.double(), test_features.double()
    mean, std = train_features.mean(0), train_features.std(0).clamp(min=1e-6)
    train_x, test_x = (train_features - mean) / std, (test_features - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight = torch.zeros(train_x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (test_x @ weight + bias).argmax(1)
    return float((predicted == test_labels).float().mean())


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """Project ``(N, D)`` features onto their first two principal components: ``(N, 2)``."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"expected (N, D) features with N >= 2, got {tuple(features.shape)}")
    centred = features.double() - features.double().mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    components = v[:2].t()
    if components.shape[1] < 2:  # a 1-dim feature space: pad a zero axis
        components = F.pad(components, (0, 2 - components.shape[1]))
    return (centred @ components).float()
