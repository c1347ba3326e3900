"""Published VTAB-1k results that the report prints beside ours.

ViT-B/16 pre-trained on ImageNet-21k (the original Google checkpoint), top-1 %
on test after training on train800val200, as reported in the PEFT literature
(full fine-tuning, linear probing and LoRA as tabulated by NOAH / FacT; NOAH;
FacT; HST, the best we have seen).  Not re-run here.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "published, ViT-B/16 in21k"


@dataclass(frozen=True)
class PublishedRow:
    label: str
    method: str | None  # our method it corresponds to, if any
    mean_of_groups: float
    natural: float
    specialized: float
    structured: float

    def group(self, name: str) -> float:
        return getattr(self, name)


PUBLISHED: tuple[PublishedRow, ...] = (
    PublishedRow("full fine-tuning", "full", 68.9, 75.9, 83.4, 47.6),
    PublishedRow("linear probe", "linear", 57.6, 68.9, 77.2, 26.9),
    PublishedRow("LoRA r=8", "lora", 74.5, 79.5, 84.6, 59.8),
    PublishedRow("NOAH", None, 75.5, 80.3, 84.9, 61.3),
    PublishedRow("FacT", None, 75.6, 80.6, 85.3, 60.7),
    PublishedRow("best seen (HST)", None, 78.1, 82.8, 87.1, 64.5),
)
