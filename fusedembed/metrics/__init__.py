"""Evaluation metrics of the four systems. Every metric returns a plain ``dict`` of floats;
ratios (recall, precision, F1, mAP, accuracy) are in percent, ranks in positions.

Ties between equal scores are broken pessimistically by default (``ties="pessimistic"``: a
non-matching item with the same score ranks first), so constant embeddings score at chance
level or below, never perfect; ``ties="optimistic"`` gives the other bound.

* retrieval: ``retrieval_metrics(img, txt, txt_to_img, ks=(1, 5, 10), ties, median, block,
  image_labels=None)``, ``coco_retrieval(img, txt, txt_to_img, folds=5, ...)``,
  ``retrieval_ranks``, ``target_ranks``, ``label_ranks(queries, gallery, query_labels,
  gallery_labels)``, ``recall_summary(ranks, ks, median, prefix)``; from a given (images,
  captions) score matrix: ``score_retrieval_metrics(scores, txt_to_img, ...)``,
  ``score_coco_retrieval``, ``score_retrieval_ranks``; ``chance_retrieval_metrics(num_images,
  captions_per_image, ks)`` (a random ranking's expected R@k)
* multi-label: ``multilabel_topk(scores, targets, ks=(5, 10), threshold=0.5, ties)``,
  ``multilabel_map(scores, targets, threshold=0.5, ties, classes=None)``,
  ``multilabel_class_ap(scores, targets, threshold=0.5, ties)`` (per class, NaN without positives)
* instance retrieval: ``holidays_map(emb, groups, queries=None, ap="trapezoid")``,
  ``instance_map(query, gallery, query_labels, gallery_labels, exclude=None, ...)``,
  ``listed_map(query, gallery, positives, junk=None)`` (per-query lists, junk ignored),
  ``ukbench_score(emb, groups=None)``, ``copy_recall(query, gallery, query_to_gallery, ks)``
* alignment: ``alignment_metrics(assignment, truth, lengths=None, groups=None)``
* classification: ``topk_accuracy(scores, labels, ks=(1, 5), ties)``, ``class_ranks(scores,
  labels, ties)`` and ``accuracy_from_ranks(ranks, ks)`` (ranks gathered over batches)
"""

from .alignment import alignment_metrics
from .classification import accuracy_from_ranks, class_ranks, topk_accuracy
from .instance import copy_recall, holidays_map, instance_map, listed_map, trapezoid_ap, ukbench_score
from .multilabel import average_precision, multilabel_class_ap, multilabel_map, multilabel_topk
from .retrieval import (
                        chance_retrieval_metrics,
                        coco_retrieval,
                        label_ranks,
                        recall_summary,
                        retrieval_metrics,
                        retrieval_ranks,
                        score_coco_retrieval,
                        score_retrieval_metrics,
                        score_retrieval_ranks,
                        target_ranks,
)

__all__ = [
    "alignment_metrics", "accuracy_from_ranks", "class_ranks", "topk_accuracy", "copy_recall", "holidays_map", "instance_map", "listed_map", "trapezoid_ap",
    "ukbench_score", "average_precision", "multilabel_class_ap", "multilabel_map", "multilabel_topk",
    "coco_retrieval", "label_ranks", "recall_summary", "retrieval_metrics", "retrieval_ranks", "target_ranks",
    "chance_retrieval_metrics", "score_coco_retrieval", "score_retrieval_metrics", "score_retrieval_ranks",
]
