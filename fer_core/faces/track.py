"""Following faces across video frames by box overlap (IoU), greedy, best overlaps first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fer_core.faces.face import iou


@dataclass
class Track:
    id: int
    box: Sequence[float]
    missed: int = 0


@dataclass
class IouTracker:
    """A face keeps its id while its box overlaps the track's last box by ``min_iou``; a track
    unseen for more than ``max_missed`` sampled frames ends, and new faces get new ids."""

    min_iou: float = 0.3
    max_missed: int = 5
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1

    def update(self, boxes: Sequence[Sequence[float]]) -> list[int]:
        """The track id of each box of this frame."""
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
                       reverse=True)
        ids: list[int | None] = [None] * len(boxes)
        used: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < self.min_iou:
                break
            if ti in used or ids[bi] is not None:
                continue
            used.add(ti)
            ids[bi] = self.tracks[ti].id
            self.tracks[ti].box, self.tracks[ti].missed = boxes[bi], 0
        for ti, track in enumerate(self.tracks):
            if ti not in used:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for bi, box in enumerate(boxes):
            if ids[bi] is None:
                ids[bi] = self.next_id
                self.tracks.append(Track(self.next_id, box))
                self.next_id += 1
        return [int(i) for i in ids]  # type: ignore[arg-type]
