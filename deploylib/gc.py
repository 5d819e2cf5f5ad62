"""Garbage collection: what crashed runs left behind, found by the tags every run puts
on what it creates, and removed only when it is provably unused.

Never removed: an instance registered in the environment's target group (in any state,
draining included), anything of the run holding the deploy lock (and the hosts its
promotion replaced, which it may still put back until it records), the images the record
names (live and previous: the rollback targets), and the newest `keep_images` images
per region. Everything else tagged with the environment and older than the TTL goes:
instances are terminated, images deregistered with their snapshots, lone snapshots
deleted; the host keys kept for an instance (SSM) go once the instance is gone.
Server groups (fleet = "server-groups"): never the one the record names live or
previous, one in service, or the newest `keep_server_groups` kept behind it; never an
instance a server group owns (the group is what goes, with its instances), nor an image
or launch template version a remaining group launches from. A crashed run's group goes
like any other of its resources.
Deciding (`select`) is pure; `collect` reads AWS and `remove` acts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from deploylib import aws, config, live, parallel


@dataclass(frozen=True)
class Item:
    kind: str  # server-group | instance | template-version | image | snapshot | hostkey
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


def _epoch(value: dt.datetime | str | None) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


def select(items: list[Item], *, registered: set[str], live_images: set[str],
           locked_run: str | None, keep_images: int, older_than: float,
           now: float, held: dict[str, str] | None = None) -> Verdict:
    """Which items to remove and, for the rest, why they stay. `held`: ids kept whatever
    their age, with the reason (what server groups launch from and own)."""
    held = held or {}
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
        elif item.resource_id in held:
            reason = held[item.resource_id]
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


def _server_groups(clients: aws.AwsClients, env: config.Environment, region: str,
                   record: dict[str, Any]) -> tuple[list[Item], dict[str, str]]:
    """The environment's server groups and launch template versions in a region, and what
    they hold (the ids gc keeps, with why)."""
    asg, ec2 = clients.autoscaling(region), clients.ec2(region)
    # Live last: after a hotfix the previous record names the same group, and it is live.
    named = {((record.get("previous") or {}).get("server_groups") or {}).get(region):
             "the record's previous (the rollback target)",
             (record.get("server_groups") or {}).get(region): "the record names it live"}
    groups = aws.autoscaling.server_groups(asg, region, env.group_prefix)
    # Kept for a rollback: groups that served before the live one (older). One newer than
    # the live group that is neither live nor the previous never went live: a failed or
    # killed run's.
    live_number = aws.autoscaling.number_of(
        (record.get("server_groups") or {}).get(region) or "") or 0
    idle = [g for g in groups if g.name not in named and not g.target_groups
            and (aws.autoscaling.number_of(g.name) or 0) < live_number]
    kept = {g.name for g in idle[-env.keep_server_groups:]} if env.keep_server_groups else set()
    template = aws.ec2.launch_template(ec2, region, env.group_prefix)
    versions = {str(v.version): v for v in (template.versions if template else [])}
    items: list[Item] = []
    held: dict[str, str] = {}
    for g in groups:
        items.append(Item("server-group", region, g.name, g.tags.get(aws.TAG_RUN, ""),
                          g.created))
        if not made_by_the_tool(g.tags, env.name):
            held[g.name] = "not made by the tool (its tags)"
        elif g.name in named:
            held[g.name] = named[g.name]
        elif g.target_groups:
            held[g.name] = "in service (attached to the target group)"
        elif g.name in kept:
            held[g.name] = f"one of the newest {env.keep_server_groups} kept server groups"
        for iid in g.instances:
            held[iid] = f"server group {g.name} owns it"
    for number, v in versions.items():
        users = [g for g in groups if g.template_version == number and
                 (g.name in held or not made_by_the_tool(g.tags, env.name))]
        rid = f"{v.template_id}:{number}"
        if template and int(number) == template.default:
            continue  # EC2 deletes the default version only with its template
        items.append(Item("template-version", region, rid, v.tags.get(aws.TAG_RUN, ""),
                          v.created))
        if not made_by_the_tool(v.tags, env.name):
            held[rid] = "not made by the tool (its tags)"
        elif users:
            held[rid] = f"server group {users[0].name} launches from it"
            held[v.image_id] = f"server group {users[0].name} launches from it"
    return items, held


def collect(clients: aws.AwsClients, env: config.Environment
            ) -> tuple[list[Item], set[str], set[str], dict[str, str]]:
    """Everything the tool made for the environment (its full tag set), the registered
    instances, the live images, and what server groups hold."""
    record = live.record(clients, env) or {}
    kept = set((record.get("images") or {}).values())
    kept |= set(((record.get("previous") or {}).get("images") or {}).values())
    tag = {aws.TAG_ENV: env.name}

    def one(region: str) -> tuple[list[Item], set[str], dict[str, str]]:
        ec2 = clients.ec2(region)
        groups, held = (_server_groups(clients, env, region, record) if env.server_groups
                        else ([], {}))
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
        return groups + items, registered, held

    results = parallel.each(env.all_regions, one, key=lambda r: r)
    results.raise_for("gc", fix="check the account's permissions in those regions",
                      kind="region")
    items = [i for res in results.succeeded.values() for i in res[0]]
    registered = {i for res in results.succeeded.values() for i in res[1]}
    held = {k: v for res in results.succeeded.values() for k, v in res[2].items()}
    return items, registered, kept, held


def remove(clients: aws.AwsClients, items: list[Item]) -> dict[str, str]:
    """Remove the items; each one's outcome ("removed" or the error line)."""
    # groups take their instances with them; images free their snapshots
    order = {"server-group": 0, "instance": 1, "template-version": 2, "image": 3,
             "snapshot": 4, "hostkey": 5}

    def one(item: Item) -> str:
        ec2 = clients.ec2(item.region)
        if item.kind == "server-group":
            aws.autoscaling.delete(clients.autoscaling(item.region), item.region,
                                   item.resource_id)
        elif item.kind == "template-version":
            template_id, number = item.resource_id.split(":")
            aws.ec2.delete_template_versions(ec2, item.region, template_id, [int(number)])
        elif item.kind == "instance":
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
