"""The drift ledger: what each region's new hosts launch from, and what lies on top of it.

The record keeps it per region (`ledger`): the server group serving the region (fleet =
"server-groups"), the image a new host of the region launches from (the group's launch
template image; else the record's image), the release baked into that image, and the
releases layered on top since — put on the live hosts in place (`in-place`) or installed
as hosts came up (`boot`: the boot script, or install-release on a run's candidates).
Empty layers: the image carries what is live, nothing drifts. Pure: steps.fleet.record
and steps.fold.record_images compute an entry from the one before; status shows it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deploylib.facts import GroupName, ImageId, Version

# The newest layers kept (the record is one SSM parameter, 4 KB in the standard tier);
# `dropped` counts the older ones.
KEPT_LAYERS = 3
How = Literal["in-place", "boot"]
IN_PLACE: How = "in-place"
BOOT: How = "boot"


class Layer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    release: Version
    how: How
    since: str = ""  # when it was recorded live (UTC, ISO 8601)


class Entry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    group: GroupName | None = None
    image: ImageId | None = None
    # the image's deploy:release tag (None: an image the tool did not bake)
    baked: Version | None = None
    layers: tuple[Layer, ...] = Field(default_factory=tuple)
    dropped: int = 0  # older layers not kept (KEPT_LAYERS)

    @property
    def top(self) -> str | None:
        """The release the region's hosts run by this ledger."""
        return self.layers[-1].release if self.layers else self.baked


def advance(previous: Entry | None, *, group: str | None, image: str | None,
            baked: str | None, release: str, how: How, since: str) -> Entry:
    """The region's entry once `release` is recorded live.

    Another group or another launch image starts from its bake (its hosts never had the
    old layers). On the same one: the baked release again closes every layer (a rollback
    in place to what the image carries); a release already layered is the layer gone back
    to (what a rollback in place returns to); anything else is one more layer."""
    same = previous is not None and previous.image == image and previous.group == group
    layers = list(previous.layers) if same and previous else []
    dropped = previous.dropped if same and previous else 0
    releases = [layer.release for layer in layers]
    if release == baked:
        layers, dropped = [], 0
    elif release in releases:
        layers = layers[: releases.index(release) + 1]
    else:
        layers.append(Layer(release=release, how=how, since=since))
    dropped += max(0, len(layers) - KEPT_LAYERS)
    return Entry(group=group, image=image, baked=baked, layers=tuple(layers[-KEPT_LAYERS:]),
                 dropped=dropped)


def folded(previous: Entry | None, *, image: str, release: str) -> Entry:
    """After `invoke fold`: the group launches from an image carrying the live release."""
    return Entry(group=previous.group if previous else None, image=image, baked=release)


def describe(region: str, entry: Entry) -> str:
    """One line for `invoke status`."""
    where = f"{entry.group} launches from" if entry.group else "new hosts launch from"
    text = f"{region}: {where} {entry.image or '?'} (baked {entry.baked or '?'})"
    if not entry.layers:
        return text + "; nothing layered on top"
    older = f" (and {entry.dropped} older)" if entry.dropped else ""
    return text + "; on top: " + ", ".join(
        f"{layer.release} {layer.how} since {_minute(layer.since)}" for layer in entry.layers
    ) + older


def _minute(since: str) -> str:
    """2026-12-02T14:34:00Z as status prints times: 2026-12-02 14:34."""
    return since[:16].replace("T", " ") if len(since) >= 16 else since or "?"
