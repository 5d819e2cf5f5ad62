"""Garbage collection: what crashed runs left behind, found by the tags every run puts
on what it creates, and removed only when it is provably unused.

Never removed: an instance registered in the environment's target group (in any state,
draining included), anything of the run holding the deploy lock (and the hosts its
promotion replaced, which it may still put back until it records), the images the record
names (live and previous: the rollback targets), and the newest `keep_images` images
per region. Everything else tagged with the environment and older than the TTL goes:
instances are terminated, images deregistered with their snapshots, lone snapshots
deleted; the host keys kept for an instance (SSM) go once the instance is gone.
Deciding (`select`) is pure; `collect` reads AWS and `remove` acts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from deploylib import aws, config, live, parallel


@dataclass(frozen=True)
class Item:
    kind: str  # instance | image | snapshot | hostkey
    region: str
    resource_id: str
    run_id: str
    created: float  # epoch seconds
    snapshots: tuple[str, ...] = ()
    role: str = ""
    retiring: str = ""  # the run whose promotion replaced this host


@dataclass
class Verdict:
    remove: list[Item] = field(default_factory=list)
    keep: list[tuple[Item, str]] = field(default_factory=list)


def _epoch(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


def select(items: list[Item], *, registered: set[str], live_images: set[str],
           locked_run: str | None, keep_images: int, older_than: float,
           now: float) -> Verdict:
    """Which items to remove and, for the rest, why they stay."""
    verdict = Verdict()
    newest: set[str] = set()
    cache: set[str] = set()
    for region in {i.region for i in items}:
        images = sorted((i for i in items if i.kind == "image" and i.region == region),
                        key=lambda i: i.created, reverse=True)
        releases = [i for i in images if i.role != "foundation"]
        newest |= {i.resource_id for i in releases[:keep_images]}
        cache |= {i.resource_id for i in [i for i in images if i.role == "foundation"][:1]}
    for item in [i for i in items if i.kind != "snapshot"]:
        if item.kind == "hostkey":  # collected only once its instance is gone
            verdict.remove.append(item)
            continue
        if item.run_id and item.run_id == locked_run:
            reason = "its run holds the deploy lock"
        elif item.retiring and item.retiring == locked_run:
            reason = "replaced by the run holding the deploy lock, which may put it back"
        elif item.kind == "instance" and item.resource_id in registered:
            reason = "registered in the target group"
        elif item.kind == "image" and item.resource_id in live_images:
            reason = "the record names it (live or rollback target)"
        elif item.kind == "image" and item.resource_id in cache:
            reason = "the newest foundation image (the bake cache)"
        elif item.kind == "image" and item.resource_id in newest:
            reason = f"one of the newest {keep_images} images in {item.region}"
        elif now - item.created < older_than:
            reason = f"younger than {older_than / 3600:g}h"
        else:
            verdict.remove.append(item)
            continue
        verdict.keep.append((item, reason))
    # An image's snapshots go with it (delete_image); the rest only when no image uses them.
    kept_images = {s for i, _ in verdict.keep if i.kind == "image" for s in i.snapshots}
    removed_images = {s for i in verdict.remove if i.kind == "image" for s in i.snapshots}
    for item in [i for i in items if i.kind == "snapshot"]:
        if item.resource_id in removed_images:
            continue
        if item.resource_id in kept_images:
            verdict.keep.append((item, "an image it belongs to is kept"))
        elif item.run_id and item.run_id == locked_run:
            verdict.keep.append((item, "its run holds the deploy lock"))
        elif now - item.created < older_than:
            verdict.keep.append((item, f"younger than {older_than / 3600:g}h"))
        else:
            verdict.remove.append(item)
    return verdict


# What the tool tags everything it makes with (aws.tags): gc takes only what carries
# every one, for this environment, with a run id of the tool's shape — an unrelated
# instance that merely shares a `deploy:env` tag is never a candidate.
FULL_SET = (aws.TAG_RUN, aws.TAG_ENV, aws.TAG_RELEASE, aws.TAG_PROCEDURE, aws.TAG_ROLE)


def made_by_the_tool(tags: dict[str, str], env: str) -> bool:
    return (all(tags.get(k) for k in FULL_SET) and tags[aws.TAG_ENV] == env
            and bool(config.RUN_ID.fullmatch(tags[aws.TAG_RUN])))


def collect(clients: aws.AwsClients, env: Any) -> tuple[list[Item], set[str], set[str]]:
    """Everything the tool made for the environment (its full tag set), the registered
    instances, the live images."""
    record = live.record(clients, env) or {}
    kept = set((record.get("images") or {}).values())
    kept |= set(((record.get("previous") or {}).get("images") or {}).values())
    tag = {aws.TAG_ENV: env.name}

    def one(region: str) -> tuple[list[Item], set[str]]:
        ec2 = clients.ec2(region)
        registered = set(aws.elb.target_states(clients.elbv2(region), region,
                                               live.target_group(clients, env, region)))
        items = [Item("instance", region, i.instance_id, i.tags.get(aws.TAG_RUN, ""),
                      _epoch(i.launched), retiring=i.tags.get(aws.TAG_RETIRING, ""))
                 for i in aws.ec2.find_tagged(ec2, region, tag)
                 if made_by_the_tool(i.tags, env.name)]
        for image in aws.ec2.tagged_images(ec2, region, tag):
            image_tags = aws.tag_map(image.get("Tags"))
            if not made_by_the_tool(image_tags, env.name):
                continue
            items.append(Item("image", region, image["ImageId"],
                              image_tags.get(aws.TAG_RUN, ""),
                              _epoch(image.get("CreationDate")),
                              tuple(aws.ec2.snapshots_of([image])),
                              image_tags.get(aws.TAG_ROLE, "")))
        for snap in aws.ec2.tagged_snapshots(ec2, region, tag):
            snap_tags = aws.tag_map(snap.get("Tags"))
            if not made_by_the_tool(snap_tags, env.name):
                continue
            items.append(Item("snapshot", region, snap["SnapshotId"], snap_tags[aws.TAG_RUN],
                              _epoch(snap.get("StartTime"))))
        kept_keys = aws.ssm.names_under(clients.ssm(), f"{env.host_keys_path}{region}/")
        there = aws.ec2.still_there(ec2, region, [n.rsplit("/", 1)[1] for n in kept_keys])
        items += [Item("hostkey", region, name, "", 0.0) for name in kept_keys
                  if name.rsplit("/", 1)[1] not in there]
        return items, registered

    results = parallel.each(env.all_regions, one, key=lambda r: r)
    results.raise_for("gc", fix="check the account's permissions in those regions",
                      kind="region")
    items = [i for res in results.succeeded.values() for i in res[0]]
    registered = {i for res in results.succeeded.values() for i in res[1]}
    return items, registered, kept


def remove(clients: aws.AwsClients, items: list[Item]) -> dict[str, str]:
    """Remove the items; each one's outcome ("removed" or the error line)."""
    order = {"instance": 0, "image": 1, "snapshot": 2, "hostkey": 3}  # images free snapshots

    def one(item: Item) -> str:
        ec2 = clients.ec2(item.region)
        if item.kind == "instance":
            aws.ec2.terminate(ec2, item.region, [item.resource_id])
        elif item.kind == "image":
            aws.ec2.delete_image(ec2, item.region, item.resource_id)
        elif item.kind == "hostkey":
            aws.ssm.delete(clients.ssm(), [item.resource_id])
        else:
            aws.ec2.delete_snapshot(ec2, item.region, item.resource_id)
        return "removed"

    out: dict[str, str] = {}
    for kind in sorted({i.kind for i in items}, key=order.__getitem__):
        batch = [i for i in items if i.kind == kind]
        for key, res in parallel.each(batch, one, key=lambda i: i.resource_id).items():
            out[key] = res if isinstance(res, str) else getattr(res, "problem", str(res))
    return out
