"""EC2's eventual consistency, as AWS documents it, for the lab's API.

AWS: "the result of an API command you run that affects your Amazon EC2 resources might
not be immediately visible to all subsequent commands you run" (EC2 API reference,
"Eventual consistency in the Amazon EC2 API"). The cases a deploy meets:

- an instance just launched is `InvalidInstanceID.NotFound` to DescribeInstances and
  CreateTags for a moment;
- an image just created or copied is `InvalidAMIID.NotFound` to DescribeImages and
  CreateTags;
- a snapshot whose image was just deregistered is still `InvalidSnapshot.InUse` to
  DeleteSnapshot.

moto answers all of them at once; these hooks make it answer as AWS may, for `window`
seconds after the change (the lab's default is short, and on in every test), so the
tool is seen to treat them as "not yet" rather than fail or, worse, go on without tags.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from moto.ec2.exceptions import InvalidAMIIdError, InvalidInstanceIdError, InvalidSnapshotInUse
from moto.ec2.models.amis import AmiBackend
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.models.instances import InstanceBackend
from moto.ec2.models.tags import TagBackend

DEFAULT_WINDOW = 0.5
SETTLING: Settling | None = None  # this process's, once installed (tests widen it)


class Settling:
    """Ids that are not yet visible, and snapshots not yet released, until a deadline."""

    def __init__(self, window: float):
        self.window = window
        self._until: dict[str, float] = {}
        self._released: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def changed(self, *resource_ids: str) -> None:
        with self._lock:
            for rid in resource_ids:
                self._until[rid] = time.monotonic() + self.window

    def unsettled(self, resource_ids: list[str] | None) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [r for r in resource_ids or [] if self._until.get(r, 0.0) > now]

    def released(self, snapshot_id: str, image_id: str) -> None:
        with self._lock:
            self._released[snapshot_id] = (image_id, time.monotonic() + self.window)

    def still_used_by(self, snapshot_id: str) -> str | None:
        """The image a snapshot was just released from, while that has not settled."""
        with self._lock:
            image_id, until = self._released.get(snapshot_id, ("", 0.0))
        return image_id if until > time.monotonic() else None


def install(window: float) -> Settling:
    """Wrap moto's EC2 backend so fresh changes settle over `window` seconds (0: at
    once, as moto itself answers)."""
    global SETTLING
    settling = SETTLING = Settling(window)
    run_instances = InstanceBackend.run_instances
    reservations_by_ids = InstanceBackend.get_reservations_by_instance_ids
    create_image = AmiBackend.create_image
    copy_image = AmiBackend.copy_image
    describe_images = AmiBackend.describe_images
    deregister_image = AmiBackend.deregister_image
    create_tags = TagBackend.create_tags
    delete_snapshot = EBSBackend.delete_snapshot

    def not_found(ids: list[str]) -> Exception:
        return (InvalidAMIIdError(ids) if ids[0].startswith("ami-")
                else InvalidInstanceIdError(ids))

    def lab_run_instances(self: Any, *args: Any, **kw: Any) -> Any:
        reservation = run_instances(self, *args, **kw)
        settling.changed(*(i.id for i in reservation.instances))
        return reservation

    def lab_reservations_by_ids(self: Any, instance_ids: list[str], *args: Any,
                                **kw: Any) -> Any:
        if fresh := settling.unsettled(instance_ids):
            raise not_found(fresh)
        return reservations_by_ids(self, instance_ids, *args, **kw)

    def lab_create_image(self: Any, *args: Any, **kw: Any) -> Any:
        ami = create_image(self, *args, **kw)
        settling.changed(ami.id)
        return ami

    def lab_copy_image(self: Any, *args: Any, **kw: Any) -> Any:
        ami = copy_image(self, *args, **kw)
        settling.changed(ami.id)
        return ami

    def lab_describe_images(self: Any, ami_ids: list[str] | None = None, *args: Any,
                            **kw: Any) -> Any:
        if fresh := settling.unsettled(ami_ids):
            raise not_found(fresh)
        return describe_images(self, ami_ids, *args, **kw)

    def lab_deregister_image(self: Any, ami_id: str) -> Any:
        ami = self.amis.get(ami_id)
        snapshot = getattr(ami, "ebs_snapshot", None)
        result = deregister_image(self, ami_id)
        if snapshot is not None:
            settling.released(snapshot.id, ami_id)
        return result

    def lab_delete_snapshot(self: Any, snapshot_id: str) -> Any:
        if image_id := settling.still_used_by(snapshot_id):
            raise InvalidSnapshotInUse(snapshot_id, image_id)
        return delete_snapshot(self, snapshot_id)

    def lab_create_tags(self: Any, resource_ids: list[str], tags: dict[str, str]) -> Any:
        if fresh := settling.unsettled(resource_ids):
            raise not_found(fresh)
        return create_tags(self, resource_ids, tags)

    InstanceBackend.run_instances = lab_run_instances
    InstanceBackend.get_reservations_by_instance_ids = lab_reservations_by_ids
    AmiBackend.create_image = lab_create_image
    AmiBackend.copy_image = lab_copy_image
    AmiBackend.describe_images = lab_describe_images
    AmiBackend.deregister_image = lab_deregister_image
    EBSBackend.delete_snapshot = lab_delete_snapshot
    TagBackend.create_tags = lab_create_tags
    return settling
